"""Key agreement, key derivation and share encryption for one round.

X25519 [RFC 7748] for both key pairs an edge advertises (``c`` for encrypting shares, ``s`` for
pairwise masks, as in Bonawitz et al. 2017), HKDF-SHA256 [RFC 5869] to turn each shared point
into a key bound to the region, the round and its purpose, and ChaCha20-Poly1305 [RFC 8439] for
the shares relayed through the fog, with both ids and the round as associated data.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hierfl.secagg.errors import SecAggAuthError, SecAggMessageError

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "agree",
    "decrypt_share",
    "encrypt_share",
    "private_from_bytes",
    "public_bytes",
    "public_from_bytes",
]

KEY_BYTES = 32
NONCE_BYTES = 12


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of ``key``."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_from_bytes(data: bytes) -> X25519PublicKey:
    """Parse a raw public key; SecAggMessageError if it is not 32 bytes."""
    if len(data) != KEY_BYTES:
        raise SecAggMessageError(f"public key must be {KEY_BYTES} bytes, got {len(data)}")
    return X25519PublicKey.from_public_bytes(data)


def private_from_bytes(data: bytes) -> X25519PrivateKey:
    """Parse a raw private key (32 bytes)."""
    return X25519PrivateKey.from_private_bytes(data)


def agree(private: X25519PrivateKey, peer_public: bytes, purpose: bytes, context: bytes) -> bytes:
    """A 32-byte key shared by two edges, for one purpose in one region and round.

    Args:
        private: our X25519 private key.
        peer_public: the peer's raw public key.
        purpose: b"mask" or b"enc".
        context: :meth:`SecAggParams.context`.

    Raises:
        SecAggMessageError: if the peer's key is malformed or a low-order point (the shared
            secret would be all zeros).
    """
    try:
        point = private.exchange(public_from_bytes(peer_public))
    except ValueError as exc:
        raise SecAggMessageError(f"key agreement failed: {exc}") from exc
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None,
        info=b"hierfl-secagg|" + purpose + b"|" + context,
    ).derive(point)


def _aad(context: bytes, sender: str, recipient: str) -> bytes:
    return b"|".join((b"hierfl-secagg-share", context, sender.encode(), recipient.encode()))


def encrypt_share(
    key: bytes, nonce: bytes, plaintext: bytes, *, context: bytes, sender: str, recipient: str
) -> bytes:
    """``nonce || ChaCha20-Poly1305(plaintext)`` with the ids and round authenticated."""
    return nonce + ChaCha20Poly1305(key).encrypt(
        nonce, plaintext, _aad(context, sender, recipient)
    )


def decrypt_share(
    key: bytes, ciphertext: bytes, *, context: bytes, sender: str, recipient: str
) -> bytes:
    """Open what :func:`encrypt_share` sealed.

    Raises:
        SecAggAuthError: if it does not authenticate (altered, forged, misrouted or replayed).
    """
    if len(ciphertext) < NONCE_BYTES + 16:
        raise SecAggAuthError(f"share from {sender!r} is too short to authenticate")
    try:
        return ChaCha20Poly1305(key).decrypt(
            ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], _aad(context, sender, recipient)
        )
    except InvalidTag as exc:
        raise SecAggAuthError(
            f"share from {sender!r} to {recipient!r} does not authenticate"
        ) from exc
