"""The rules a CSV header follows: column names, no duplicates, required columns, whole per-expert families.

docs/log-format.md §1 and §4. Writers call these before they write a header; readers call
:func:`column_types` on every header they read. Violations raise :class:`LogFormatError`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .columns import EXPERT_FAMILIES, ColumnType, TableSpec
from .errors import LogFormatError

COLUMN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
EXPERT_COLUMN = re.compile(rf"^({'|'.join(EXPERT_FAMILIES)})_e(\d+)$")


def check_column_name(name: str, what: str = "column") -> str:
    """``name`` when it can be a CSV column (``[a-z][a-z0-9_]*``), else LogFormatError naming ``what``."""
    if not COLUMN_NAME.match(name):
        raise LogFormatError(
            f"{what} name {name!r} cannot be a CSV column: it must have the form [a-z][a-z0-9_]* "
            "(lower-case letters, digits and '_'; docs/log-format.md §1)"
        )
    return name


def check_unique(columns: Sequence[str]) -> None:
    """LogFormatError naming the columns that appear more than once."""
    seen: set[str] = set()
    repeated: list[str] = []
    for name in columns:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    if repeated:
        raise LogFormatError(f"column(s) {', '.join(repeated)} appear twice in the header")


def expert_counts(header: Sequence[str]) -> dict[str, int]:
    """Number of experts of each per-expert family in a router header; indices 0..n-1 must all be there."""
    indices: dict[str, set[int]] = {}
    for name in header:
        match = EXPERT_COLUMN.match(name)
        if match:
            indices.setdefault(match.group(1), set()).add(int(match.group(2)))
    counts: dict[str, int] = {}
    for family, present in indices.items():
        count = max(present) + 1
        missing = sorted(set(range(count)) - present)
        if missing:
            raise LogFormatError(
                f"per-expert columns {family}_e* are incomplete: missing "
                + ", ".join(f"{family}_e{i}" for i in missing)
            )
        counts[family] = count
    return counts


def check_header(spec: TableSpec, header: Sequence[str]) -> None:
    """LogFormatError unless ``header`` is a valid header of table ``spec`` (names, duplicates, required
    columns, complete per-expert families)."""
    for name in header:
        check_column_name(name)
    check_unique(header)
    present = set(header)
    missing = [name for name in spec.required if name not in present]
    if missing:
        raise LogFormatError(f"required column(s) {', '.join(missing)} missing from the {spec.name} header")
    expert_counts(header)


def column_types(spec: TableSpec, header: Sequence[str]) -> dict[str, ColumnType]:
    """The type of every column of a checked header, in header order (undeclared columns are DOUBLE)."""
    check_header(spec, header)
    return {name: spec.column_type(name) for name in header}
