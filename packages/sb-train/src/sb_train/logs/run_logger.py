"""RunLogger: the trainer's run directory (docs/log-format.md) written through sb-runlog, plus optional W&B.

Every rank builds a :class:`RunLogger` with ``enabled=(rank == 0)``: a disabled logger checks its arguments
the same way (so a bad key fails on every rank alike) and touches no file. A scalar key outside the fixed
scalars.csv header raises ``ValueError`` at once instead of being lost or breaking the header. The step's
``router_<x>`` summary scalars are filled from the report's summary unless the caller gives them.

Resume: pass ``resumed_from={"checkpoint": path, "step": s}`` (optionally ``"time_ms"``, the training time
at the checkpoint) and the same run directory. The writer keeps appending to the last segment of each table
when its header equals the columns (readers let later rows win), starts ``scalars.1.csv``/``router.1.csv``
... when they differ, and cuts a half-written last line left by a killed writer; run.json is rewritten
(``created_at`` kept, ``resumed_from`` set) and status.json set back to ``running`` (keeping the best
validation if it was measured at or before step ``s``). With W&B on, a resumed run starts a new W&B run
(W&B refuses steps that go backwards). A run directory that already holds a run is refused without
``resumed_from``, so a second run never mixes its rows into the first one's files.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sb_runlog import DOMAINS, RUN_FILE, STATUS_FILE, RunLogWriter, new_run_header, segment_files
from sb_runlog.columns import FEATURE_WEIGHT_PREFIX
from sb_runlog.run_header import ROUTER_STATS_SCOPES
from sb_runlog.status import check_state

from sb_model.bank.metrics import RoutingReport
from sb_train.code_version import make_run_id

from .columns import router_columns, scalar_columns
from .report_rows import fill_router_summary, router_rows
from .status_keeper import STATUS_EVERY, StatusKeeper
from .wandb_log import WandbLog, WandbSettings, wandb_payload

# run.json keys the logger computes itself; extra_header may repeat them only with the same value
COMPUTED_HEADER_KEYS = ("format", "format_version", "run_id", "config", "config_hash", "num_experts")


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from an earlier segment's file, or {} when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class RunLogger:
    """Writes one run directory (see the module docstring); with ``enabled=False`` (every rank but 0) it
    checks its inputs the same way and touches no file.

    ``extra_header`` adds keys to run.json (e.g. :func:`sb_train.code_version.code_version`'s ``git_sha`` and
    ``git_dirty``); the keys the logger computes itself (``format``, ``run_id``, ``config``, ``config_hash``,
    ...) cannot be overridden with a different value.
    """

    wandb_payload = staticmethod(wandb_payload)

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        run_id: str | None,
        preset: str,
        config: Mapping[str, Any],
        num_layers: int,
        num_experts: int,
        top_k: int,
        tokens_per_step: int,
        total_steps: int,
        world_size: int = 1,
        device_name: str = "cpu",
        lr_groups: Sequence[str] = (),
        feature_names: Sequence[str] = (),
        router_stats_scope: str = "global",
        wandb: WandbSettings | Mapping[str, Any] | None = None,
        resumed_from: Mapping[str, Any] | None = None,
        extra_header: Mapping[str, Any] | None = None,
        status_every: int = STATUS_EVERY,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.scalar_columns = scalar_columns(lr_groups)
        self.router_columns = router_columns(num_experts, feature_names)
        self._scalar_set = set(self.scalar_columns)
        self._router_set = set(self.router_columns)
        self.num_experts = num_experts
        self.total_steps = total_steps
        self.status = StatusKeeper(total_steps, status_every)
        self.wandb: WandbLog | None = None
        self._warned: set[str] = set()
        self._closed = False
        if router_stats_scope not in ROUTER_STATS_SCOPES:
            raise ValueError(f"router_stats_scope must be 'global' or 'rank0' (got {router_stats_scope!r})")
        if resumed_from is not None and not {"checkpoint", "step"} <= set(resumed_from):
            raise ValueError("resumed_from must be {'checkpoint': path, 'step': s}")
        settings = WandbSettings(**wandb) if isinstance(wandb, Mapping) else wandb
        if not enabled:
            self.run_id = run_id
            return
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        previous = self._previous_header(resumed_from)
        self.run_id = run_id or previous.get("run_id") or make_run_id(preset, None)
        if previous and previous.get("run_id") not in (None, self.run_id):
            raise ValueError(
                f"{self.run_dir} holds run {previous.get('run_id')!r}, not {self.run_id!r}: resume with the "
                "same run id (or run_id=None), or log the new run into a new directory"
            )
        header = new_run_header(
            self.run_id,
            preset,
            config,
            num_layers=num_layers,
            num_experts=num_experts,
            top_k=top_k,
            tokens_per_step=tokens_per_step,
            total_steps=total_steps,
            world_size=world_size,
            device=device_name,
            router_stats_scope=router_stats_scope,
            created_at=previous.get("created_at"),
            resumed_from=resumed_from,
        )
        for key, value in (extra_header or {}).items():
            if key in COMPUTED_HEADER_KEYS and value != header[key]:
                raise ValueError(
                    f"extra_header[{key!r}] = {value!r} differs from the value the logger computes "
                    f"({header[key]!r}); run.json's {key} is defined by docs/log-format.md §2"
                )
            header[key] = value
        if settings is not None:
            self.wandb = WandbLog.start(settings, self.run_dir, self.run_id, preset, header["config"])
            if self.wandb is not None:
                header["wandb"] = self.wandb.header_entry
        self.writer = RunLogWriter(
            self.run_dir, header, scalar_columns=self.scalar_columns, router_columns=self.router_columns,
            domain_columns=list(DOMAINS.declared),
        )
        if resumed_from is not None:
            step = int(resumed_from["step"])
            previous_status = _read_json(self.run_dir / STATUS_FILE)
            self.status.resume(step, float(resumed_from.get("time_ms", 0.0)), previous_status)
            self.write_status("running", step, self.status.last_time_ms)

    @property
    def header(self) -> dict[str, Any]:
        """The run.json contents (empty on a disabled logger)."""
        return self.writer.header if self.enabled else {}

    @property
    def wandb_run(self) -> Any:
        """The live W&B run object, or None (W&B off, failed, or finished)."""
        return self.wandb.run if self.wandb is not None else None

    def _previous_header(self, resumed_from: Mapping[str, Any] | None) -> dict[str, Any]:
        path = self.run_dir / RUN_FILE
        if not path.is_file() and not segment_files(self.run_dir, "scalars"):
            return {}
        if resumed_from is None:
            raise FileExistsError(
                f"{self.run_dir} already holds a run ({RUN_FILE} or scalars.csv exists): pass resumed_from "
                "to continue it, or choose a new run directory"
            )
        return _read_json(path)

    # ------------------------------------------------------------------ logging

    def check_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Raise ValueError for keys that are not scalars.csv columns (the header is fixed) or a missing
        ``time_ms``."""
        unknown = set(scalars) - self._scalar_set
        if unknown:
            raise ValueError(
                f"unknown scalar(s) {sorted(unknown)}: scalars.csv has a fixed header; known columns are "
                f"{self.scalar_columns} (add an lr group at construction, or log the value elsewhere)"
            )
        if "step" in scalars and scalars["step"] != step:
            raise ValueError(f"scalars['step'] = {scalars['step']!r} but log_step was called for step {step}")
        if scalars.get("time_ms") is None:
            raise ValueError(
                "scalars must include time_ms (cumulative training time; required by the format)"
            )

    def log_step(
        self,
        step: int,
        scalars: Mapping[str, Any],
        report: RoutingReport | None = None,
        *,
        tokens_per_layer: int | None = None,
        layer_values: Mapping[str, Sequence[float | None]] | None = None,
        domain_rows: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Append step ``step``: one scalars.csv row and, with a report, one router.csv row per layer.

        ``scalars`` holds scalars.csv columns (``time_ms`` is required, ``step`` may be repeated);
        ``wall_time`` defaults to now. Log each step once, with its validation values in the same call
        (docs/log-format.md §1). ``tokens_per_layer`` fills router.csv's ``tokens``; ``layer_values`` adds
        per-layer values the report lacks (e.g. ``{"ema_alpha_forward": [a0, a1, ...]}``); ``domain_rows`` are
        domains.csv rows (docs/log-format.md §5) of a validation at this step. Rewrites
        status.json after a validation and at least every ``status_every`` steps. Does nothing but the checks
        when the logger is not enabled.
        """
        self.check_scalars(step, scalars)
        if self._closed:
            raise RuntimeError("log_step after close()")
        if report is not None and report.per_layer:
            got = len(report.vectors["importance"][0])
            if got != self.num_experts:
                raise ValueError(f"the report has {got} experts, the logger was built for {self.num_experts}")
        if not self.enabled:
            return
        row: dict[str, Any] = {"wall_time": time.time(), **scalars, "step": step}
        layer_rows: list[dict[str, Any]] = []
        summary: Mapping[str, float] = {}
        if report is not None and report.per_layer:
            summary = report.summary
            fill_router_summary(row, summary)
            rows = router_rows(step, report, tokens_per_layer=tokens_per_layer, layer_values=layer_values)
            layer_rows = [self._router_row(r) for r in rows]
        typed, typed_layers = self.writer.log_step(row, layer_rows, domain_rows)
        if self.wandb is not None:
            self.wandb.log(wandb_payload(typed, typed_layers, summary), step)
        val = typed.get("val_loss")
        time_ms = float(typed["time_ms"])  # type: ignore[arg-type]
        if self.status.record(step, time_ms, None if val is None else float(val)):
            self.write_status("running", step, self.status.last_time_ms)

    def _router_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """One report row restricted to the fixed router.csv columns (a mismatch is an error or a warning)."""
        unknown = [k for k in row if k not in self._router_set]
        if unknown:
            features = [k for k in unknown if k.startswith(FEATURE_WEIGHT_PREFIX)]
            if features:
                names = [k.removeprefix(FEATURE_WEIGHT_PREFIX) for k in features]
                raise ValueError(
                    f"the report has router features {names} without router.csv columns: "
                    f"pass feature_names={names} (or all of the bank's config.feature_slices)"
                )
            new = sorted(set(unknown) - self._warned)
            if new:
                self._warned.update(new)
                print(
                    f"sb-train: router values {new} have no router.csv column; not written", file=sys.stderr
                )
        return {k: v for k, v in row.items() if k in self._router_set}

    def write_status(self, state: str, step: int, time_ms: float, **extra: Any) -> None:
        """Rewrite status.json atomically. ``extra``: the format's ``final_val_loss``, ``best_val_loss``,
        ``best_val_step``, ``abort_reason``, ``error`` (the best and final validation logged so far are filled
        in unless given) and any further JSON values (e.g. the final logit-cap statistics)."""
        check_state(state)
        if not self.enabled:
            return
        self.writer.write_status(state, step, time_ms, **{**self.status.fields(), **extra})
        self.status.written(step, extra)

    def close(self, state: str = "finished", **extra: Any) -> None:
        """Write the final status (keeping the extras of the last :meth:`write_status`, e.g. ``error``, unless
        given again), close the CSV files, put the numeric extras into the W&B summary and finish W&B (exit
        code 0 only for "finished"). A second call does nothing."""
        check_state(state)
        if self._closed or not self.enabled:
            self._closed = True
            return
        self._closed = True
        merged = {**self.status.last_extra, **extra}
        step = self.status.last_step if self.status.last_step is not None else -1
        self.write_status(state, step, self.status.last_time_ms, **merged)
        self.writer.close()
        if self.wandb is not None:
            self.wandb.finish(state, merged)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close("finished" if exc_type is None else "failed", **({"error": repr(exc)} if exc else {}))
