"""W&B logging of a run (optional): settings, the payload of one step, and failures that never stop training.

``import wandb`` happens only when W&B is asked for. Values go under the names of sb_runlog.wandb_names
(docs/log-format.md §8), so that sb-analysis maps them back to the same columns; every key of the report
summary (``router/...``, ``router_expert/...``) is logged as it is. Any W&B failure is reported on stderr
once and logging goes on to CSV only (the source of truth).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sb_runlog.health_thresholds import is_collapsed
from sb_runlog.wandb_names import STEP_KEY, layer_key, scalar_key


@dataclass(frozen=True)
class WandbSettings:
    """W&B logging: ``mode`` "offline" (no network; the run lands in ``<run_dir>/wandb/offline-run-*``) or
    "online"."""

    mode: str = "offline"
    project: str = "switchbank"
    entity: str | None = None
    name: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("offline", "online"):
            raise ValueError(f"wandb mode must be 'offline' or 'online' (got {self.mode!r})")


def wandb_payload(
    row: Mapping[str, Any], layer_rows: Iterable[Mapping[str, Any]], summary: Mapping[str, float]
) -> dict[str, float]:
    """The W&B keys and values of one step: the report summary, the scalars row, every router.csv value
    (None values are left out), and ``router/collapsed`` (the collapse rule of sb-runlog on the worst layer,
    once more than one expert is live)."""
    out: dict[str, float] = {key: float(value) for key, value in summary.items()}
    if summary.get("router/live_experts", 0) > 1:
        worst = is_collapsed(summary.get("router/max_frac_max"), summary.get("router/active_min"))
        out["router/collapsed"] = float(worst)
    for column, value in row.items():
        key = scalar_key(column)
        if value is not None and key is not None:
            out[key] = float(value)
    if "step" in row:
        out[STEP_KEY] = float(row["step"])
    for layer_row in layer_rows:
        layer = int(layer_row["layer"])
        for column, value in layer_row.items():
            if value is not None and column not in ("step", "layer"):
                out[layer_key(layer, column)] = float(value)
    return out


def _warn(message: str) -> None:
    print(f"sb-train: {message}", file=sys.stderr)


class WandbLog:
    """One W&B run; :meth:`start` returns None (after a message) when W&B is missing or fails to start."""

    def __init__(self, run: Any, header_entry: dict[str, Any]) -> None:
        self.run: Any = run
        self.header_entry = header_entry  # run.json's "wandb" value

    @classmethod
    def start(
        cls, settings: WandbSettings, run_dir: Path, run_id: str, preset: str, config: Mapping[str, Any]
    ) -> WandbLog | None:
        try:
            import wandb
        except ImportError:
            _warn(
                "W&B logging was asked for but the wandb package is not installed (pip install wandb); "
                "logging to CSV only"
            )
            return None
        try:
            run = wandb.init(
                project=settings.project,
                entity=settings.entity,
                name=settings.name or run_id,
                group=settings.group,
                mode=settings.mode,
                dir=str(run_dir),
                config={**config, "run_id": run_id, "preset": preset},
                settings=wandb.Settings(console="off", silent=True, disable_git=True, disable_code=True),
                reinit="create_new",
            )
        except Exception as err:  # any failure of W&B must not stop training
            _warn(f"W&B init failed ({type(err).__name__}: {err}); logging to CSV only")
            return None
        run_path = Path(run.dir).parent  # run.dir is <run>/files
        try:
            rel = os.path.relpath(run_path, run_dir)
        except ValueError:
            rel = str(run_path)
        entry = {k: v for k, v in asdict(settings).items() if k in ("mode", "project", "entity")}
        return cls(run, {**entry, "run_id": run.id, "dir": rel})

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, payload: dict[str, float], step: int) -> None:
        if self.run is None or not payload:
            return
        try:
            self.run.log(payload, step=step)
        except Exception as err:
            _warn(f"W&B log failed ({type(err).__name__}: {err}); W&B logging stopped")
            self.run = None

    def finish(self, state: str, extras: Mapping[str, Any]) -> None:
        """Put the numeric ``extras`` into the run summary and finish (exit code 0 only for "finished")."""
        run, self.run = self.run, None
        if run is None:
            return
        try:
            for key, value in extras.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    run.summary[key] = value
            run.finish(exit_code=0 if state == "finished" else 1)
        except Exception as err:
            _warn(f"W&B finish failed ({type(err).__name__}: {err})")
