"""Where the app reads from: an sb-analysis database, optionally fed from run directories.

Settings come from the arguments after `--` of `streamlit run apps/router-explorer -- --db runs.duckdb`
(or `-- --runs runs/`) and from environment variables; arguments win over the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ENV_DB = "SB_EXPLORER_DB"
ENV_RUNS = "SB_EXPLORER_RUNS"  # os.pathsep-separated list of run directories / directories of runs
FALLBACK_ENV_DB = "SB_ANALYSIS_DB"  # the sb-analysis CLI's own variable
DEFAULT_DB = "runs.duckdb"


class ConfigError(ValueError):
    """The command line or environment does not describe a usable data source."""


@dataclass(frozen=True)
class Settings:
    db: Path
    runs: tuple[Path, ...] = field(default_factory=tuple)
    db_from: str = "default"  # where the db path came from, shown in the sidebar

    @property
    def ingests(self) -> bool:
        return bool(self.runs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamlit run apps/router-explorer --",
        description="SwitchBank router explorer",
        add_help=False,
        exit_on_error=False,
    )
    parser.add_argument("--db", help=f"sb-analysis DuckDB file (default ${ENV_DB}, ${FALLBACK_ENV_DB}, "
                        f"./{DEFAULT_DB})")
    parser.add_argument(
        "--runs",
        nargs="+",
        action="extend",
        default=[],
        help="run directories (or directories of run directories) to ingest into --db first",
    )
    return parser


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from script arguments and the environment (arguments win)."""
    environ = os.environ if environ is None else environ
    try:
        args, unknown = _parser().parse_known_args(list(argv))
    except argparse.ArgumentError as err:
        raise ConfigError(f"bad argument: {err}. Usage: streamlit run apps/router-explorer -- "
                          "[--db FILE] [--runs DIR ...]") from err
    if unknown:
        raise ConfigError(
            f"unknown argument(s) {' '.join(unknown)}; usage: streamlit run apps/router-explorer -- "
            "[--db FILE] [--runs DIR ...]"
        )
    if args.db:
        db, source = args.db, "--db"
    elif environ.get(ENV_DB):
        db, source = environ[ENV_DB], f"${ENV_DB}"
    elif environ.get(FALLBACK_ENV_DB):
        db, source = environ[FALLBACK_ENV_DB], f"${FALLBACK_ENV_DB}"
    else:
        db, source = DEFAULT_DB, "default"
    runs = list(args.runs)
    if not runs and environ.get(ENV_RUNS):
        runs = [p for p in environ[ENV_RUNS].split(os.pathsep) if p]
    missing = [r for r in runs if not Path(r).exists()]
    if missing:
        raise ConfigError(f"run directory not found: {', '.join(missing)} (check --runs / ${ENV_RUNS})")
    return Settings(Path(db).expanduser(), tuple(Path(r).expanduser() for r in runs), source)


LAUNCHERS: set[Path] = set()  # files `streamlit run` starts that serve the page script (serving.py)


def register_launcher(path: str | os.PathLike[str]) -> None:
    """A launcher (streamlit_app.py, _serve.py) whose `-- ARGS` are the page script's arguments."""
    LAUNCHERS.add(Path(path).resolve())


def script_args(argv: Sequence[str], script: str | os.PathLike[str] | None) -> list[str]:
    """The script's own arguments: under `streamlit run`, argv[0] is the script or its launcher;
    elsewhere (AppTest, pytest) argv belongs to another program and is ignored."""
    if script is None or not argv:
        return []
    try:
        first = Path(argv[0]).resolve()
        same = first == Path(script).resolve() or first in LAUNCHERS
    except OSError:
        same = False
    return list(argv[1:]) if same else []
