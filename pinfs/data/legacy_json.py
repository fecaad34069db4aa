"""JSON values as the legacy reader takes them: parsed with non-standard constants and overlong numbers
kept as their text (so every value stays strict JSON), nesting checked without recursion, and a
value's type named for a message. Used by ``pinfs.data.legacy`` and ``pinfs.data.legacy_entries``.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64


def loads_json(text: str) -> Any:
    """``json.loads`` keeping every value strict JSON (see the module docstring).

    Raises ValueError for text that is not JSON and RecursionError for absurd nesting.
    """
    try:
        # Integers parsed by json itself (a Python call per integer costs seconds in a 1M-pin file);
        # only one too long for int() makes this fail, and then the hooked parse below keeps it as text.
        return json.loads(text, parse_constant=str, parse_float=_parse_float)
    except ValueError:
        return json.loads(text, parse_constant=str, parse_float=_parse_float, parse_int=_parse_int)


def _parse_float(text: str) -> float | str:
    number = float(text)
    return number if math.isfinite(number) else text


def _parse_int(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:  # longer than sys.get_int_max_str_digits()
        return text


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels, walked level by level without recursion.

    Values come from ``json`` (exactly ``dict``/``list``), so ``type() in`` is enough and cheap.
    """
    level = [value] if type(value) in _CONTAINER_TYPES else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            below += [child for child in children if type(child) in _CONTAINER_TYPES]
        level = below
    return False


_CONTAINER_TYPES = (dict, list)


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
