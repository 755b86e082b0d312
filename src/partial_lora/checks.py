"""Small value checks shared by every validated dataclass, and the one way to refuse a value.

Every refusal reads ``<owner>.<field>=<value> is invalid: <what is allowed>``, so a user sees
which setting is wrong, what it was and what to give instead.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NoReturn


def invalid(field: str, value: Any, allowed: str) -> NoReturn:
    """Raise ``ValueError("<field>=<value!r> is invalid: <allowed>")``."""
    raise ValueError(f"{field}={value!r} is invalid: {allowed}")


def is_number(value: Any) -> bool:
    """A finite int or float (``bool`` is not a number here)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return not isinstance(value, bool) and isinstance(value, int)


def is_positive_int(value: Any) -> bool:
    return is_int(value) and value > 0


def is_non_negative_int(value: Any) -> bool:
    return is_int(value) and value >= 0


def known_fields(cls: type, data: Any, what: str, hint: str = "") -> dict[str, Any]:
    """``dict(data)`` after checking it is a mapping naming only fields of dataclass ``cls``.

    ``what`` names the document in messages (``"adapter config"``); ``hint`` is appended to
    the unknown-fields message (e.g. where such fields come from).
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a mapping (a JSON object), got {type(data).__name__}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; allowed: {sorted(known)}.{' ' + hint if hint else ''}")
    return dict(data)
