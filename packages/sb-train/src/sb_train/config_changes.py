"""Resuming with another configuration: which settings changed, which may, and run.json's segment history.

A resume continues the checkpoint's experiment, so every setting that shapes the numbers must be the one the
checkpoint was written with. :func:`check_resume_config` refuses a changed model section always (the weights
would not fit) and any other changed setting unless ``--allow-config-change``; the settings in
:data:`FREE_TO_CHANGE` only say where and how a run is shown or kept and may change freely. With the flag the
run goes on with the new values and :func:`segments_after` records each part of the run (its start, the
checkpoint it came from, its configuration and what changed) in run.json's ``segments``
(docs/log-format.md §2; docs/design/training.md, checkpoints and resume).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sb_train.errors import RunError

__all__ = ["FREE_TO_CHANGE", "changed_settings", "check_resume_config", "segments_after"]

SECTIONS = ("model", "data", "optim", "schedule", "run")

#: settings that do not change what the steps compute (folders, console, W&B, checkpoints, where to stop)
FREE_TO_CHANGE = frozenset({
    "run.out_dir", "run.run_name", "run.threads", "run.print_every", "run.stop_check_every",
    "run.keep_last", "run.keep_best", "run.checkpoint_every", "run.save_final", "run.early_stop_step",
    "run.wandb", "run.wandb_mode", "run.wandb_project", "run.wandb_entity",
})  # fmt: skip


def _flatten(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (old, new)}`` for every setting of the five sections that differs (a key missing on
    one side counts as None there)."""
    flat_old: dict[str, Any] = {}
    flat_new: dict[str, Any] = {}
    for section in SECTIONS:
        flat_old.update(_flatten(old.get(section) or {}, f"{section}."))
        flat_new.update(_flatten(new.get(section) or {}, f"{section}."))
    return {key: (flat_old.get(key), flat_new.get(key)) for key in sorted(flat_old.keys() | flat_new.keys())
            if flat_old.get(key) != flat_new.get(key)}


def _describe(changes: Mapping[str, tuple[Any, Any]], limit: int = 5) -> str:
    shown = [f"{key} ({old!r} -> {new!r})" for key, (old, new) in list(changes.items())[:limit]]
    more = len(changes) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def check_resume_config(checkpoint_config: Mapping[str, Any], config: Mapping[str, Any], where: str, *,
                        allow_change: bool) -> dict[str, tuple[Any, Any]]:
    """The settings that differ from the checkpoint's; `RunError` for a changed model, and for any other
    change outside :data:`FREE_TO_CHANGE` unless ``allow_change``."""
    changes = changed_settings(checkpoint_config, config)
    model = {k: v for k, v in changes.items() if k.startswith("model.")}
    if model:
        raise RunError(f"{where} was written with another model configuration ({_describe(model)}); resume "
                       "with the model settings of that run, or start a new run (another run.run_name)")
    guarded = {k: v for k, v in changes.items() if k not in FREE_TO_CHANGE}
    if guarded and not allow_change:
        raise RunError(f"{where} was written with other settings: {_describe(guarded)}. Resume with the same "
                       "settings, or add --allow-config-change to go on with the new ones (run.json then "
                       "keeps both configurations in its segments)")
    return changes


def segments_after(previous_header: Mapping[str, Any], config: Mapping[str, Any], config_hash: str, *,
                   start_step: int, resumed_from: str | None) -> list[dict[str, Any]]:
    """run.json's ``segments`` with one more entry for the part of the run starting now: the earlier entries
    (or, for a run.json written before segments existed, one entry rebuilt from its config), then
    ``{"started_at", "start_step", "resumed_from", "config_hash", "config", "changed"}`` where ``changed``
    lists the settings that differ from the previous segment's."""
    earlier = [dict(s) for s in previous_header.get("segments") or [] if isinstance(s, Mapping)]
    if not earlier and isinstance(previous_header.get("config"), Mapping):
        earlier = [{"started_at": previous_header.get("created_at"), "start_step": 0, "resumed_from": None,
                    "config_hash": previous_header.get("config_hash"), "config": previous_header["config"],
                    "changed": []}]
    before = earlier[-1].get("config") if earlier else None
    changed = sorted(changed_settings(before, config)) if isinstance(before, Mapping) else []
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return [*earlier, {"started_at": now, "start_step": start_step, "resumed_from": resumed_from,
                       "config_hash": config_hash, "config": dict(config), "changed": changed}]
