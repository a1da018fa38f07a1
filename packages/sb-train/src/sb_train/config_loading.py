"""Resolving a TrainConfig: presets, ``--config`` TOML files and ``--set`` overrides,
every key checked (closest matches suggested) and every value coerced to its field's declared type."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from sb_model import GPTConfig
from sb_train.config import SECTIONS, ConfigError, TrainConfig, nested_configs

__all__ = ["load_config", "model_config_from_dict", "preset_names", "preset_text"]


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
        _merge(tree, _parse_toml(_read_config_file(p), str(p)), str(p))
    items = overrides.items() if isinstance(overrides, Mapping) else (_split_override(o) for o in overrides)
    for dotted, raw in items:
        section, _, key = dotted.partition(".")
        _check_section(section, f"--set {dotted}")
        if not key:
            raise ConfigError(f"--set {dotted}: expected section.key=value, e.g. run.seed=1")
        for flat_key, value in _flatten({key: raw}, nested_configs(SECTIONS[section])):
            _check_key(section, flat_key, f"--set {dotted}")
            _set(tree[section], flat_key, value)
    built = {name: _build(cls, name, tree[name]) for name, cls in SECTIONS.items()}
    return TrainConfig(**built, preset=preset)


def model_config_from_dict(values: Mapping[str, Any]) -> GPTConfig:
    """The model section recorded in a checkpoint or run.json (``TrainConfig.to_dict()["model"]``) as the
    :class:`GPTConfig` it was built from (values coerced and checked like a ``[model]`` table)."""
    return _build(GPTConfig, "model", values)


def _read_config_file(p: Path) -> str:
    """The text of a ``--config`` file, or a ConfigError that says what is wrong with the file."""
    if p.is_dir():
        raise ConfigError(f"--config {p}: is a folder, not a TOML file")
    if not p.is_file():
        raise ConfigError(f"--config {p}: no such file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config {p}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"--config {p}: cannot read it ({exc.strerror or exc})") from None


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
        for key, value in _flatten(table, nested_configs(SECTIONS[section])):
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
            out += [(f"{key}.{k}", v) for k, v in _flatten(value, nested_configs(nested[key]))]
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
    nested = nested_configs(cls)
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
    except ArithmeticError as exc:  # a check that divides by a value that is 0 (e.g. model.head_dim)
        zeros = [k for k, v in kwargs.items() if type(v) in (int, float) and v == 0]
        named = [f"{section}.{k} = 0" for k in zeros if not _divides_by(cls, {**kwargs, k: 1})]
        culprit = ", ".join(named) if named else "a setting"
        raise ConfigError(f"[{section}] {culprit} cannot be used ({type(exc).__name__}: {exc}); use a value "
                          ">= 1") from exc


def _divides_by(cls: type, kwargs: Mapping[str, Any]) -> bool:
    """Whether building ``cls`` from ``kwargs`` still fails with a division by zero."""
    try:
        cls(**kwargs)
    except ArithmeticError:
        return True
    except Exception:  # any other complaint: this value was not the zero divisor
        return False
    return False


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
