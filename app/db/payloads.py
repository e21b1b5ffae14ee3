"""JSON as the platform writes it into `json` columns (event payloads, the tool-call
ledger): compact text, since `json` keeps exactly what it is given, and values the encoder
does not know (datetimes, decimals) as their strings."""

from __future__ import annotations

import json
from typing import Any


def compact_json(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))
