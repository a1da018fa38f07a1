"""sb-train: the SwitchBank trainer (presets, schedules, logs, checkpoints and exact resume)."""

__version__ = "0.1.0"
