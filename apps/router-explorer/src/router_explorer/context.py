"""What every page receives, and the focus a health finding hands to the routing page."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from .config import Settings
from .data import DbVersion

FOCUS_KEY = "focus"  # session-state key of a pending Focus (set by a link or a health finding)
COMPARE_KEY = "compare"  # session-state key: the runs picked for comparison (Runs / Losses pages)


@dataclass(frozen=True)
class Context:
    settings: Settings
    version: DbVersion
    runs: pl.DataFrame  # run_summary, one row per run
    run_id: str | None  # the run picked in the sidebar


@dataclass(frozen=True)
class Focus:
    """A layer and step range to show on the routing page."""

    layer: int | None
    step_from: int | None
    step_to: int | None
