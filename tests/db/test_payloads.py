"""`compact_json`: the JSON text the platform writes into `json` columns and shows the model."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from app.db.payloads import compact_json
from app.runtime.store import asyncpg_dsn

AWKWARD = {
    "text": "naïve café — 日本語 \U0001f600",
    "controls": "nul\x00 tab\t newline\n bell\x07 del\x7f",
    "quotes": 'a "quoted" \\ backslash </script>',
    "numbers": [0, -1, 2**70, 0.1, 1e-7, 1.5e300, True, None],
    "nested": {"empty": {}, "list": [[], [{}]]},
}


def test_plain_json_round_trips_compactly_with_characters_as_they_are() -> None:
    text = compact_json(AWKWARD)
    assert json.loads(text) == AWKWARD
    assert ", " not in text and '": ' not in text  # compact separators
    assert "日本語" in text and "\\u65e5" not in text  # UTF-8, not \u escapes
    assert "\\u0000" in text and "\x00" not in text  # control characters stay escaped


def test_values_json_does_not_know_are_written_as_text() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    assert json.loads(compact_json({"d": Decimal("1.50"), "o": Opaque()})) == {
        "d": "1.50",
        "o": "opaque!",
    }


def test_a_lone_surrogate_falls_back_to_an_escaped_text() -> None:
    value = {"broken": "a\ud800b"}
    text = compact_json(value)
    assert "\\ud800" in text
    assert json.loads(text) == value


@pytest.mark.parametrize("value", [AWKWARD, {"broken": "a\ud800b"}])
async def test_postgres_json_columns_accept_it(database_url: str, value: Any) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        stored = await conn.fetchval("SELECT $1::json::text", compact_json(value))
    finally:
        await conn.close()
    assert json.loads(stored) == value
