"""Configuration: one pydantic-settings class per tier, read once at the entry point.

Sources, highest priority first: keyword arguments to :meth:`load`, ``HIERFL_*``
environment variables (nested fields with ``__``, e.g. ``HIERFL_MQTT__URL``), then an
optional TOML file. Every field is documented in ``docs/configuration.md``; commented
examples live in ``edge/edge.toml``, ``fog/fog.toml`` and ``cloud/cloud.toml``.
"""

from __future__ import annotations

import contextvars
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from hierfl import topics
from hierfl.errors import ConfigError
from hierfl.wire.codec import DecodeLimits

__all__ = [
    "CloudSettings",
    "EdgeSettings",
    "FogSettings",
    "KafkaSettings",
    "LimitsSettings",
    "MonitoringSettings",
    "MqttSettings",
    "PrivacySettings",
    "SecAggSettings",
    "SecuritySettings",
    "ServerOptSettings",
    "resolve_path",
]

_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "hierfl_config_file", default=None
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_path(value: Path | str | None) -> Path | None:
    """A path from settings: relative paths are taken from the config file's folder.

    A provisioned startup kit names its files relative to its own TOML (``key_file =
    "signing.key"``), so ``hierfl fog --config /etc/hierfl/fog-north/fog.toml`` works from any
    working directory. Without a config file, relative paths are left as given (the working
    directory). Use as a field validator for every path field.
    """
    if value is None:
        return None
    p = Path(value).expanduser()
    base = _config_file.get()
    if not p.is_absolute() and base is not None:
        p = base.parent / p
    return p


def _tls_file(value: Path | None, info: ValidationInfo) -> Path | None:
    """A TLS file setting: resolved like every path (:func:`resolve_path`), and it must exist."""
    p = resolve_path(value)
    if p is not None and not p.is_file():
        raise ValueError(f"{info.field_name} {str(p)!r} does not exist (or is not a file)")
    return p


def _check_key_pair(section: BaseModel) -> None:
    """cert_file and key_file go together; key_password needs key_file."""
    cert, key = getattr(section, "cert_file", None), getattr(section, "key_file", None)
    if (cert is None) != (key is None):
        raise ValueError(
            "cert_file and key_file go together (the client certificate for mutual TLS and "
            "its private key): set both or neither"
        )
    if getattr(section, "key_password", None) is not None and key is None:
        raise ValueError("key_password is set but key_file is not")


class MqttSettings(_Section):
    """Connection to the MQTT broker (edge <-> fog).

    ``mqtts://`` turns on TLS (TLS 1.2 or newer, the broker's certificate and host name are
    always verified); ``cert_file`` + ``key_file`` add a client certificate (mutual TLS).
    """

    # Errors must not echo the input: it holds the password.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="mqtt://host[:port] (1883) or mqtts://host[:port] (TLS, 8883) of the broker",
    )
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = Field(
        None, description="CA bundle (PEM) that verifies the broker; unset = the system's CAs"
    )
    cert_file: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    key_file: Path | None = Field(None, description="private key (PEM) of cert_file")
    key_password: SecretStr | None = Field(None, description="passphrase of key_file")
    tls_server_name: str | None = Field(
        None, min_length=1,
        description="name the broker's certificate must carry (and SNI); unset = the URL's host",
    )
    keepalive_s: int = Field(30, ge=5, le=3600)
    connect_timeout_s: float = Field(10.0, gt=0)
    reconnect_base_s: float = Field(0.5, gt=0, description="backoff base for reconnects")
    reconnect_max_s: float = Field(30.0, gt=0, description="backoff cap for reconnects")
    connect_attempts: int | None = Field(
        10, ge=1, description="consecutive failed connects (unknown host, refused port) before "
        "the process exits with an error; None: retry forever",
    )
    queue_size: int = Field(10_000, ge=1, description="bounded inbound message queue")
    max_packet_bytes: int | None = Field(
        None, ge=4096, le=268_435_460,
        description="largest MQTT packet the broker accepts (AWS IoT Core: 131072); larger "
        "payloads are split into chunks; unset = never split",
    )
    reassembly_max_bytes: int = Field(
        256 * 2**20, ge=2**16, description="budget of chunk data buffered for partial frames"
    )
    reassembly_max_frames: int = Field(1024, ge=1, description="most partial frames buffered")
    reassembly_timeout_s: float = Field(
        60.0, gt=0, description="a partial chunked frame idle this long is dropped"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ValueError("expected mqtt://host[:port] or mqtts://host[:port]")
        try:
            _ = u.port
        except ValueError as exc:
            raise ValueError(f"bad port in {v!r}") from exc
        return v

    _files = field_validator("ca_file", "cert_file", "key_file")(_tls_file)

    @model_validator(mode="after")
    def _tls_settings(self) -> Self:
        given = [f for f in ("ca_file", "cert_file", "key_file", "key_password",
                             "tls_server_name") if getattr(self, f) is not None]
        if given and not self.tls:
            raise ValueError(f"{', '.join(given)} need an mqtts:// url (TLS), got {self.url!r}")
        _check_key_pair(self)
        return self

    @property
    def tls(self) -> bool:
        """True for an ``mqtts://`` URL."""
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        """Broker host name."""
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """Broker TCP port (1883, or 8883 with mqtts, when the URL gives none)."""
        return urlsplit(self.url).port or (8883 if self.tls else 1883)


class KafkaSettings(_Section):
    """Connection to the Kafka cluster (fog <-> cloud)."""

    # Errors must not echo the input: it holds the SASL password.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    bootstrap: str = Field("127.0.0.1:9092", description="comma-separated host:port list")
    chunk_bytes: int = Field(
        900_000, ge=4096, le=100 * 2**20, description="largest record produced (frames are split)"
    )
    request_timeout_ms: int = Field(30_000, ge=1000)
    fetch_max_wait_ms: int = Field(
        100, ge=1, le=10_000, description="longest a consumer's fetch waits at the broker when "
        "no record is there; Apache Kafka answers as soon as one arrives, Tansu only when this "
        "runs out (hierfl sim, on the Tansu it starts, uses 100, and 10 while a frame is due)",
    )
    fetch_wait_due_ms: int | None = Field(
        None, ge=1, le=10_000, description="the fetch wait while the tier expects a frame "
        "(a fog from forwarding its aggregate until the next global model); fetch_max_wait_ms "
        "the rest of the time. None: fetch_max_wait_ms throughout",
    )
    create_topics: bool = Field(True, description="create hierfl topics when missing")
    connect_attempts: int | None = Field(
        10, ge=1, description="consecutive failed connects (unknown host, refused port) before "
        "the process exits with an error; None: retry forever",
    )
    partitions: int = Field(1, ge=1, description="partitions of topics created by hierfl")
    replication_factor: int = Field(1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="SSL / SASL_SSL: TLS (broker certificate and host verified)"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (SASL_PLAINTEXT, SASL_SSL)"
    )
    sasl_username: str | None = Field(None, min_length=1)
    sasl_password: SecretStr | None = None
    ca_file: Path | None = Field(
        None, description="CA bundle (PEM) that verifies the brokers; unset = the system's CAs"
    )
    cert_file: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    key_file: Path | None = Field(None, description="private key (PEM) of cert_file")
    key_password: SecretStr | None = Field(None, description="passphrase of key_file")

    _files = field_validator("ca_file", "cert_file", "key_file")(_tls_file)

    @model_validator(mode="after")
    def _security(self) -> Self:
        proto = self.security_protocol
        sasl = {"sasl_mechanism": self.sasl_mechanism, "sasl_username": self.sasl_username,
                "sasl_password": self.sasl_password}
        if proto.startswith("SASL_"):
            missing = [k for k, v in sasl.items() if v is None]
            if missing:
                raise ValueError(f"security_protocol {proto} needs {', '.join(missing)}")
        elif given := [k for k, v in sasl.items() if v is not None]:
            raise ValueError(
                f"{', '.join(given)} need security_protocol SASL_PLAINTEXT or SASL_SSL, "
                f"not {proto}"
            )
        files = [f for f in ("ca_file", "cert_file", "key_file", "key_password")
                 if getattr(self, f) is not None]
        if files and not self.tls:
            raise ValueError(
                f"{', '.join(files)} need security_protocol SSL or SASL_SSL, not {proto}"
            )
        _check_key_pair(self)
        return self

    @property
    def tls(self) -> bool:
        """True when the connection uses TLS (``SSL``, ``SASL_SSL``)."""
        return self.security_protocol in ("SSL", "SASL_SSL")


class LimitsSettings(_Section):
    """Bounds applied when decoding untrusted frames."""

    max_frame_bytes: int = Field(64 * 2**20, ge=1024)
    max_body_bytes: int = Field(256 * 2**20, ge=1024)
    max_params: int = Field(50_000_000, ge=1, le=2**31 - 1)

    def decode_limits(self) -> DecodeLimits:
        """The wire-layer limits object."""
        return DecodeLimits(self.max_frame_bytes, self.max_body_bytes, self.max_params)


class SecuritySettings(_Section):
    """Identity and frame signatures (docs/security.md). A provisioned startup kit
    (``hierfl provision``) fills these in; signatures are required unless turned off."""

    signing: Literal["required", "off"] = Field(
        "required", description="sign every frame sent and refuse unsigned or badly signed "
        "frames; 'off' only for an unprovisioned local run (logged loudly at start-up)",
    )
    key_file: Path | None = Field(None, description="this party's Ed25519 key (PEM, mode 0600)")
    trust_bundle: Path | None = Field(
        None, description="trust.json: public keys and roles of every party"
    )
    revocation_list: Path | None = Field(
        None, description="revoked.json: parties refused from the moment the file changes"
    )
    state_dir: Path | None = Field(
        None, description="folder for replay counters (survive restarts); none: memory only"
    )

    @field_validator("key_file", "trust_bundle", "revocation_list", "state_dir", mode="before")
    @classmethod
    def _paths(cls, v: Path | str | None) -> Path | None:
        return resolve_path(v)

    def require_complete(self, tier: str) -> None:
        """Refuse to start a tier that must sign but has no key or trust bundle.

        Checked when a service starts, not when settings load (a settings object may serve
        only to reach a broker).

        Raises:
            ConfigError: naming what is missing and the two ways out.
        """
        if self.signing != "required":
            return
        missing = [n for n in ("key_file", "trust_bundle") if getattr(self, n) is None]
        if missing:
            raise ConfigError(
                f"{tier}: signatures are required but security.{' and security.'.join(missing)}"
                f" {'is' if len(missing) == 1 else 'are'} not set: run `hierfl provision` and "
                "use this party's startup kit (docs/security.md), or set security.signing = "
                "\"off\" (HIERFL_SECURITY__SIGNING=off) for an unprovisioned local run"
            )

    @property
    def enabled(self) -> bool:
        """Whether frames are signed and verified."""
        return self.signing == "required"


#: aggregation rules whose result moves by at most C / m when one edge's clipped update
#: changes (m: the fixed denominator), the bound the Gaussian noise is calibrated to
DP_RULES: dict[str, str] = {
    "fedavg": "with uniform weights: claimed sample counts are unverified",
    "norm_bounded": "with a fixed max_norm and weighted = false",
}


class PrivacySettings(_Section):
    """Differential privacy (docs/privacy.md). Off by default: nothing changes then.

    Modes: ``record`` (DP-SGD on each edge's records, each edge accounts for itself),
    ``trusted_fog`` (DP-FedAvg: edges clip to ``clip_norm``, the fog clips again and adds
    ``N(0, (noise_multiplier * clip_norm)^2)`` to its region's sum before anything leaves it),
    ``untrusted_fog`` (each of a region's edges adds its share of that noise; accounted as
    local DP at each edge).
    """

    mode: Literal["off", "record", "trusted_fog", "untrusted_fog"] = Field(
        "off", description="off | record | trusted_fog | untrusted_fog"
    )
    noise_multiplier: float = Field(1.0, description="sigma: noise std / clip_norm")
    clip_norm: float = Field(1.0, description="C: L2 bound of one edge's update (one record's "
                             "gradient in record mode)")
    delta: float = Field(1e-5, description="the delta of (epsilon, delta); below 1/population")
    target_epsilon: float | None = Field(
        None, gt=0, description="the budget: no release starts that would take epsilon above "
        "it; None: account only"
    )
    accountant: Literal["rdp", "pld"] = Field("rdp", description="dp-accounting method")
    sample_rate: float = Field(
        1.0, description="q: the probability that an edge is in a fog round's release "
        "(1.0: every edge of the region in every release)"
    )
    sampling: Literal["poisson", "fixed"] = Field(
        "poisson", description="how a fog samples its edges when sample_rate < 1"
    )
    population: int | None = Field(
        None, ge=1, description="edges of the region (fog; default: len(allowed_edges)) or "
        "records of the edge (record mode); delta must be below 1/population"
    )
    expected_updates: int | None = Field(
        None, ge=1, description="m: the fixed denominator of the noised average and the number "
        "of noise shares in untrusted_fog mode (default: the fog's min_updates)"
    )
    adaptive_clip: bool = Field(False, description="learn clip_norm from a target quantile of "
                                "update norms (Andrew et al. 2021); trusted_fog only")
    target_quantile: float = Field(0.5, gt=0, lt=1, description="adaptive clipping's quantile")
    clip_learning_rate: float = Field(0.2, gt=0, description="adaptive clipping's step")
    count_noise_multiplier: float = Field(
        10.0, gt=0, description="adaptive clipping: std of the noise on the unclipped count"
    )
    report_samples: int | None = Field(
        None, ge=1, description="the sample count every edge reports with its update instead "
        "of its dataset size, which DP does not protect (FedAvg then weighs edges equally); "
        "None: the true count"
    )
    ledger_dir: Path | None = Field(
        None, description="folder of the persisted privacy ledger (default: the fog's "
        "spool_dir, else security.state_dir; the edge's security.state_dir)"
    )

    @field_validator("ledger_dir", mode="before")
    @classmethod
    def _ledger_dir(cls, v: Path | str | None) -> Path | None:
        return resolve_path(v)

    def ledger_folder(self, *fallbacks: Path | None) -> Path | None:
        """Where the ledger lives: ``ledger_dir``, else the first fallback that is set."""
        for p in (self.ledger_dir, *fallbacks):
            if p is not None:
                return p
        return None

    @property
    def enabled(self) -> bool:
        """Whether any DP mode is on."""
        return self.mode != "off"

    @model_validator(mode="after")
    def _sense(self) -> Self:
        if not self.enabled:
            return self
        from hierfl.privacy.accountant import check_params  # noqa: PLC0415

        try:
            check_params(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                         delta=self.delta, method=self.accountant)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("privacy: ")) from None
        if not (self.clip_norm > 0 and self.clip_norm < float("inf")):
            raise ValueError(f"clip_norm must be > 0, got {self.clip_norm}")
        if self.population is not None and self.delta >= 1.0 / self.population:
            raise ValueError(
                f"delta ({self.delta}) must be below 1/population (1/{self.population}): with "
                "delta >= 1/n a mechanism that publishes one participant's data outright "
                "satisfies (0, delta)-DP, so the guarantee would mean nothing"
            )
        if self.adaptive_clip:
            from hierfl.privacy.mechanisms import effective_noise_multiplier  # noqa: PLC0415

            try:
                effective_noise_multiplier(self.noise_multiplier, self.count_noise_multiplier)
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix("privacy: ")) from None
        if (self.mode in ("trusted_fog", "untrusted_fog") and self.target_epsilon is not None
                and self.sampling == "poisson" and not self.adaptive_clip):
            # A budget that cannot pay for one release would stop every region before its
            # first aggregate: the federation could never make a version. Refuse it here.
            from hierfl.privacy.accountant import epsilon_for  # noqa: PLC0415

            first = epsilon_for(noise_multiplier=self.noise_multiplier,
                                sample_rate=self.sample_rate, releases=1, delta=self.delta,
                                method=self.accountant)
            if first > self.target_epsilon:
                raise ValueError(
                    f"target_epsilon {self.target_epsilon} cannot pay for a single release: "
                    f"one release at noise_multiplier {self.noise_multiplier} (sample_rate "
                    f"{self.sample_rate}, delta {self.delta}) already costs epsilon "
                    f"{first:.3f}; raise noise_multiplier or target_epsilon"
                )
        return self


class ServerOptSettings(_Section):
    """Server optimiser at the cloud (FedOpt, docs/learning.md): off (``none``) by default.

    Applied to the combined fog delta; parameters left unset take the optimiser's defaults
    (``hierfl.optim.server.DEFAULTS``). Its state is checkpointed with every version.
    """

    name: Literal["none", "fedavgm", "fedadam", "fedyogi", "fedadagrad"] = Field(
        "none", description="none | fedavgm | fedadam | fedyogi | fedadagrad"
    )
    server_lr: float | None = Field(None, gt=0, description="server learning rate (default: "
                                    "fedavgm 1.0, fedadam 0.1, fedyogi 0.01, fedadagrad 0.1)")
    momentum: float | None = Field(None, ge=0, lt=1, description="fedavgm momentum (0.9)")
    beta1: float | None = Field(None, ge=0, lt=1, description="first-moment decay (0.9)")
    beta2: float | None = Field(None, ge=0, lt=1, description="second-moment decay (0.99)")
    tau: float | None = Field(None, gt=0, description="adaptivity (fedadam 1e-9, fedyogi "
                              "1e-3, fedadagrad 1e-9)")
    bias_correction: bool | None = Field(
        None, description="Kingma-Ba bias correction of the step (default: on for fedadam, "
        "as Flower does; off otherwise, as the paper)"
    )

    def params(self) -> dict[str, Any]:
        """The parameters that were set (the rest take the optimiser's defaults)."""
        return {k: v for k, v in self.model_dump().items() if k != "name" and v is not None}

    @model_validator(mode="after")
    def _valid(self) -> Self:
        from hierfl.optim.server import ServerOptConfig  # noqa: PLC0415

        try:
            ServerOptConfig.build(self.name, **self.params())
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


def _check_dp_rule(privacy: PrivacySettings, aggregator: str, params: dict[str, Any]) -> None:
    """Refuse a fog rule whose sensitivity to one edge is not bounded by C / m under DP."""
    if privacy.mode not in ("trusted_fog", "untrusted_fog"):
        return
    ok = aggregator in DP_RULES
    if aggregator == "norm_bounded":
        ok = params.get("max_norm") is not None and not params.get("weighted", False)
    if not ok:
        allowed = "; ".join(f"{k} ({v})" for k, v in DP_RULES.items())
        raise ValueError(
            f"privacy.mode = {privacy.mode!r} cannot use aggregator {aggregator!r}"
            f"{' ' + str(params) if params else ''}: the noise is calibrated to a sum in "
            "which one edge moves the result by at most clip_norm / m, and this rule's "
            "result can move by more when one "
            "edge's update changes (an order statistic, a selection, a data-dependent bound or "
            f"a claimed weight), which breaks the accounting. Allowed under DP: {allowed}. "
            "Robust rules stay available at the cloud, whose inputs are already private"
        )


class SecAggSettings(_Section):
    """Secure aggregation per fog region (SecAgg+, docs/secure-aggregation.md). A fog's
    ``mode`` decides whether it sees its edges' updates: ``robust`` (the default) aggregates
    them in the clear with its robust rule; ``secure`` learns only their sum, so its rule is
    the masked sum (``aggregator = "fedavg"``) and edges clip to ``clip_norm`` before masking.
    An edge follows its fog: the fog opens each secure round with a signed announcement of
    these parameters, and an edge refuses one whose ``clip_norm`` differs from its own."""

    mode: Literal["robust", "secure"] = Field(
        "robust", description="robust: updates in the clear, robust rule at the fog; secure: "
        "the fog learns only the region's sum (SecAgg+)"
    )
    clip_norm: float = Field(1.0, gt=0, description="L2 bound each edge clips its update to "
                             "before masking")
    scale: float | None = Field(
        None, gt=0, description="fixed-point scale, a power of two (None: the largest that "
        "cannot overflow the region's sum mod 2^32)"
    )
    degree: int | None = Field(None, ge=1, description="k, neighbours per edge (None: the "
                               "complete graph up to 32 edges, else 2 ceil(log2 n))")
    threshold: int | None = Field(
        None, ge=2, description="t, shares needed to unmask (None: floor(2 (k+1)/3) + 1, "
        "safe against a fog that lies about dropouts)"
    )
    weighted: bool = Field(
        True, description="FedAvg's sample weights inside the masked sum: each edge masks "
        "(w x, w) with w its sample count capped at max_weight, and the fog divides the two "
        "sums (False: every survivor counts once)"
    )
    max_weight: int = Field(10_000, ge=1, description="the largest sample count an edge may "
                            "weigh in with (a claim the fog cannot check)")
    min_roster: int = Field(3, ge=2, description="edge: refuse rounds with fewer edges "
                            "(the crowd an update hides in)")
    advertise_s: float = Field(10.0, gt=0, description="fog: deadline of the key stage, s")
    share_s: float = Field(10.0, gt=0, description="fog: deadline of the share stage, s")
    masked_s: float = Field(60.0, gt=0, description="fog: deadline of the masked-input "
                            "stage (covers local training), s")
    unmask_s: float = Field(10.0, gt=0, description="fog: deadline of the unmasking stage, s")

    @field_validator("scale")
    @classmethod
    def _power_of_two(cls, v: float | None) -> float | None:
        import math  # noqa: PLC0415

        if v is not None and math.frexp(v)[0] != 0.5:
            raise ValueError(f"secagg.scale must be a power of two, got {v}")
        return v


def _check_secure_rule(s: SecAggSettings, aggregator: str, signing: str) -> None:
    """Refuse a secure-mode fog configured with a rule it cannot run on masked inputs."""
    if s.mode != "secure":
        return
    if aggregator != "fedavg":
        raise ValueError(
            f"secagg.mode = 'secure' cannot use aggregator {aggregator!r}: a secure fog sees "
            "only the masked sum of its region, never an update, so it cannot take a median, "
            "trim, select (Krum) or weigh updates; its rule is the masked sum divided by the "
            "survivors (set aggregator = 'fedavg'). Robustness moves to the edges' clipping "
            "(secagg.clip_norm) and to the cloud's robust rule across fogs; or use "
            "secagg.mode = 'robust'"
        )
    if signing != "required":
        raise ValueError(
            "secagg.mode = 'secure' needs security.signing = 'required': key advertisements "
            "are signed by each edge's identity key, or a fog could substitute its own keys"
        )


def _secure_ddp(tier: Any) -> Any:
    """Distributed DP (untrusted_fog + secure): the ``[secagg]`` it runs with
    (hierfl/secagg/ddp.py: weighted forced off, the clip norm DP's; conflicts refused)."""
    from hierfl.secagg.ddp import secure_ddp_secagg  # noqa: PLC0415

    fixed = secure_ddp_secagg(tier.privacy, tier.secagg)
    if fixed is not tier.secagg:
        object.__setattr__(tier, "secagg", fixed)  # frozen: set once, while validating
    return tier


class MonitoringSettings(_Section):
    """Where a service serves `/metrics`, `/healthz` and `/readyz` (with `metrics_port`) and
    when `/readyz` calls it stalled (hierfl/health.py)."""

    bind: str = Field(
        "127.0.0.1", min_length=1, description="address the metrics port listens on "
        "(0.0.0.0: every interface, e.g. inside a container)"
    )
    stall_rounds: float = Field(
        3.0, gt=0, description="a fog or cloud with no progress for this many round_timeout_s "
        "is not ready (/readyz 503)"
    )
    stall_after_s: float | None = Field(
        None, gt=0, description="seconds without progress that make the service not ready; "
        "overrides stall_rounds (the edge, which has no round_timeout_s, checks only this)"
    )


class _TierSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HIERFL_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,  # a rejected value may be a password
    )
    tier: ClassVar[str] = ""

    federation: str = Field("default", description="federation id shared by all tiers")
    limits: LimitsSettings = LimitsSettings()
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve /metrics, /healthz and /readyz on this port"
    )
    monitoring: MonitoringSettings = MonitoringSettings()
    security: SecuritySettings = SecuritySettings()
    privacy: PrivacySettings = PrivacySettings()

    @field_validator("federation")
    @classmethod
    def _fed(cls, v: str) -> str:
        return _id("federation", v)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Self:
        """Read settings from overrides, ``HIERFL_*`` env vars and an optional TOML file.

        Args:
            config_file: TOML file (its top-level keys are this class's fields).
            **overrides: field values that win over every other source.

        Returns:
            The validated settings.

        Raises:
            ConfigError: naming every invalid field, or an unreadable file.
        """
        path = None
        if config_file is not None:
            path = Path(config_file)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            try:
                tomllib.loads(path.read_text())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        token = _config_file.set(path)
        try:
            return cls(**overrides)
        except PydanticValidationError as exc:
            raise ConfigError(_explain(cls.tier, exc, path)) from exc
        except SettingsError as exc:  # e.g. a list/dict env var that is not JSON
            m = re.search(r'field "(\w+)"', str(exc))
            env = f" (env HIERFL_{m.group(1).upper()})" if m else ""
            raise ConfigError(
                f"invalid {cls.tier} settings: {exc}{env}; lists and maps in HIERFL_* "
                "variables are JSON, e.g. '[\"a\", \"b\"]'"
            ) from exc
        finally:
            _config_file.reset(token)


def _id(kind: str, v: str) -> str:
    try:
        return topics.check_id(kind, v)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc


def _codec_spec(v: str, *, full_model: bool = False) -> str:
    """Validate a codec spec; a codec for full models must be dense (no top-k / rand-k)."""
    from hierfl.compression import DENSE_CODECS, make_codec  # noqa: PLC0415 - import-light

    try:
        codec = make_codec(v)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    if full_model and codec.name not in DENSE_CODECS:
        raise ValueError(
            f"{v!r} would drop most of the weights of a full model: use raw, shuffle, fp16 or "
            "int8 (sparse codecs suit deltas: updates, aggregates, the fog's downlink_delta)"
        )
    return v


def _feedback_codec_spec(v: str, *, alternative: str = "") -> str:
    """Validate a codec used with error feedback (edge updates, the fog's model deltas).

    Error feedback needs a contractive codec: scaled (unbiased) rand-k multiplies the residual
    by d/k - 1 every round, so it grows without bound.
    """
    from hierfl.compression import make_codec  # noqa: PLC0415

    _codec_spec(v)
    if getattr(make_codec(v), "scaled", False):
        raise ValueError(
            f"{v!r}: with error feedback what the codec leaves out is carried into the next "
            f"message, so rand-k must not scale what it keeps: add scaled=false{alternative}"
        )
    return v


def _rule_floor(aggregator: str, params: dict[str, Any], quorum_field: str, quorum: int) -> None:
    """Refuse a quorum below the fewest updates the rule can aggregate.

    A round that closes with fewer updates than its rule accepts is skipped, every deadline,
    forever: refuse it at load instead, saying why.

    Raises:
        ValueError: an unknown rule or parameter, or ``quorum`` below the rule's floor.
    """
    from hierfl.aggregation.base import make_aggregator, min_updates  # noqa: PLC0415

    try:
        rule = make_aggregator(aggregator, params)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    floor = min_updates(rule)
    if quorum >= floor:
        return
    why = []
    if params.get("nnm_f") is not None:
        why.append("nearest-neighbour mixing needs n >= 2 nnm_f + 1")
    if aggregator in ("krum", "multikrum"):
        why.append(f"{aggregator} needs n >= 2f + 3")
    if aggregator == "multikrum" and params.get("m") is not None:
        why.append("multikrum needs n >= m + f")
    because = f" ({'; '.join(why)})" if why else ""
    raise ValueError(
        f"aggregator {aggregator!r} with {params or 'its defaults'} cannot aggregate fewer than "
        f"{floor} updates{because}, but {quorum_field} = {quorum} lets a round close with "
        f"{quorum}: raise {quorum_field} to at least {floor} or change aggregator_params"
    )


def _check_buffered(privacy_mode: str, buffer_size: int, listed: int, what: str) -> None:
    """Refuse a buffered (FedBuff) aggregator that could never fill its buffer, or that
    would release outside the privacy accounting (which counts synchronous rounds).

    Raises:
        ValueError: naming the conflict.
    """
    if privacy_mode in ("trusted_fog", "untrusted_fog"):
        raise ValueError(f"aggregation = 'buffered' cannot run with privacy.mode = "
                         f"{privacy_mode!r}: the region's accounting counts synchronous rounds")
    if listed and buffer_size > listed:
        raise ValueError(f"buffer_size ({buffer_size}) exceeds the {listed} {what}: the "
                         "buffer could never fill")


def _explain(tier: str, exc: PydanticValidationError, path: Path | None) -> str:
    lines = [f"invalid {tier} settings" + (f" (file {path})" if path else "") + ":"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        env = "HIERFL_" + "__".join(str(p) for p in err["loc"]).upper()
        lines.append(f"  {loc}: {err['msg']}" + (f" (env {env})" if err["loc"] else ""))
    return "\n".join(lines)


class EdgeSettings(_TierSettings):
    """Settings of one edge device (``hierfl edge``)."""

    tier: ClassVar[str] = "edge"

    fog_id: str = Field(..., description="the fog this edge reports to")
    edge_id: str = Field(..., description="this device's id (unique within its fog)")
    mqtt: MqttSettings = MqttSettings()
    task: str = Field(
        "hierfl.sim.scenarios:digits_task",
        description="import path 'module:callable' returning the edge's EdgeTask",
    )
    task_options: dict[str, Any] = Field(default_factory=dict, description="passed to the task")
    local_epochs: int = Field(1, ge=1, le=1000, description="k1: local epochs per fog round")
    codec: str = Field("raw", description="update codec (raw; others: see docs)")
    error_feedback: bool = Field(
        True, description="carry what a lossy codec dropped into the next update"
    )
    error_feedback_path: Path | None = Field(
        None, description="keep the error-feedback residual in this .npy file across restarts"
    )
    error_feedback_max_gap: int = Field(
        5, ge=0, description="drop the residual when the model moved on by more versions"
    )
    max_rounds: int | None = Field(None, ge=1, description="exit after this many updates")
    threads: int = Field(1, ge=1, le=256, description="torch intra-op threads")
    secagg: SecAggSettings = SecAggSettings()

    @field_validator("fog_id", "edge_id")
    @classmethod
    def _ids(cls, v: str) -> str:
        return _id("fog/edge", v)

    @field_validator("error_feedback_path", mode="before")
    @classmethod
    def _ef_path(cls, v: Path | str | None) -> Path | None:
        return resolve_path(v)

    @field_validator("codec")
    @classmethod
    def _update_codec(cls, v: str) -> str:
        return _codec_spec(v)

    @model_validator(mode="after")
    def _codec_feedback(self) -> Self:
        if self.error_feedback:
            _feedback_codec_spec(self.codec, alternative=" or set error_feedback = false")
        return self

    @model_validator(mode="after")
    def _secagg_signed(self) -> Self:
        if self.secagg.mode == "secure" and self.security.signing != "required":
            raise ValueError("secagg.mode = 'secure' needs security.signing = 'required' "
                             "(every SecAgg+ message is signed; docs/secure-aggregation.md)")
        return _secure_ddp(self)


class FogSettings(_TierSettings):
    """Settings of one fog aggregator (``hierfl fog``)."""

    tier: ClassVar[str] = "fog"

    fog_id: str = Field(..., description="this fog's id")
    mqtt: MqttSettings = MqttSettings()
    kafka: KafkaSettings = KafkaSettings()
    min_updates: int = Field(1, ge=1, description="a fog round closes once this many arrived")
    personalise_alpha: float | None = Field(
        None, ge=0, le=1, description="personalisation: serve the edges alpha * global + "
        "(1 - alpha) * the region's last model (docs/learning.md); None: the global model"
    )
    server_opt: ServerOptSettings = Field(
        default_factory=ServerOptSettings, description="a server optimiser for the region, "
        "applied to each fog round's combined delta (state in memory; docs/learning.md)"
    )
    round_timeout_s: float = Field(30.0, gt=0, description="a fog round closes at this deadline")
    quorum: int = Field(
        1, ge=1, description="fewest updates aggregated at the deadline; fewer skips the round"
    )
    k2: int = Field(1, ge=1, le=10_000, description="fog rounds per cloud round (HierFAVG)")
    aggregator: str = Field(
        "clipped_trimmed_mean", description="aggregation rule (see docs/robustness.md); the "
        "default clips norms, then mixes and trims against one Byzantine edge per round, and "
        "still closes rounds of 1-2 edges"
    )
    aggregator_params: dict[str, Any] = Field(default_factory=dict)
    max_samples: int = Field(
        100_000, ge=1, description="largest claimed sample count accepted (larger: refused)"
    )
    max_norm: float | None = Field(None, gt=0, description="reject updates with a larger L2 norm")
    adaptive_norm_multiplier: float | None = Field(
        None, gt=0, description="reject norms above this x the running median of accepted norms"
    )
    max_staleness: int = Field(
        0, ge=0, description="accept updates trained this many changed fog models behind "
        "(skipped rounds re-publish the same model and do not count)"
    )
    aggregation: Literal["sync", "buffered"] = Field(
        "sync", description="sync: a fog round waits for min_updates; buffered (FedBuff): "
        "combine every buffer_size arrivals, stale ones weighted down (docs/scale.md)"
    )
    buffer_size: int = Field(1, ge=1, description="buffered: updates combined at once (K)")
    staleness_exponent: float = Field(
        0.5, ge=0, le=10, description="buffered: an update s models behind weighs "
        "(1 + s) ** -staleness_exponent of its samples"
    )
    allowed_edges: list[str] = Field(default_factory=list, description="empty = any edge")
    spool_dir: Path | None = Field(
        None, description="persist accepted updates here until forwarded (survives restarts)"
    )
    cloud_codec: str = Field("raw", description="codec of aggregates sent to the cloud")
    model_codec: str = Field(
        "raw", description="codec of the model fan-out to the edges (of the deltas in delta mode)"
    )
    downlink_delta: bool = Field(
        True, description="send edges that hold the previous fog model a delta, not the model"
    )
    resume_wait_s: float = Field(
        1.0, ge=0, description="how long to wait for the retained fog model on start"
    )
    resend_after_s: float | None = Field(
        300.0, gt=0, description="re-send the last aggregate when no newer global model came "
        "this long after it (the cloud refuses a copy it holds); None: never"
    )
    flood_refusals: int = Field(
        20, ge=1, description="a sender with more than this many hard refusals (malformed, "
        "badly signed or misshapen frames, or an overflowing lane) within flood_window_s is "
        "quarantined: its update topic is unsubscribed (docs/security.md#floods)"
    )
    flood_window_s: float = Field(
        10.0, gt=0, description="the window in which flood_refusals are counted, seconds"
    )
    flood_quarantine_s: float = Field(
        5.0, gt=0, description="a sender's first quarantine, seconds; doubled on each repeat "
        "that follows within flood_quarantine_max_s of the previous one"
    )
    flood_quarantine_max_s: float = Field(
        300.0, gt=0, description="the longest quarantine, seconds"
    )
    secagg: SecAggSettings = SecAggSettings()
    ingest_connections: int = Field(
        1, ge=1, le=16, description="MQTT connections the fog's edges' update topics are "
        "spread over (by a stable hash of the edge id), when the fog knows its edges (trust "
        "bundle or allowed_edges): one flooding edge then delays only the edges of its own "
        "connection"
    )

    @field_validator("fog_id")
    @classmethod
    def _fog(cls, v: str) -> str:
        return _id("fog", v)

    @field_validator("spool_dir", mode="before")
    @classmethod
    def _spool(cls, v: Path | str | None) -> Path | None:
        return resolve_path(v)

    @field_validator("allowed_edges")
    @classmethod
    def _edges(cls, v: list[str]) -> list[str]:
        for e in v:
            _id("edge", e)
        return v

    @field_validator("cloud_codec")
    @classmethod
    def _cloud_codec(cls, v: str) -> str:
        return _codec_spec(v)

    @model_validator(mode="after")
    def _model_codec(self) -> Self:
        try:
            if self.downlink_delta:
                _feedback_codec_spec(self.model_codec)
            else:
                _codec_spec(self.model_codec, full_model=True)
        except ValueError as exc:
            when = " with downlink_delta = false" if not self.downlink_delta else ""
            raise ValueError(f"model_codec{when}: {exc}") from exc
        return self

    @model_validator(mode="after")
    def _flood(self) -> Self:
        if self.flood_quarantine_max_s < self.flood_quarantine_s:
            raise ValueError(f"flood_quarantine_max_s ({self.flood_quarantine_max_s}) is below "
                             f"flood_quarantine_s ({self.flood_quarantine_s})")
        return self

    @model_validator(mode="after")
    def _quorum(self) -> Self:
        if self.quorum > self.min_updates:
            raise ValueError(f"quorum ({self.quorum}) exceeds min_updates ({self.min_updates})")
        # quorum <= min_updates: a rule that aggregates `quorum` updates closes every round
        _rule_floor(self.aggregator, self.aggregator_params, "quorum", self.quorum)
        return self

    @model_validator(mode="after")
    def _buffered(self) -> Self:
        if self.aggregation == "buffered":
            _check_buffered(self.privacy.mode, self.buffer_size, len(self.allowed_edges),
                            "allowed_edges")
        return self

    @model_validator(mode="after")
    def _secagg(self) -> Self:
        _check_secure_rule(self.secagg, self.aggregator, self.security.signing)
        _secure_ddp(self)
        g = self.secagg
        stages = g.advertise_s + g.share_s + g.masked_s + g.unmask_s
        if g.mode == "secure" and self.round_timeout_s <= stages:
            raise ValueError(
                f"secagg.mode = 'secure': round_timeout_s ({self.round_timeout_s}) must exceed "
                f"the secure round's stage deadlines together ({stages} s: advertise_s + "
                "share_s + masked_s + unmask_s), or the fog round is skipped before its sum "
                "arrives"
            )
        return self

    @model_validator(mode="after")
    def _privacy(self) -> Self:
        p = self.privacy
        if p.mode in ("off", "record"):
            return self
        _check_dp_rule(p, self.aggregator, self.aggregator_params)
        population = p.population or len(self.allowed_edges) or None
        if population is not None and p.delta >= 1.0 / population:
            raise ValueError(
                f"privacy.delta ({p.delta}) must be below 1/population (1/{population} edges "
                "in this region): with delta >= 1/n a mechanism that publishes one edge's update "
                "outright satisfies (0, delta)-DP, so the guarantee would mean nothing"
            )
        if p.ledger_folder(self.spool_dir, self.security.state_dir) is None:
            raise ValueError(
                f"privacy.mode = {p.mode!r} needs a folder for the region's privacy ledger "
                "(privacy.ledger_dir, spool_dir or security.state_dir): a restart must never "
                "reset the spent budget"
            )
        if p.sampling == "fixed" and p.accountant != "rdp":
            raise ValueError("privacy.sampling = 'fixed' is accounted with accountant = 'rdp' "
                             "only (dp-accounting's PLD has no sampling without replacement)")
        if p.sample_rate < 1.0 and not self.allowed_edges:
            raise ValueError(
                f"privacy.sample_rate = {p.sample_rate} needs the region's edges listed in "
                "allowed_edges: the fog draws each fog round's sample from them, and the "
                "accounting's amplification holds only for that random draw"
            )
        return self


class CloudSettings(_TierSettings):
    """Settings of the cloud aggregator (``hierfl cloud``)."""

    tier: ClassVar[str] = "cloud"

    kafka: KafkaSettings = KafkaSettings()
    fogs: list[str] = Field(
        default_factory=list, description="expected fog ids; a round closes when all reported"
    )
    min_fogs: int = Field(1, ge=1, description="quorum of fogs needed after the timeout")
    round_timeout_s: float = Field(60.0, gt=0, description="wait after the first aggregate")
    aggregation: Literal["sync", "buffered"] = Field(
        "sync", description="sync: a round waits for every fog (min_fogs at the deadline); "
        "buffered (FedBuff): combine every buffer_size fog aggregates (docs/scale.md)"
    )
    buffer_size: int = Field(1, ge=1, description="buffered: fog aggregates combined at once")
    staleness_exponent: float = Field(
        0.5, ge=0, le=10, description="buffered: an aggregate s versions behind weighs "
        "(1 + s) ** -staleness_exponent of its samples"
    )
    max_staleness: int = Field(
        0, ge=0, description="buffered: accept fog aggregates this many global versions "
        "behind; also how many versions older than its aggregate an edge update in a signed "
        "provenance may be (fogs in buffered mode use late updates)"
    )
    store_dir: Path = Field(Path("hierfl-store"), description="checkpoint directory")
    initial_model: Path | None = Field(
        None, description="npz/safetensors with the version-0 weights (when the store is empty)"
    )
    aggregator: str = Field("fedavg", description="rule that combines fog aggregates")
    max_samples_per_edge: int | None = Field(
        100_000, ge=1, description="a fog aggregate may claim at most this many samples per "
        "contributing edge (larger: refused); bounds a compromised fog's weight; None: no bound"
    )
    aggregator_params: dict[str, Any] = Field(default_factory=dict)
    server_opt: ServerOptSettings = ServerOptSettings()
    scaffold: bool = Field(
        False, description="SCAFFOLD: keep the control variate c, publish it with every "
        "global model (edges then correct their steps and send their control change; "
        "docs/learning.md)"
    )
    max_versions: int | None = Field(None, ge=1, description="stop after producing this version")
    keep_versions: int | None = Field(None, ge=1, description="prune older checkpoints")
    model_codec: str = Field("raw", description="codec of the global model fan-out")
    timeline: bool = Field(True, description="write each round's timeline (every tier's spans) "
                           "to <store_dir>/timeline.jsonl")
    timeline_keep: int = Field(1000, ge=1, description="rounds kept in timeline.jsonl")
    otel: bool = Field(True, description="also emit each round as an OpenTelemetry trace when "
                       "the opentelemetry API is installed (hierfl[otel]); the exporter is the "
                       "embedding program's choice")

    @field_validator("model_codec")
    @classmethod
    def _model_codec(cls, v: str) -> str:
        return _codec_spec(v, full_model=True)  # fogs receive full global models

    @field_validator("store_dir", "initial_model", mode="before")
    @classmethod
    def _cloud_paths(cls, v: Path | str | None) -> Path | None:
        return resolve_path(v)

    @field_validator("fogs")
    @classmethod
    def _fogs(cls, v: list[str]) -> list[str]:
        for f in v:
            _id("fog", f)
        if len(set(v)) != len(v):
            raise ValueError("fog ids repeat")
        return v

    @model_validator(mode="after")
    def _quorum(self) -> Self:
        if self.fogs and self.min_fogs > len(self.fogs):
            raise ValueError(f"min_fogs ({self.min_fogs}) exceeds the {len(self.fogs)} fogs")
        _rule_floor(self.aggregator, self.aggregator_params, "min_fogs", self.min_fogs)
        if self.aggregation == "buffered":
            _check_buffered(self.privacy.mode, self.buffer_size, len(self.fogs), "fogs")
        return self
