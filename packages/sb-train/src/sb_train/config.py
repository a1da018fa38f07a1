"""The trainer's configuration: five typed sections and their TOML form (loaded by config_loading.py).

A configuration is a :class:`TrainConfig` with the sections

- ``model``    — :class:`sb_model.GPTConfig` (shapes, attention) with its bank as ``[model.bank]``;
- ``data``     — :class:`DataConfig` (shards, tokens per step, validation budgets);
- ``optim``    — :class:`OptimConfig` (learning rates per group, Adam and Muon options, router clipping);
- ``schedule`` — :class:`sb_train.schedules.ScheduleConfig` (LR, momentum, window and router schedules);
- ``run``      — :class:`RunConfig` (device, compile, logging, validation, checkpoints, W&B).

The dataclass defaults are the record's values (docs/design/presets.md). A preset is a TOML file in
``sb_train/presets`` that overrides some of them; ``--config FILE.toml`` and ``--set section.key=value`` are
applied on top, in that order. A nested config (``model.bank``) is a TOML table ``[model.bank]`` and is set
key by key (``--set model.bank.topk=2``). Every key is checked: unknown keys are refused with the closest
matches, and values are coerced to the field's declared type (``"4"`` is refused for a float only if it cannot
be read as one).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from sb_runlog import config_hash
from sb_runlog.run_header import RUN_ID

from sb_model import GPTConfig
from sb_model.bank.config import GPT_FIELDS, BankConfig
from sb_train.schedules import ScheduleConfig


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it and says how to fix it."""


@dataclass(frozen=True)
class DataConfig:
    """Where the tokens come from and how many one step uses (docs/design/presets.md, data and batch)."""

    train_files: str = "data/fineweb10B/fineweb_train_*.bin"
    val_files: str = "data/fineweb10B/fineweb_val_*.bin"
    tokens_per_rank: int = 12288  # per optimizer step, per rank (the reference's train_seq_len)
    grad_accum_steps: int = 1
    micro_tokens: int = 0  # tokens of one micro-batch; 0 derives it (docs/design/presets.md)
    loader_mode: Literal["contiguous", "aligned"] = "contiguous"
    val_seq_len: int = 8192  # tokens per validation forward, per rank
    val_tokens: int = 10485760  # the denominator of the validation budgets (docs/design/presets.md)
    val_tokens_intermediate: int = 229376
    val_tokens_final: int = 10485760
    # validation tokens (all ranks, whole forwards, at least one) whose per-domain routing goes to domains.csv
    # at every validation when the val shards carry domain labels; 0 = off (docs/log-format.md §5)
    domain_val_tokens: int = 65536
    # When the train shards are missing: "" fails with a hint, "python-docs" writes shards from text that
    # ships with every Python installation (the reference manual and standard-library sources).
    auto_prepare: Literal["", "python-docs"] = ""
    auto_prepare_max_bytes: int = 6_000_000

    def __post_init__(self) -> None:
        for name in ("tokens_per_rank", "grad_accum_steps", "val_seq_len", "val_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1 (got {getattr(self, name)})")
        if self.micro_tokens < 0:
            raise ConfigError(f"data.micro_tokens must be >= 0 (0 derives it), got {self.micro_tokens}")
        for name in ("val_tokens_intermediate", "val_tokens_final", "domain_val_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name} must be >= 0 (0 skips it)")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer groups and router clipping (docs/design/optimizer.md)."""

    lr_embed: float = 0.3
    lr_scalar: float = 0.015
    lr_head: float = 1 / 320
    lr_router: float = 0.095
    lr_adapter: float = 0.03
    lr_muon: float = 0.025  # attention and expert matrices
    adam_betas: tuple[float, float] = (0.8, 0.95)
    adam_eps: float = 1e-10
    weight_decay: float = 0.0
    muon_method: Literal["tuned5", "polar_express", "quintic", "turbo", "eigh", "svd"] = "turbo"
    muon_ns_steps: int = 4
    muon_nesterov: bool = False  # the record's TurboMuon: a plain EMA of the gradient
    # TurboMuon's products (Newton-Schulz and the power iteration) in fp32, as the reference; "auto":
    # sb-muon's hardware-dependent default (docs/design/optimizer.md, TurboMuon)
    muon_compute_dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    # the σ_max power iteration's start vector: "random" (the reference's; seeded per parameter and step from
    # run.seed) or "constant" (sb-muon's default)
    muon_power_iter_start: Literal["constant", "random"] = "random"
    # experts that got no tokens in a step are left alone, as the reference's per-expert parameters were
    muon_skip_idle_experts: bool = True
    router_grad_clip_norm: float = 0.0  # <= 0: no fixed clip
    router_autoclip: bool = True
    autoclip_window: int = 250
    autoclip_quantile: float = 0.10

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name.startswith("lr_") and not getattr(self, f.name) >= 0:
                raise ConfigError(f"optim.{f.name} must be >= 0 (got {getattr(self, f.name)})")
        b1, b2 = self.adam_betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ConfigError(f"optim.adam_betas must both be in [0, 1) (got {self.adam_betas})")
        if self.muon_ns_steps < 0:
            raise ConfigError(f"optim.muon_ns_steps must be >= 0 (got {self.muon_ns_steps})")
        if not 0 < self.autoclip_quantile < 1 or self.autoclip_window < 1:
            raise ConfigError("optim.autoclip_quantile must be in (0, 1) and autoclip_window >= 1")


@dataclass(frozen=True)
class RunConfig:
    """Everything about the run that is not the math: device, compile, logs, validation, checkpoints."""

    seed: int = 0
    device: str = "auto"  # auto: cuda:<local rank> when CUDA is available, else cpu
    compile: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA, off on CPU
    autocast: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 autocast on CUDA (fp32 master params)
    threads: int = 0  # torch intra-op threads on CPU (0: torch's default)
    warmup_steps: int = 0  # untimed compile warm-up steps, states restored after (docs/design/training.md)
    val_loss_every: int = 50  # 0: only the step-0 and final validations
    validate_at_start: bool = True
    log_every: int = 1  # scalars.csv rows (and the W&B log)
    router_log_every: int = 25  # router.csv rows (one host copy of the bank metrics)
    print_every: int = 10  # console progress line (also printed at least every 30 s)
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end and on SIGTERM/SIGINT)
    keep_last: int = 3
    keep_best: bool = True
    save_final: bool = True
    early_stop_step: int = 0  # > 0: stop there (that step's validation uses the intermediate budget)
    out_dir: str = "runs"
    run_name: str = ""  # "" generates one: <date>-<time>-<preset>-s<seed>-<hex>
    wandb: bool = False
    wandb_mode: Literal["offline", "online"] = "offline"
    wandb_project: str = "switchbank"
    wandb_entity: str = ""
    stop_check_every: int = 10  # steps between the collective checks for SIGTERM/SIGINT

    def __post_init__(self) -> None:
        for name in ("log_every", "router_log_every", "print_every", "keep_last", "stop_check_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"run.{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("val_loss_every", "checkpoint_every", "early_stop_step", "warmup_steps", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"run.{name} must be >= 0 (got {getattr(self, name)})")
        _check_run_name(self.run_name)
        _check_device(self.device)


def _check_run_name(name: str) -> None:
    """A run name is one folder name under run.out_dir: the run-id alphabet, no path, not hidden."""
    if name and (not RUN_ID.match(name) or name.startswith(".")):
        raise ConfigError(
            f"run.run_name={name!r} must be a plain folder name of letters, digits, '.', '_' and '-' that "
            "does not start with '.' (no '/', not '.' or '..'), e.g. run.run_name=\"tiny-lr2\"; set "
            "run.out_dir for the parent folder"
        )


def _check_device(device: str) -> None:
    if device == "auto":
        return
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"run.device={device!r} is not a device torch knows: use auto, cpu, cuda, cuda:N or mps"
        ) from None


@dataclass(frozen=True)
class TrainConfig:
    model: GPTConfig = field(default_factory=GPTConfig.record)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = "record"

    def __post_init__(self) -> None:
        # settings of two sections that must agree; refused here rather than clamped later
        experts = self.model.bank.num_experts
        for step, count in self.schedule.expert_activation_schedule:
            if count > experts:
                raise ConfigError(
                    f"schedule.expert_activation_schedule turns on {count} experts at step {step} but "
                    f"model.bank.num_experts is {experts}; lower the counts to at most {experts} or raise "
                    "model.bank.num_experts"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=_json_default))

    def hash(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of :meth:`to_dict` (the run.json ``config_hash``)."""
        return config_hash(self.to_dict())

    def to_toml(self) -> str:
        """The resolved configuration as TOML (what ``--print-config`` shows; loadable with ``--config``)."""
        lines: list[str] = [f'preset = "{self.preset}"']
        for section, cls in SECTIONS.items():
            values = self.to_dict()[section]
            nested = nested_configs(cls)
            lines.append(f"\n[{section}]")
            lines += _toml_lines({k: v for k, v in values.items() if k not in nested})
            for key in nested:
                lines.append(f"\n[{section}.{key}]")
                # the bank's GPT fields are filled in from [model]: shown, but as comments
                derived = GPT_FIELDS if nested[key] is BankConfig else ()
                lines += _toml_lines(values[key], derived, f"from [{section}]")
        return "\n".join(lines) + "\n"


SECTIONS: dict[str, type] = {
    "model": GPTConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "run": RunConfig,
}


def _toml_lines(values: Mapping[str, Any], derived: tuple[str, ...] = (), origin: str = "") -> list[str]:
    lines = []
    for key, value in values.items():
        if key in derived:
            lines.append(f"# {key} = {'(none)' if value is None else _toml_value(value)} ({origin})")
        elif value is None:
            lines.append(f"# {key} = (none)")
        elif isinstance(value, dict):
            inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return lines


def nested_configs(cls: type) -> dict[str, type]:
    """Fields of ``cls`` that are configs themselves (``GPTConfig.bank``), by name."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not JSON-able: {value!r}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else ("nan" if value != value
                                                                                   else "inf")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def micro_tokens(data: DataConfig, block_size: int) -> int:
    """Tokens per micro-batch (docs/design/presets.md): explicit, else tokens_per_rank // accum rounded down
    to whole attention blocks (at least one block)."""
    if data.micro_tokens:
        return data.micro_tokens
    m = max(data.tokens_per_rank // data.grad_accum_steps, block_size)
    return max(m // block_size * block_size, block_size)


def validation_steps(budget_tokens: int, val_tokens: int, world_size: int, val_seq_len: int) -> int:
    """Forwards per rank for a validation budget (Python's round, as the reference; see
    docs/design/presets.md)."""
    base_steps = max(val_tokens // (world_size * val_seq_len), 1)
    return max(1, round(base_steps * budget_tokens / val_tokens))
