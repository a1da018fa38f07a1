"""One CSV field: a value checked against its column's declared type, then written as text.

docs/log-format.md §1.

An empty field means "not measured" (None); NaN and infinities are ``nan``, ``inf``, ``-inf``; floats are
written with 9 significant digits unless the column keeps full precision; text is quoted when it holds a
comma, a quote or a newline.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from .columns import FULL_PRECISION_COLUMNS, INTEGER_TYPES, TableSpec

Field = int | float | str | None


def typed_value(column: str, value: Any, column_type: str) -> Field:
    """``value`` as the Python value of a ``column_type`` column.

    None stays None (an empty field); anything ``float()`` accepts (bools, 0-d tensors and numpy scalars
    included) becomes a float, or an int in an integer column, which refuses a non-integral number.
    """
    if value is None:
        return None
    if column_type == "VARCHAR":
        return str(value)
    if column_type in INTEGER_TYPES and isinstance(value, numbers.Integral):
        return int(value)  # bools too (0/1)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{column}: expected a number, got {type(value).__name__} {value!r}") from None
    if column_type in INTEGER_TYPES:
        if not number.is_integer():
            raise ValueError(f"{column} is an integer column; got {number!r}")
        return int(number)
    return number


def typed_row(spec: TableSpec, row: Mapping[str, Any]) -> dict[str, Field]:
    """Every value of ``row`` typed by its column's declared type in table ``spec``."""
    return {column: typed_value(column, value, spec.column_type(column)) for column, value in row.items()}


def format_value(value: Field, full_precision: bool = False) -> str:
    """The text of one CSV field (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value) if full_precision else format(value, ".9g")
    text = str(value)
    if any(ch in text for ch in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def keeps_full_precision(column: str) -> bool:
    """Whether ``column`` is written with every digit of a double."""
    return column in FULL_PRECISION_COLUMNS
