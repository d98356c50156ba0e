"""The Gaussian mechanism's parts: L2 clipping, calibrated noise, adaptive clipping.

Pure numpy (fog and cloud run them without torch). Every function takes the random generator
it draws from, so a test can fix a seed; in production the tiers pass :func:`csprng`, a fresh
generator per release seeded with 256 bits from :mod:`secrets` (the operating system's CSPRNG).

- :func:`clip_rows` / :func:`clip_vector`: scale to L2 norm at most ``C`` (an update above
  ``C`` never contributes more than ``C``; a non-finite row contributes zero).
- :func:`gaussian_noise`: ``N(0, (sigma * C)^2)`` per coordinate, the noise of one release of a
  sum whose sensitivity to one participant is ``C``.
- :func:`local_noise_std`: each of ``n`` edges adds ``N(0, sigma^2 C^2 / n)`` so that the
  region's sum carries ``sigma * C`` (the untrusted-fog mode).
- :class:`AdaptiveClip`: the clip norm follows a target quantile of the update norms, learned
  from a noised count (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially Private
  Learning with Adaptive Clipping", https://arxiv.org/abs/1905.03871, Algorithm 1, geometric
  update).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

from hierfl.errors import ConfigError
from hierfl.types import Float32Matrix, Float32Vector

__all__ = [
    "AdaptiveClip",
    "clip_rows",
    "clip_vector",
    "csprng",
    "effective_noise_multiplier",
    "gaussian_noise",
    "local_noise_std",
]


def csprng() -> np.random.Generator:
    """A fresh generator seeded with 256 bits from :mod:`secrets` (the OS's CSPRNG).

    DP noise must be unpredictable: the tiers call this once per release (an aggregate, a
    noised update, a sample of edges) unless a test passes a seeded generator. The stream
    itself (PCG64DXSM) is a statistical generator, not a cryptographic one; what makes each
    release's noise unpredictable is its fresh seed, never reused and never derived from
    another release's.
    """
    seed = int.from_bytes(secrets.token_bytes(32), "big")
    return np.random.Generator(np.random.PCG64DXSM(np.random.SeedSequence(seed)))


def _check_clip(clip_norm: float) -> None:
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(f"privacy: clip_norm (C) must be > 0, got {clip_norm}")


def clip_rows(updates: Float32Matrix, clip_norm: float, *,
              out: Float32Matrix | None = None) -> tuple[Float32Matrix, np.ndarray]:
    """Scale each row of ``updates`` to L2 norm at most ``clip_norm``.

    Works in float32 (the updates' own precision; the norms are accumulated in float64, so a
    row of a million coordinates still gets an exact-enough norm) and copies at most once:
    ``out=updates`` clips a float32 stack in place with no copy at all.

    Args:
        updates: (n, d) float array; not modified unless it is ``out``.
        clip_norm: C > 0.
        out: a C-contiguous float32 (n, d) array to write the result into (may be
            ``updates`` itself); None: a new array.

    Returns:
        ``(clipped, norms)``: the float32 (n, d) result whose rows have norm <= C, and the
        (n,) float64 norms before clipping (``inf`` for a row holding NaN/Inf, which is
        replaced by zeros: it contributes nothing).

    Raises:
        ConfigError: if ``clip_norm`` is not a positive finite number, or a bad ``out``.
    """
    _check_clip(clip_norm)
    x = np.asarray(updates)
    if x.ndim != 2:
        raise ConfigError(f"privacy: clip_rows needs a 2-D stack, got shape {x.shape}")
    if out is None:
        res = np.array(x, dtype=np.float32, order="C")  # the one copy
    else:
        if out.dtype != np.float32 or out.shape != x.shape or not out.flags.c_contiguous:
            raise ConfigError("privacy: clip_rows out= must be a C-contiguous float32 array "
                              "of the updates' shape")
        if out is not x:
            np.copyto(out, x, casting="same_kind")
        res = out
    # float64 accumulation through einsum's buffered casting: no float64 copy of the stack.
    # A float32 value squared never overflows float64, so a row's sum of squares is finite
    # exactly when the row is (no n x d boolean mask either).
    norms = np.sqrt(np.einsum("ij,ij->i", res, res, dtype=np.float64))
    finite: np.ndarray = np.asarray(np.isfinite(norms), dtype=bool)
    res[~finite] = 0.0
    norms[~finite] = np.inf
    scale = np.ones(res.shape[0])
    over = finite & (norms > clip_norm)
    scale[over] = clip_norm / norms[over]
    if over.any():
        res *= scale.astype(np.float32)[:, None]
        # float32 rounding can leave a scaled row a hair above C: never let it
        # (a factor just under 1 rounds to 1.0 in float32: step it down one float32 ulp)
        for _ in range(4):
            after = np.sqrt(np.einsum("ij,ij->i", res, res, dtype=np.float64))
            high = after > clip_norm
            if not high.any():
                break
            for i in np.flatnonzero(high):  # row views: no copy of the selected rows
                f = np.float32(clip_norm / after[i])
                res[i] *= np.nextafter(f, np.float32(0.0))
    return res, norms


def clip_vector(update: Float32Vector, clip_norm: float) -> tuple[Float32Vector, float]:
    """Scale one flat update to L2 norm at most ``clip_norm``.

    Returns:
        ``(clipped, norm)``: a new float32 vector and its norm before clipping.

    Raises:
        ConfigError: if ``clip_norm`` is not a positive finite number.
    """
    clipped, norms = clip_rows(np.asarray(update).reshape(1, -1), clip_norm)
    return clipped[0], float(norms[0])


def gaussian_noise(
    size: int, *, noise_multiplier: float, clip_norm: float, rng: np.random.Generator,
    share: int = 1,
) -> np.ndarray:
    """Gaussian noise for one release of a sum with sensitivity ``clip_norm``.

    Args:
        size: number of coordinates.
        noise_multiplier: sigma (> 0).
        clip_norm: C (> 0).
        rng: the generator to draw from.
        share: ``n`` when this is one of ``n`` shares of the noise (each with variance
            ``sigma^2 C^2 / n``; their sum has ``sigma^2 C^2``); 1 for the whole noise.

    Returns:
        (size,) float64 noise with per-coordinate standard deviation
        ``sigma * C / sqrt(share)``.

    Raises:
        ConfigError: for sigma <= 0, C <= 0 or share < 1.
    """
    _check_clip(clip_norm)
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(f"privacy: noise_multiplier must be > 0, got {noise_multiplier}")
    if share < 1:
        raise ConfigError(f"privacy: noise share count must be >= 1, got {share}")
    std = local_noise_std(noise_multiplier, clip_norm, share)
    return rng.normal(0.0, std, size=int(size))


def local_noise_std(noise_multiplier: float, clip_norm: float, edges: int) -> float:
    """Per-coordinate std each of ``edges`` edges adds so the sum carries ``sigma * C``."""
    return float(noise_multiplier * clip_norm / math.sqrt(edges))


def effective_noise_multiplier(noise_multiplier: float, count_noise_multiplier: float) -> float:
    """The noise multiplier left for the updates when adaptive clipping also releases a noised
    count with ``count_noise_multiplier`` (sigma_b): ``(sigma^-2 - (2 sigma_b)^-2)^(-1/2)``
    (Andrew et al. 2021, Theorem 1). The total privacy cost then equals that of one Gaussian
    release with ``noise_multiplier``: account with ``noise_multiplier``, add the updates' noise
    with the returned value.

    Raises:
        ConfigError: when sigma_b is too small for sigma (no noise would be left).
    """
    rest = noise_multiplier ** -2 - (2.0 * count_noise_multiplier) ** -2
    if rest <= 0:
        raise ConfigError(
            f"privacy: adaptive clipping's count noise ({count_noise_multiplier}) is too small "
            f"for noise_multiplier {noise_multiplier}: need count_noise_multiplier > "
            f"{noise_multiplier / 2}"
        )
    return float(rest ** -0.5)


@dataclass(slots=True)
class AdaptiveClip:
    """The clip norm of the next round from the noised fraction of updates under it.

    Andrew et al. 2021, Algorithm 1: ``b = (#{norm_i <= C} + N(0, sigma_b^2)) / m`` and
    ``C <- C * exp(-lr * (b - target_quantile))``.

    Attributes:
        clip_norm: the current C.
        target_quantile: the fraction of updates that should be unclipped (0 < gamma < 1).
        learning_rate: the geometric step (eta_C).
        count_noise_multiplier: sigma_b, the std of the noise on the count.
    """

    clip_norm: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_multiplier: float = 10.0

    def __post_init__(self) -> None:
        _check_clip(self.clip_norm)
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigError(
                f"privacy: target_quantile must be in (0, 1), got {self.target_quantile}"
            )
        if not self.learning_rate > 0:
            raise ConfigError(f"privacy: clip learning_rate must be > 0, got {self.learning_rate}")
        if not self.count_noise_multiplier > 0:
            raise ConfigError("privacy: count_noise_multiplier must be > 0")

    def update(self, norms: np.ndarray, expected: int, rng: np.random.Generator) -> float:
        """Move C after a release whose updates had ``norms``; return the new C.

        Args:
            norms: the pre-clipping norms of the round's updates.
            expected: m, the fixed denominator (expected participants per round).
            rng: the generator of the count noise.
        """
        below = float(np.count_nonzero(np.asarray(norms) <= self.clip_norm))
        noisy = (below + rng.normal(0.0, self.count_noise_multiplier)) / max(1, expected)
        self.clip_norm = float(
            self.clip_norm * math.exp(-self.learning_rate * (noisy - self.target_quantile))
        )
        return self.clip_norm
