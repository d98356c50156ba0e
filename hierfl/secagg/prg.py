"""The pseudorandom generator that expands a 32-byte seed into a uint32 mask vector.

AES-256 in counter mode (OpenSSL through ``cryptography``, AES-NI where the CPU has it) over a
zero plaintext from a zero counter block: every seed is used once per round (self-mask seeds
are fresh random bytes; pairwise seeds come out of HKDF with the region and round in its info),
so a fixed IV never repeats a keystream. About 0.9 ms for the 1.1 M-parameter wide model on the
development machine, against 1.5 ms for ChaCha20.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["SEED_BYTES", "expand"]

SEED_BYTES = 32
_ZERO_IV = bytes(16)


def expand(seed: bytes, length: int) -> npt.NDArray[np.uint32]:
    """Return ``length`` pseudorandom uint32 values from ``seed`` (little-endian words).

    Args:
        seed: 32 bytes.
        length: number of uint32 values, >= 0.

    Raises:
        ValueError: if the seed is not 32 bytes or ``length`` is negative.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor()
    stream = encryptor.update(bytes(4 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32, copy=False)
