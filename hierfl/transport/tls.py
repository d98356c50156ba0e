"""TLS client contexts for the broker connections (MQTT ``mqtts://``, Kafka ``SSL``/``SASL_SSL``).

One policy for every broker client: TLS 1.2 or newer, the broker's certificate verified
against ``ca_file`` (or the system's CAs) and its host name always checked. There is no
switch to turn verification off: a test broker gets a certificate from a test CA instead.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from hierfl.errors import ConfigError

__all__ = ["client_ssl_context", "find_ssl_error"]


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSL socket that closes itself when its handshake fails.

    paho wraps the TCP socket and runs the handshake in a local variable: when the handshake
    fails (unknown CA, wrong host name) nothing closes the socket, and the garbage collector
    reports it as an unclosed resource.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class _ServerNameContext(ssl.SSLContext):
    """A context that verifies (and sends as SNI) a fixed name instead of the dialled host.

    paho and asyncio pass the host they connect to as ``server_hostname``; a broker reached
    by IP address or through a tunnel may carry another name in its certificate.
    """

    server_name: str

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(sock, *args, **kwargs)

    def wrap_bio(self, incoming: Any, outgoing: Any, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        kwargs["server_hostname"] = self.server_name
        return super().wrap_bio(incoming, outgoing, *args, **kwargs)


def client_ssl_context(
    *,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    key_password: SecretStr | None = None,
    server_name: str | None = None,
    section: str = "tls",
) -> ssl.SSLContext:
    """A client-side TLS context: TLS >= 1.2, CERT_REQUIRED, host name checked.

    Args:
        ca_file: PEM bundle of the CAs that may sign the broker's certificate; None = the
            system's default CAs.
        cert_file: client certificate (PEM) for mutual TLS; needs ``key_file``.
        key_file: the private key of ``cert_file`` (PEM).
        key_password: passphrase of an encrypted ``key_file``.
        server_name: name the broker's certificate must carry (also sent as SNI); None =
            the host connected to.
        section: settings section named in error messages (``mqtt``, ``kafka``).

    Returns:
        The context, for ``aiomqtt.Client(tls_context=...)`` or aiokafka's ``ssl_context``.

    Raises:
        ConfigError: when a file cannot be read or parsed, or the key does not match the
            certificate or its passphrase.
    """
    if (cert_file is None) != (key_file is None):
        raise ConfigError(f"{section}.cert_file and {section}.key_file go together")
    ctx: ssl.SSLContext
    if server_name is not None:
        named = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
        named.server_name = server_name
        ctx = named
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # PROTOCOL_TLS_CLIENT already verifies and checks host names; say so where a future
    # edit could hurt. WARNING: never set check_hostname False or verify_mode CERT_NONE.
    ctx.sslsocket_class = _ClosingSSLSocket
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    try:
        if ca_file is None:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            ctx.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{section}.ca_file {str(ca_file)!r}: cannot load CAs: {exc}") from exc
    if cert_file is not None and key_file is not None:
        password = key_password.get_secret_value() if key_password is not None else None
        try:
            ctx.load_cert_chain(cert_file, key_file, password=password)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{section}.cert_file {str(cert_file)!r} / {section}.key_file {str(key_file)!r}: "
                f"cannot load the client certificate and key (wrong file, key or "
                f"key_password?): {exc}"
            ) from exc
    return ctx


def find_ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` that caused ``exc`` (itself, its cause or context), if any.

    aiomqtt re-raises paho's connect errors as ``MqttError(str(exc)) from None``, which hides
    but keeps the original in ``__context__``.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None
