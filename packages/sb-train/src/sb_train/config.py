"""The trainer's configuration: five typed sections, presets as TOML files, overrides with type checks.

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
import difflib
import hashlib
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal

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
        for name in ("val_tokens_intermediate", "val_tokens_final"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name} must be >= 0 (0 skips that validation)")


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


@dataclass(frozen=True)
class TrainConfig:
    model: GPTConfig = field(default_factory=GPTConfig.record)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = "record"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=_json_default))

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()

    def to_toml(self) -> str:
        """The resolved configuration as TOML (what ``--print-config`` shows; loadable with ``--config``)."""
        lines: list[str] = [f'preset = "{self.preset}"']
        for section, cls in SECTIONS.items():
            values = self.to_dict()[section]
            nested = _nested_configs(cls)
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


def _nested_configs(cls: type) -> dict[str, type]:
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


# ------------------------------------------------------------------------------------------ presets
def preset_names() -> list[str]:
    folder = resources.files("sb_train") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    path = resources.files("sb_train") / "presets" / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}{_suggest(name, preset_names())}; presets: "
                          + ", ".join(preset_names()))
    return path.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------ loading
def load_config(
    preset: str = "record",
    *,
    config_files: list[str | Path] = (),  # type: ignore[assignment]
    overrides: list[str] | Mapping[str, Any] = (),  # type: ignore[assignment]
) -> TrainConfig:
    """Resolve a configuration: the preset, then each TOML file, then the ``section.key=value`` overrides."""
    tree: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    _merge(tree, _parse_toml(preset_text(preset), f"preset {preset!r}"), f"preset {preset!r}")
    for path in config_files:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config {p}: no such file")
        _merge(tree, _parse_toml(p.read_text(encoding="utf-8"), str(p)), str(p))
    items = overrides.items() if isinstance(overrides, Mapping) else (_split_override(o) for o in overrides)
    for dotted, raw in items:
        section, _, key = dotted.partition(".")
        _check_section(section, f"--set {dotted}")
        if not key:
            raise ConfigError(f"--set {dotted}: expected section.key=value, e.g. run.seed=1")
        for flat_key, value in _flatten({key: raw}, _nested_configs(SECTIONS[section])):
            _check_key(section, flat_key, f"--set {dotted}")
            _set(tree[section], flat_key, value)
    built = {name: _build(cls, name, tree[name]) for name, cls in SECTIONS.items()}
    return TrainConfig(**built, preset=preset)


def model_config_from_dict(values: Mapping[str, Any]) -> GPTConfig:
    """The model section recorded in a checkpoint or run.json (``TrainConfig.to_dict()["model"]``) as the
    :class:`GPTConfig` it was built from (values coerced and checked like a ``[model]`` table)."""
    return _build(GPTConfig, "model", values)


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set run.seed=1")
    key, raw = text.split("=", 1)
    try:  # a TOML literal (numbers, booleans, arrays, quoted strings); anything else is a bare string
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def _parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from exc


def _merge(tree: dict[str, dict[str, Any]], doc: Mapping[str, Any], where: str) -> None:
    for section, table in doc.items():
        if section in ("preset", "description"):
            continue
        _check_section(section, where)
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: [{section}] must be a table of key = value lines")
        for key, value in _flatten(table, _nested_configs(SECTIONS[section])):
            _check_key(section, key, f"{where} [{section}]")
            _set(tree[section], key, value)


def _check_section(section: str, where: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"{where}: unknown section {section!r}{_suggest(section, list(SECTIONS))}; "
                          f"sections: {', '.join(SECTIONS)}")


def _flatten(table: Mapping[str, Any], nested: Mapping[str, type]) -> list[tuple[str, Any]]:
    """(dotted key, value) pairs of a section's table; a nested config's sub-table becomes ``bank.<key>``."""
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        if key in nested and isinstance(value, Mapping):
            out += [(f"{key}.{k}", v) for k, v in _flatten(value, _nested_configs(nested[key]))]
        else:
            out.append((key, value))
    return out


def _set(values: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``values[a][b]`` for the dotted key ``a.b`` (nested configs are kept as dicts until built)."""
    *heads, last = dotted.split(".")
    for head in heads:
        values = values.setdefault(head, {})
    values[last] = value


def _key_names(cls: type, prefix: str = "") -> list[str]:
    """Every settable key of a config class, nested configs' keys dotted (``bank.topk``)."""
    nested = _nested_configs(cls)
    out: list[str] = []
    for f in fields(cls):
        if f.name in nested:
            out += _key_names(nested[f.name], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _check_key(section: str, key: str, where: str) -> None:
    names = _key_names(SECTIONS[section])
    if key in names:
        return
    prefix, _, leaf = key.rpartition(".")
    # model.topk or model.bonk.topk -> model.bank.topk
    same_leaf = [n for n in names if n.rpartition(".")[2] == leaf and n.rpartition(".")[0] != prefix]
    if same_leaf:
        hint = " (did you mean " + " or ".join(f"{section}.{n}" for n in same_leaf) + "?)"
    else:  # closest keys at the same depth (model.bank.topkk -> model.bank.topk)
        siblings = [n.removeprefix(prefix + ".") for n in names if n.rpartition(".")[0] == prefix]
        hint = _suggest(leaf, siblings, f"{section}.{prefix}" if prefix else section)
    raise ConfigError(f"{where}: unknown key {section}.{key}{hint}")


def _suggest(word: str, choices: list[str], section: str | None = None) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    if not close:
        return ""
    shown = [f"{section}.{c}" if section else c for c in close]
    return " (did you mean " + " or ".join(shown) + "?)"


def _build(cls: type, section: str, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {key: _coerce(value, hints[key], f"{section}.{key}") for key, value in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[{section}] {exc}") from exc


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a TOML/CLI value to the declared type ``tp``, or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a table, e.g. [{name}] (got {value!r})")
        return _build(tp, name, value)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{name} must be one of {', '.join(repr(a) for a in args)} (got {value!r})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{name} must be true or false (got {value!r})")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or _is_integral_float(value)):
            raise ConfigError(f"{name} must be an integer (got {value!r})")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number (got {value!r})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string (got {value!r}); quote it in TOML")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be an array, e.g. [1, 2] (got {value!r})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{name} must have {len(args)} entries (got {len(value)}: {value!r})")
        return tuple(_coerce(v, a, f"{name}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin in (Mapping, dict) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a table, e.g. {{ key = 1 }} (got {value!r})")
        return dict(value)
    raise ConfigError(f"{name}: the config loader does not know the type {tp!r}")


def _is_integral_float(value: Any) -> bool:
    return isinstance(value, float) and value.is_integer()


# ------------------------------------------------------------------------------------------ derived
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
