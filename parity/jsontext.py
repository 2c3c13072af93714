"""JSON text of every report parity writes (check, bisect, search): non-finite floats as
the strings "nan", "inf" and "-inf", so the text is strict JSON any tool can read."""

from __future__ import annotations

import json
import math
from typing import Any


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by its string and every key a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def json_text(data: dict[str, Any]) -> str:
    """`data` as indented, strict JSON text ending in a newline."""
    return json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"
