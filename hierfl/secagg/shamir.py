"""Shamir t-of-n secret sharing [Shamir, 1979] of 32-byte secrets over GF(2^521 - 1).

Paper: doi.org/10.1145/359168.359176

The field is the Mersenne prime p = 2^521 - 1, large enough to hold a 256-bit secret (a mask
seed or an X25519 private key) as one field element, so a secret is one polynomial, not a
vector of chunks. A share is the pair (x, f(x)) with x >= 1 the holder's index in the round's
roster plus one; on the wire its value is 66 big-endian bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

__all__ = ["PRIME", "SHARE_BYTES", "reconstruct", "share", "share_from_bytes", "share_to_bytes"]

PRIME = 2**521 - 1
SHARE_BYTES = 66
_SECRET_BYTES = 32


def share(
    secret: bytes, xs: Sequence[int], threshold: int, random_bytes: Callable[[int], bytes]
) -> dict[int, int]:
    """Split ``secret`` into one share per x in ``xs``; any ``threshold`` of them recover it.

    Args:
        secret: 32 bytes.
        xs: distinct evaluation points in [1, p).
        threshold: t, 1 <= t <= len(xs).
        random_bytes: source of the polynomial's random coefficients (``os.urandom``).

    Returns:
        {x: f(x)} for a random polynomial f of degree t - 1 with f(0) = secret.

    Raises:
        ValueError: on a secret of the wrong size, repeated or out-of-range points, or a
            threshold outside [1, len(xs)].
    """
    if len(secret) != _SECRET_BYTES:
        raise ValueError(f"secret must be {_SECRET_BYTES} bytes, got {len(secret)}")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and in [1, p)")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in [1, {len(xs)}], got {threshold}")
    # 80 random bytes per coefficient: reduced mod p the bias is below 2^-100
    coefficients = [int.from_bytes(secret, "big")] + [
        int.from_bytes(random_bytes(80), "big") % PRIME for _ in range(threshold - 1)
    ]
    shares: dict[int, int] = {}
    for x in xs:
        acc = 0
        for c in reversed(coefficients):
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


def reconstruct(shares: Mapping[int, int], threshold: int) -> bytes:
    """Recover the secret from at least ``threshold`` shares by Lagrange interpolation at 0.

    Uses the ``threshold`` shares with the smallest x. With fewer shares than that, or with
    wrong shares, the result is garbage, not an error: callers check the count, and where they
    can, the result (a recovered private key must match its public key).

    Args:
        shares: {x: f(x)}.
        threshold: t.

    Returns:
        The 32-byte secret.

    Raises:
        ValueError: with fewer than ``threshold`` shares, or if f(0) does not fit in 32 bytes
            (the shares were not of one 32-byte secret).
    """
    if len(shares) < threshold or threshold < 1:
        raise ValueError(f"need {threshold} shares, got {len(shares)}")
    points = sorted(shares.items())[:threshold]
    secret = 0
    for j, (xj, yj) in enumerate(points):
        num, den = 1, 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * _SECRET_BYTES):
        raise ValueError("shares do not interpolate to a 32-byte secret")
    return secret.to_bytes(_SECRET_BYTES, "big")


def share_to_bytes(value: int) -> bytes:
    """A share's value as 66 big-endian bytes."""
    return value.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    """Parse 66 bytes into a share value; raises ValueError if not a field element."""
    if len(data) != SHARE_BYTES:
        raise ValueError(f"share must be {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ValueError("share is not a field element")
    return value
