"""`new_id`: the ULID layout (48 bits of milliseconds, 80 random), Crockford base32."""

from __future__ import annotations

import time

from app.db.ids import new_id

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _decode(digits: str) -> int:
    value = 0
    for char in digits:
        value = value * 32 + _CROCKFORD.index(char)
    return value


def test_an_id_is_the_prefix_and_26_crockford_digits_of_time_and_randomness() -> None:
    before = int(time.time() * 1000)
    made = new_id("ses")
    after = int(time.time() * 1000)
    prefix, _, digits = made.partition("_")
    assert prefix == "ses" and len(digits) == 26 and set(digits) <= set(_CROCKFORD)
    value = _decode(digits)
    assert value < 1 << 128
    assert before <= value >> 80 <= after
    assert len({new_id("ses")[-16:] for _ in range(1000)}) == 1000  # the random part varies


def test_ids_made_later_sort_later() -> None:
    earlier = [new_id("x") for _ in range(50)]
    time.sleep(0.002)
    later = [new_id("x") for _ in range(50)]
    assert max(earlier) < min(later)
