"""What a sweep runs: its variants (named sets of ``--set`` overrides), seeds and base configuration, checked.

:func:`parse_vary`, :func:`parse_variant` and :func:`parse_seeds` read the command line of ``sb-train sweep``;
:func:`resolve_variants` resolves every variant's configuration before any run starts, so an unknown key, a
bad value, two variants of one name or two variants with the same configuration are refused at once
(README, "Sweeps"). Nothing here knows a variant's keys: any ``section.key`` the configuration has may vary.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sb_train.config import ConfigError, TrainConfig
from sb_train.config_loading import load_config

__all__ = ["RESERVED_KEYS", "SweepPlan", "Variant", "parse_seeds", "parse_variant", "parse_vary",
           "resolve_variants", "split_top_level"]

# keys the sweep sets itself for every run (the seed, and where the run folder goes)
RESERVED_KEYS = ("run.seed", "run.run_name", "run.out_dir")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Variant:
    """One arm of the comparison: a name (part of its run folders' names) and its ``section.key=value``
    overrides, applied after the sweep's own ``--set`` overrides."""

    name: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class SweepPlan:
    """Everything that decides a sweep's runs; two commands with equal plans are the same sweep."""

    preset: str
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()  # --set, for every variant
    config_files: tuple[str, ...] = ()
    nproc: int = 0  # 0: in this process; N >= 1: torchrun with N processes per run
    out_dir: str = "runs"
    variant_hashes: dict[str, str] = field(default_factory=dict, compare=False)  # filled by resolve_variants

    def identity(self) -> dict[str, Any]:
        """The plan as plain values (what the manifest stores and a resume compares)."""
        return {"preset": self.preset, "config_files": list(self.config_files),
                "overrides": list(self.overrides), "seeds": list(self.seeds), "nproc": self.nproc,
                "variants": [{"name": v.name, "overrides": list(v.overrides)} for v in self.variants]}

    def default_id(self) -> str:
        """``<preset>-<variants>v<seeds>s-<8 hex of the plan>``: the same command gives the same id."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{_safe(self.preset)}-{len(self.variants)}v{len(self.seeds)}s-{digest}"

    def run_id(self, sweep_id: str, variant: Variant, seed: int) -> str:
        return f"{sweep_id}-{variant.name}-s{seed}"

    def run_args(self, variant: Variant, seed: int, run_id: str) -> list[str]:
        """The ``sb-train`` arguments of one run (without ``--resume``)."""
        args = ["--preset", self.preset]
        for path in self.config_files:
            args += ["--config", path]
        for override in (*self.overrides, *variant.overrides, f"run.seed={seed}",
                         f"run.run_name={_toml_string(run_id)}", f"run.out_dir={_toml_string(self.out_dir)}"):
            args += ["--set", override]
        return args


def split_top_level(text: str) -> list[str]:
    """Split at commas that are outside brackets, braces and quotes (``[[0, 1], [2, 2]]`` stays whole)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_vary(text: str) -> list[Variant]:
    """``--vary section.key=v1,v2,...``: one variant per value, named by the value."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise ConfigError(f"--vary {text!r}: expected section.key=value1,value2,... e.g. "
                          "--vary model.ffn=bank,dense")
    out = []
    for value in split_top_level(values):
        if not value:
            raise ConfigError(f"--vary {text!r}: an empty value (two commas in a row?)")
        out.append(Variant(_safe(value.strip("\"'")), (f"{key}={value}",)))
    return out


def parse_variant(text: str) -> Variant:
    """``--variant NAME:section.key=value[,section.key=value ...]``: one named variant of several keys."""
    name, sep, body = text.partition(":")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(f"--variant {text!r}: expected NAME:section.key=value[,section.key=value ...], "
                          "e.g. --variant moe_total:model.ffn=layer_moe,model.layer_moe_match=total")
    check_variant_name(name, f"--variant {text!r}")
    overrides = split_top_level(body) if body.strip() else []
    for item in overrides:
        if "=" not in item or not item.partition("=")[0].strip():
            raise ConfigError(f"--variant {text!r}: {item!r} is not section.key=value")
    return Variant(name, tuple(overrides))


def check_variant_name(name: str, where: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(f"{where}: the variant name {name!r} must be letters, digits, '.', '_' and '-' "
                          "(it is part of the run folders' names)")


def parse_seeds(text: str, *, allow_one: bool = False) -> tuple[int, ...]:
    """``N`` (seeds 0 … N-1) or a list ``0,5,7``. One seed is refused unless ``allow_one``: a confidence
    interval needs at least two runs of each variant."""
    try:
        items = [int(s) for s in split_top_level(text)]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected a count (3 = seeds 0, 1, 2) or a list of seeds "
                          "(0,5,7)") from None
    seeds = tuple(range(items[0])) if len(items) == 1 else tuple(items)
    if len(items) == 1 and items[0] < 1:
        raise ConfigError(f"--seeds {text}: the count must be at least 2 (a confidence interval needs two or "
                          "more seeds of each variant)")
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds {text!r}: the seeds must be distinct whole numbers >= 0")
    if len(seeds) == 1 and not allow_one:
        raise ConfigError(f"--seeds {text}: one seed gives no confidence interval or paired test (they need "
                          "at least 2 seeds of each variant); use --seeds 3, or add --allow-one-seed for a "
                          "quick check without error bars")
    return seeds


def resolve_variants(plan: SweepPlan) -> dict[str, TrainConfig]:
    """Every variant's configuration (seed 0), checked; fills ``plan.variant_hashes``. ConfigError for an
    unknown key or bad value (naming the variant), a reserved key, two variants of one name, or two
    variants whose configurations are the same."""
    if not plan.variants:
        raise ConfigError("the sweep has no variants: give --vary section.key=v1,v2 or --variant NAME:k=v")
    for where, overrides in [("--set", plan.overrides), *((f"variant {v.name!r}", v.overrides)
                                                          for v in plan.variants)]:
        for item in overrides:
            key = item.partition("=")[0].strip()
            if key in RESERVED_KEYS:
                raise ConfigError(f"{where}: {key} is set by the sweep for each run; use --seeds for the "
                                  "seed and --out-dir for the folder")
    seen: dict[str, Variant] = {}
    for v in plan.variants:
        if v.name in seen:
            raise ConfigError(f"two variants are named {v.name!r} ({_show(seen[v.name])} and {_show(v)}); "
                              "name them with --variant NAME:section.key=value")
        seen[v.name] = v
    configs: dict[str, TrainConfig] = {}
    by_hash: dict[str, str] = {}
    for v in plan.variants:
        try:
            cfg = load_config(plan.preset, config_files=list(plan.config_files),
                              overrides=[*plan.overrides, *v.overrides])
        except ConfigError as exc:
            raise ConfigError(f"variant {v.name!r}: {exc}") from None
        digest = cfg.hash()
        if digest in by_hash:
            raise ConfigError(f"variants {by_hash[digest]!r} and {v.name!r} resolve to the same "
                              f"configuration ({_show(seen[by_hash[digest]])} vs {_show(v)}): drop one or "
                              "change its overrides")
        by_hash[digest] = v.name
        configs[v.name] = cfg
        plan.variant_hashes[v.name] = digest
    return configs


def _show(v: Variant) -> str:
    return ",".join(v.overrides) or "no overrides"


def _safe(text: str) -> str:
    """A value as part of a folder name: characters outside [A-Za-z0-9._-] become '-'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "value"
    return cleaned[:60]


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def plan_from_identity(identity: dict[str, Any], out_dir: str) -> SweepPlan:
    """The plan a manifest records (``SweepPlan.identity``), for ``--resume SWEEP_DIR``."""
    try:
        variants = tuple(Variant(str(v["name"]), tuple(str(o) for o in v["overrides"]))
                         for v in identity["variants"])
        return SweepPlan(preset=str(identity["preset"]), variants=variants,
                         seeds=tuple(int(s) for s in identity["seeds"]),
                         overrides=tuple(str(o) for o in identity.get("overrides", ())),
                         config_files=tuple(str(c) for c in identity.get("config_files", ())),
                         nproc=int(identity.get("nproc", 0)), out_dir=out_dir)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"the sweep manifest's plan is incomplete ({exc!r}); it cannot be "
                          "resumed") from None


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The plan entries that differ, e.g. ``preset 'tiny' vs 'smoke'; seeds [0, 1] vs [0, 1, 2]``."""
    diffs = [f"{key} {old.get(key)!r} vs {new.get(key)!r}" for key in sorted(set(old) | set(new))
             if old.get(key) != new.get(key)]
    return "; ".join(diffs)


def names(variants: Sequence[Variant]) -> list[str]:
    return [v.name for v in variants]
