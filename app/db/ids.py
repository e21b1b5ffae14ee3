"""Opaque, prefixed, time-ordered identifiers (``ses_01J…``).

Time-ordered so new rows land at the right edge of their B-tree index; prefixed so a
stray id in a log says what it is. 48 bits of milliseconds + 80 random bits, Crockford
base32 — the ULID layout, in a dozen lines rather than a dependency.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str) -> str:
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, index = divmod(value, 32)
        chars.append(_ALPHABET[index])
    return f"{prefix}_{''.join(reversed(chars))}"
