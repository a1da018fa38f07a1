"""The trainer's run directory (docs/log-format.md): run.json, scalars.csv, router.csv, status.json, W&B.

Every rank builds a :class:`RunLogger` with ``enabled=(rank == 0)``: a disabled logger checks its arguments
the same way (so a bad key fails on every rank alike) and touches no file.
The CSV files are written with :mod:`sb_analysis.logwriter` (whole-line appends flushed per step, atomic
JSON), so the same rules hold as for the format's reference writer.

Column sets are fixed when the logger is built (a CSV header never changes):

* ``scalars.csv``: :data:`SCALAR_HEAD` + ``lr_<group>`` per param group + :data:`SCALAR_TAIL`. A scalar
  key outside these raises ``ValueError`` at once instead of being lost or breaking the header.
* ``router.csv``: :data:`ROUTER_SCALARS` + ``feat_w_<name>`` per router input feature + the per-expert
  vectors ``load_e{i}``, ``demand_e{i}``, ``importance_e{i}``.

How a :class:`sb_model.metrics.RoutingReport` becomes ``router.csv`` rows (one per layer in the report):

* per-layer scalars keep their names, except ``aux`` -> ``aux_loss``; ``layer`` comes from the row.
  ``max_frac`` and ``num_active`` are the bank's (largest *demanded* fraction, experts that served >= 1
  choice); readers re-derive ``max_frac``/``active`` from ``load_e*`` (§4), so both views are kept.
* ``load_e{i}``   = ``frac_srv[i] / sum(frac_dem)``: the share of the layer's routing choices that expert
  ``i`` served. Dropless it sums to 1; when capacity drops choices it sums to 1 - drop_frac, so that served
  <= demanded for every expert and the readers' capacity rule (demanded - served, §7) sees the drops.
  (The bank's ``frac_srv``/``frac_dem`` divide by tokens * k; dividing by the valid choices instead keeps
  the sum at 1 while k exceeds the number of live experts, e.g. top-2 during the single-expert phase.)
* ``demand_e{i}`` = ``frac_dem[i] / sum(frac_dem)``: the share of the valid router choices (before capacity)
  that named expert ``i``; sums to 1 and equals ``load_e{i}`` when nothing is dropped. The bank masks
  inactive experts before top-k, so no choice can name a masked expert: demand is "before capacity",
  after the mask.
* ``importance_e{i}`` = ``importance[i]``: mean router probability over tokens (already sums to 1).
* the bank's ``load`` vector (the reference's top-1 share per expert) is not written as columns: it is what
  ``load_cv2``, ``load_entropy`` and ``usage_frac`` summarise, and for top-1 routing it equals the
  unnormalised ``frac_dem``.

The step's ``router_imp_cv2``, ``router_load_cv2``, ``router_usage_frac``, ``router_topk_prob_mean`` and
``router_max_logit`` scalars are filled from the report's summary unless the caller gives them.

W&B (optional, ``import wandb`` only when asked) gets the same values under the reference's names
(docs/log-format.md §8), mapped so that ``sb-analysis`` maps them back to the same columns: ``train/loss``,
``train/loss_main``, ``train/loss_aux``, ``val/loss``, ``val/tokens``, ``perf/approx_step_time_ms`` (the
cumulative training time, as in the reference and the format), ``train/tokens_seen``, ``lr/<group>``,
``router/temperature``, ``router/logit_cap``, ``router/<x>`` for ``router_<x>`` columns, every key of the
report summary as it is (``router/...``, ``router_expert/...``), ``router_layer/{i}/<column>`` for every
router.csv value, and the remaining scalars under their column names. A W&B failure never stops training:
it is reported on stderr once and the CSV files (the source of truth) go on.

Resume: pass ``resumed_from={"checkpoint": path, "step": s}`` (optionally ``"time_ms"``, the training time
at the checkpoint) and the same run directory. The logger keeps appending to the last segment of each table
when its header equals the columns (readers let later rows win), starts ``scalars.1.csv``/``router.1.csv``
... when they differ, removes a half-written last line left by a killed writer, rewrites run.json
atomically (``created_at`` kept, ``resumed_from`` set) and sets status.json back to ``running`` (keeping
the best validation if it was measured at or before step ``s``). With W&B on, a resumed run starts a new
W&B run (W&B refuses steps that go backwards). A run directory that already holds a run is refused
without ``resumed_from``, so a second run never mixes its rows into the first one's files.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sb_analysis.logformat import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ROUTER_COLUMNS,
    RUN_FILE,
    SCALARS_COLUMNS,
    STATUS_FILE,
    TABLES,
    segment_files,
)
from sb_analysis.logwriter import CsvAppender, config_hash, utc_now, write_json_atomic, write_status_file
from sb_model.bank.metrics import SCALAR_KEYS, RoutingReport
from sb_train.code_version import RUN_ID_PATTERN, make_run_id

# scalars.csv: the columns docs/log-format.md declares (sb_analysis.logformat.SCALARS_COLUMNS, in its order),
# with the per-group learning rates after the validation columns and the trainer's tokens_per_s added
_DECLARED = list(SCALARS_COLUMNS)
SCALAR_HEAD: tuple[str, ...] = tuple(_DECLARED[: _DECLARED.index("val_tokens") + 1])
SCALAR_TAIL: tuple[str, ...] = (*_DECLARED[_DECLARED.index("val_tokens") + 1 :], "tokens_per_s")
# RoutingReport.per_layer key -> router.csv column (keys not listed keep their name)
REPORT_RENAMES = {"aux": "aux_loss"}
# one column per statistic the bank reports (so a new bank statistic reaches the CSV), plus the EMA mixing
# coefficients that callers pass as layer_values
ROUTER_SCALARS: tuple[str, ...] = (
    "step",
    "layer",
    "tokens",
    *(REPORT_RENAMES.get(key, key) for key in SCALAR_KEYS),
    "ema_alpha_forward",
    "ema_alpha_reverse",
)
# scalars.csv column filled from RoutingReport.summary when the caller does not give it
SUMMARY_FILL = {f"router_{k}": f"router/{k}" for k in ("imp_cv2", "load_cv2", "usage_frac", "topk_prob_mean")}
SUMMARY_FILL["router_max_logit"] = "router/max_logit"
# scalars.csv column -> W&B key (the reference's names; sb-analysis maps them back)
WANDB_SCALAR_NAMES = {
    "loss": "train/loss",
    "loss_main": "train/loss_main",
    "loss_aux": "train/loss_aux",
    "val_loss": "val/loss",
    "val_tokens": "val/tokens",
    "time_ms": "perf/approx_step_time_ms",
    "tokens": "train/tokens_seen",
    "router_temp": "router/temperature",
    "logit_cap": "router/logit_cap",
}
STATES = ("running", "finished", "aborted", "failed")
STATUS_KEYS = ("final_val_loss", "best_val_loss", "best_val_step", "abort_reason", "error")
COMPUTED_HEADER_KEYS = ("format", "format_version", "run_id", "config", "config_hash", "num_experts")
STATUS_EVERY = 50
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def scalar_columns(lr_groups: Sequence[str]) -> list[str]:
    """The scalars.csv header for these param-group names (``lr_<group>`` columns)."""
    lr = [f"lr_{_check_name(group, 'lr group')}" for group in lr_groups]
    columns = [*SCALAR_HEAD, *lr, *SCALAR_TAIL]
    _check_unique(columns, "lr group names")
    return columns


def router_columns(num_experts: int, feature_names: Sequence[str] = ()) -> list[str]:
    """The router.csv header: scalars, ``feat_w_<name>`` per feature, then the three per-expert families."""
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1 (got {num_experts})")
    feats = [f"feat_w_{_check_name(name, 'router feature')}" for name in feature_names]
    vectors = [f"{family}_e{i}" for family in ("load", "demand", "importance") for i in range(num_experts)]
    columns = [*ROUTER_SCALARS, *feats, *vectors]
    _check_unique(columns, "router feature names")
    return columns


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"{what} name {name!r} cannot be a CSV column: use lower-case letters, digits and '_' "
            "(docs/log-format.md §1)"
        )
    return name


def _check_unique(columns: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    dups = [c for c in columns if c in seen or seen.add(c)]  # type: ignore[func-returns-value]
    if dups:
        raise ValueError(f"duplicate columns {dups}: check the {what}")


def _share(values: Sequence[float], total: float) -> list[float]:
    return [v / total for v in values] if total > 0 else [float(v) for v in values]


def router_rows(
    step: int,
    report: RoutingReport,
    *,
    tokens_per_layer: int | None = None,
    layer_values: Mapping[str, Sequence[float | None]] | None = None,
) -> list[dict[str, Any]]:
    """router.csv rows (column -> value) for one step's report; see the module docstring for the mapping.

    ``layer_values`` adds per-layer values the report does not carry (e.g. ``ema_alpha_forward``), indexed by
    layer.
    """
    rows = []
    for j, stats in enumerate(report.per_layer):
        layer = int(stats["layer"])
        row: dict[str, Any] = {"step": step, "layer": layer, "tokens": tokens_per_layer}
        for key, value in stats.items():
            if key != "layer":
                row[REPORT_RENAMES.get(key, key)] = value
        for name, per_layer in (layer_values or {}).items():
            row[name] = per_layer[layer]
        vectors = report.vectors
        choices = sum(vectors["frac_dem"][j])
        for family, values in (
            ("load", _share(vectors["frac_srv"][j], choices)),
            ("demand", _share(vectors["frac_dem"][j], choices)),
            ("importance", vectors["importance"][j]),
        ):
            for i, value in enumerate(values):
                row[f"{family}_e{i}"] = value
        rows.append(row)
    return rows


def _field(name: str, value: Any, integer: bool) -> int | float | None:
    """A value as a CSV number: None stays empty, bools become 0/1, 0-d tensors/numpy values are unwrapped."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}") from None
    if integer:
        if not number.is_integer():
            raise ValueError(f"{name} is an integer column; got {number!r}")
        return int(number)
    return number


def _typed(row: Mapping[str, Any], declared: Mapping[str, str]) -> dict[str, int | float | None]:
    return {k: _field(k, v, declared.get(k, "DOUBLE") in ("BIGINT", "INTEGER")) for k, v in row.items()}


def _last_line_complete(path: Path) -> None:
    """Cut a half-written last line (no ``\\n``) that a killed writer left, so appends start on a new line."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        block = 1 << 16
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            chunk = handle.read(end - start)
            at = chunk.rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            end = start
        handle.truncate(keep)
    print(f"sb-train: {path}: removed a half-written last line ({size - keep} bytes)", file=sys.stderr)


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return handle.readline().rstrip("\n").split(",")


def open_table(run_dir: Path, stem: str, columns: Sequence[str]) -> CsvAppender:
    """The appender of table ``stem``: its last segment when the header matches, else a new segment."""
    segments = segment_files(run_dir, TABLES[stem])
    if not segments:
        return CsvAppender(run_dir / f"{stem}.csv", columns)
    last = segments[-1]
    _last_line_complete(last)
    if last.stat().st_size == 0 or _header(last) == list(columns):
        return CsvAppender(last, columns)
    match = re.match(rf"^{re.escape(stem)}\.(\d+)\.csv$", last.name)
    index = int(match.group(1)) + 1 if match else 1
    return CsvAppender(run_dir / f"{stem}.{index}.csv", columns)


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


def _check_state(state: str) -> None:
    if state not in STATES:
        raise ValueError(f"status state must be one of {STATES} (got {state!r})")


class RunLogger:
    """Writes one run directory (see the module docstring); with ``enabled=False`` (every rank but 0) it
    checks its inputs the same way and touches no file.

    ``extra_header`` adds keys to run.json (e.g. :func:`sb_train.code_version.code_version`'s ``git_sha`` and
    ``git_dirty``); the keys the logger computes itself (``format``, ``run_id``, ``config``, ``config_hash``,
    ...) cannot be overridden with a different value.
    """

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
        self.status_every = status_every
        self.wandb_run: Any = None
        self._closed = False
        if router_stats_scope not in ("global", "rank0"):
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
        if not RUN_ID_PATTERN.match(self.run_id):
            raise ValueError(f"run_id {self.run_id!r} must match [A-Za-z0-9._-]+")
        if previous and previous.get("run_id") not in (None, self.run_id):
            raise ValueError(
                f"{self.run_dir} holds run {previous.get('run_id')!r}, not {self.run_id!r}: resume with the "
                "same run id (or run_id=None), or log the new run into a new directory"
            )
        self.header: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "run_id": self.run_id,
            "preset": preset,
            "config": dict(config),
            "config_hash": config_hash(config),
            "created_at": previous.get("created_at") or utc_now(),
            "git_sha": None,
            "git_dirty": False,
            "host": os.uname().nodename,
            "world_size": world_size,
            "device": device_name,
            "num_layers": num_layers,
            "num_experts": num_experts,
            "top_k": top_k,
            "tokens_per_step": tokens_per_step,
            "total_steps": total_steps,
            "router_stats_scope": router_stats_scope,
            "wandb": None,
            "resumed_from": dict(resumed_from) if resumed_from is not None else None,
        }
        for key, value in (extra_header or {}).items():
            if key in COMPUTED_HEADER_KEYS and value != self.header[key]:
                raise ValueError(
                    f"extra_header[{key!r}] = {value!r} differs from the value the logger computes "
                    f"({self.header[key]!r}); run.json's {key} is defined by docs/log-format.md §2"
                )
            self.header[key] = value
        self._warned: set[str] = set()
        self._last_extra: dict[str, Any] = {}
        self.scalars = open_table(self.run_dir, "scalars", self.scalar_columns)
        self.router: CsvAppender | None = None  # opened with the first router rows
        self.last_step: int | None = None
        self.last_time_ms = 0.0
        self.best_val: tuple[float, int] | None = None
        self.final_val_loss: float | None = None
        self._status_step: int | None = None
        if settings is not None:
            self.wandb_run = self._start_wandb(settings)
        write_json_atomic(self.run_dir / RUN_FILE, self.header)
        if resumed_from is not None:
            self.last_step = int(resumed_from["step"])
            self.last_time_ms = float(resumed_from.get("time_ms", 0.0))
            self.best_val = self._previous_best(self.last_step)
            self.write_status("running", self.last_step, self.last_time_ms)

    def _previous_header(self, resumed_from: Mapping[str, Any] | None) -> dict[str, Any]:
        path = self.run_dir / RUN_FILE
        has_rows = bool(segment_files(self.run_dir, TABLES["scalars"]))
        if not path.is_file() and not has_rows:
            return {}
        if resumed_from is None:
            raise FileExistsError(
                f"{self.run_dir} already holds a run ({RUN_FILE} or scalars.csv exists): pass resumed_from "
                "to continue it, or choose a new run directory"
            )
        if not path.is_file():
            return {}
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError, ValueError):
            return {}

    def _previous_best(self, step: int) -> tuple[float, int] | None:
        """The best validation of the earlier segment, if it was measured at or before the resumed step."""
        try:
            status = json.loads((self.run_dir / STATUS_FILE).read_text(encoding="utf-8"))
            loss, at = status.get("best_val_loss"), status.get("best_val_step")
        except (OSError, ValueError, AttributeError):
            return None
        if isinstance(loss, int | float) and isinstance(at, int) and at <= step:
            return float(loss), at
        return None

    # ------------------------------------------------------------------ W&B

    def _start_wandb(self, settings: WandbSettings) -> Any:
        try:
            import wandb
        except ImportError:
            print(
                "sb-train: W&B logging was asked for but the wandb package is not installed "
                "(pip install wandb); logging to CSV only",
                file=sys.stderr,
            )
            return None
        try:
            run = wandb.init(
                project=settings.project,
                entity=settings.entity,
                name=settings.name or self.run_id,
                group=settings.group,
                mode=settings.mode,
                dir=str(self.run_dir),
                config={**self.header["config"], "run_id": self.run_id, "preset": self.header["preset"]},
                settings=wandb.Settings(console="off", silent=True, disable_git=True, disable_code=True),
                reinit="create_new",
            )
        except Exception as err:  # any failure of W&B must not stop training
            print(
                f"sb-train: W&B init failed ({type(err).__name__}: {err}); logging to CSV only",
                file=sys.stderr,
            )
            return None
        run_path = Path(run.dir).parent  # run.dir is <run>/files
        try:
            rel = os.path.relpath(run_path, self.run_dir)
        except ValueError:
            rel = str(run_path)
        self.header["wandb"] = {
            **{k: v for k, v in asdict(settings).items() if k in ("mode", "project", "entity")},
            "run_id": run.id,
            "dir": rel,
        }
        return run

    def _wandb_log(self, payload: dict[str, float], step: int) -> None:
        if self.wandb_run is None or not payload:
            return
        try:
            self.wandb_run.log(payload, step=step)
        except Exception as err:
            print(
                f"sb-train: W&B log failed ({type(err).__name__}: {err}); W&B logging stopped",
                file=sys.stderr,
            )
            self.wandb_run = None

    @staticmethod
    def wandb_payload(
        row: Mapping[str, Any], layer_rows: Iterable[Mapping[str, Any]], summary: Mapping[str, float]
    ) -> dict[str, float]:
        """The W&B keys and values of one step (None values are left out)."""
        out: dict[str, float] = {}
        for key, value in summary.items():
            out[key] = float(value)
        for column, value in row.items():
            if value is None or column in ("step", "wall_time"):
                continue
            if column in WANDB_SCALAR_NAMES:
                key = WANDB_SCALAR_NAMES[column]
            elif column.startswith("lr_"):
                key = f"lr/{column[3:]}"
            elif column.startswith("router_"):
                key = f"router/{column[7:]}"
            else:
                key = column
            out[key] = float(value)
        if "step" in row:
            out["train/step"] = float(row["step"])
        for layer_row in layer_rows:
            layer = layer_row["layer"]
            for column, value in layer_row.items():
                if value is not None and column not in ("step", "layer"):
                    out[f"router_layer/{layer}/{column}"] = float(value)
        return out

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
    ) -> None:
        """Append step ``step``: one scalars.csv row and, with a report, one router.csv row per layer.

        ``scalars`` holds scalars.csv columns (``time_ms`` is required, ``step`` may be repeated);
        ``wall_time`` defaults to now. Log each step once, with its validation values in the same call
        (docs/log-format.md §1). ``tokens_per_layer`` fills router.csv's ``tokens``; ``layer_values`` adds
        per-layer values the report lacks (e.g. ``{"ema_alpha_forward": [a0, a1, ...]}``). Rewrites
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
            for column, key in SUMMARY_FILL.items():
                if row.get(column) is None and key in summary:
                    row[column] = summary[key]
            rows = router_rows(step, report, tokens_per_layer=tokens_per_layer, layer_values=layer_values)
            layer_rows = [self._router_row(r) for r in rows]
        typed = _typed(row, SCALARS_COLUMNS)
        csv_row: dict[str, Any] = dict(typed)
        if typed.get("wall_time") is not None:  # Unix seconds need more than .9g's 9 digits (10 s steps)
            csv_row["wall_time"] = repr(float(typed["wall_time"]))  # type: ignore[arg-type]
        if layer_rows:
            if self.router is None:
                self.router = open_table(self.run_dir, "router", self.router_columns)
            for layer_row in layer_rows:
                self.router.append(layer_row)
            self.router.flush()
        self.scalars.append(csv_row)
        self.scalars.flush()
        self._wandb_log(self.wandb_payload(typed, layer_rows, summary), step)

        self.last_step, self.last_time_ms = step, float(typed["time_ms"])  # type: ignore[arg-type]
        val = typed.get("val_loss")
        if val is not None and not math.isnan(val):
            if self.best_val is None or val < self.best_val[0]:
                self.best_val = (float(val), step)
            if step >= self.total_steps:
                self.final_val_loss = float(val)
        if val is not None or self._status_step is None or step - self._status_step >= self.status_every:
            self.write_status("running", step, self.last_time_ms)

    def _router_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """One report row restricted to the fixed router.csv columns (a mismatch is an error or a warning)."""
        unknown = [k for k in row if k not in self._router_set]
        if unknown:
            feats = [k for k in unknown if k.startswith("feat_w_")]
            if feats:
                names = [k.removeprefix("feat_w_") for k in feats]
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
        return _typed({k: v for k, v in row.items() if k in self._router_set}, ROUTER_COLUMNS)

    def write_status(self, state: str, step: int, time_ms: float, **extra: Any) -> None:
        """Rewrite status.json atomically. ``extra``: the format's ``final_val_loss``, ``best_val_loss``,
        ``best_val_step``, ``abort_reason``, ``error`` (the best and final validation logged so far are filled
        in unless given) and any further JSON values (e.g. the final logit-cap statistics)."""
        _check_state(state)
        if not self.enabled:
            return
        status: dict[str, Any] = {
            "final_val_loss": self.final_val_loss,
            "best_val_loss": self.best_val[0] if self.best_val else None,
            "best_val_step": self.best_val[1] if self.best_val else None,
            "abort_reason": None,
            "error": None,
        }
        status.update(extra)
        write_status_file(self.run_dir, self.run_id, state, step, self.total_steps, time_ms, **status)
        self._status_step = step
        self._last_extra = dict(extra)

    def close(self, state: str = "finished", **extra: Any) -> None:
        """Write the final status (keeping the extras of the last :meth:`write_status`, e.g. ``error``, unless
        given again), close the CSV files, put the numeric extras into the W&B summary and finish W&B (exit
        code 0 only for "finished"). A second call does nothing."""
        _check_state(state)
        if self._closed or not self.enabled:
            self._closed = True
            return
        self._closed = True
        merged = {**self._last_extra, **extra}
        step = self.last_step if self.last_step is not None else -1
        self.write_status(state, step, self.last_time_ms, **merged)
        for table in (self.scalars, self.router):
            if table is not None:
                table.close()
        if self.wandb_run is not None:
            run, self.wandb_run = self.wandb_run, None
            try:
                for key, value in merged.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        run.summary[key] = value
                run.finish(exit_code=0 if state == "finished" else 1)
            except Exception as err:
                print(f"sb-train: W&B finish failed ({type(err).__name__}: {err})", file=sys.stderr)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close("finished" if exc_type is None else "failed", **({"error": repr(exc)} if exc else {}))
