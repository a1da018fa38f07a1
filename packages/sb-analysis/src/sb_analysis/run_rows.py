"""The runs and run_config tables: one row per run (from run.json + status.json, or a W&B run) and its config.

The config is stored flattened, one row per leaf (``{"a": {"b": 1}}`` -> key ``a.b``), so that runs can be
filtered and compared by any config value in SQL.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"a.b.c": value}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value
    return flat


def json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def timestamp(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        return None


def config_rows(run_id: str, config: dict[str, Any]) -> list[tuple]:
    rows = []
    for key, value in flatten_config(config).items():
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        kind = {bool: "bool", int: "int", float: "float", str: "string"}.get(type(value), "json")
        rows.append((run_id, key, json.dumps(value), number, "null" if value is None else kind))
    return rows


def insert_columns(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, tuple[str, list]]) -> None:
    """INSERT many rows in one statement: {column: (duckdb type, values)}."""
    names = list(columns)
    select = ", ".join(f"unnest(?::{typ}[]) AS {name}" for name, (typ, _) in columns.items())
    con.execute(
        f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM (SELECT {select})",
        [values for _, values in columns.values()],
    )


RUN_COLUMN_TYPES = {
    "run_id": "VARCHAR",
    "source": "VARCHAR",
    "path": "VARCHAR",
    "preset": "VARCHAR",
    "config_hash": "VARCHAR",
    "config": "JSON",
    "created_at": "TIMESTAMP",
    "git_sha": "VARCHAR",
    "host": "VARCHAR",
    "world_size": "INTEGER",
    "device": "VARCHAR",
    "num_layers": "INTEGER",
    "num_experts": "INTEGER",
    "top_k": "INTEGER",
    "tokens_per_step": "BIGINT",
    "total_steps": "BIGINT",
    "state": "VARCHAR",
    "status": "JSON",
    "wandb_run_id": "VARCHAR",
    "wandb_project": "VARCHAR",
    "format_version": "INTEGER",
}


# the tables that hold rows of a run (dropped together by --replace)
RUN_DATA_TABLES = ("steps", "router_layers", "router_steps", "domain_load", "ingest_files", "ingest_errors",
                   "run_health", "run_config", "runs")
_EXPECTED = {"VARCHAR": "a string", "INTEGER": "a whole number", "BIGINT": "a whole number"}
# run.json fields -> column (the fields csv_run_row reads from the header's top level)
HEADER_FIELDS = ("preset", "config_hash", "git_sha", "host", "world_size", "device", "num_layers",
                 "num_experts", "top_k", "tokens_per_step", "total_steps", "format_version")


def check_header_fields(header: dict[str, Any], where: str) -> str | None:
    """The first run.json field whose value the runs table cannot hold, as `FILE: field X is V (expected
    T)`; None when all fit."""
    for name in HEADER_FIELDS:
        value = header.get(name)
        if value is None:
            continue
        typ = RUN_COLUMN_TYPES[name]
        if typ == "VARCHAR":
            ok = isinstance(value, str)
        else:
            bound = 2**31 if typ == "INTEGER" else 2**63
            ok = isinstance(value, int) and not isinstance(value, bool) and -bound <= value < bound
        if not ok:
            return f"{where}: field {name!r} is {value!r} (expected {_EXPECTED[typ]}); the run was skipped"
    created = header.get("created_at")
    if created is not None and timestamp(created) is None:
        return f"{where}: field 'created_at' is {created!r} (expected an ISO 8601 time); the run was skipped"
    if header.get("config") is not None and not isinstance(header.get("config"), dict):
        return f"{where}: field 'config' is {header['config']!r} (expected an object); the run was skipped"
    return None


def drop_run_data(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> None:
    """Every row of these runs, in every table (for --replace)."""
    for table in RUN_DATA_TABLES:
        con.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [run_ids])


def store_runs(
    con: duckdb.DuckDBPyConnection,
    rows: list[dict[str, Any]],
    configs: dict[str, dict[str, Any]],
    replace: bool = False,
) -> list[tuple[str, str]]:
    """Replace the runs' metadata and config; returns (run_id, reason) for runs refused.

    A run id already stored from another source, or (CSV runs) from another run folder, is refused: the
    two would be merged row by row. With `replace` the stored run is dropped first (all its rows).
    """
    ids = [row["run_id"] for row in rows]
    existing = dict(
        (r[0], (r[1], r[2]))
        for r in con.execute(
            "SELECT run_id, source, path FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [ids]
        ).fetchall()
    )
    refused = []
    keep = []
    dropped = []
    for row in rows:
        old = existing.get(row["run_id"])
        clash = None
        if old and old[0] != row["source"]:
            clash = (
                f"run id {row['run_id']!r} is already in the database from a {old[0]} source ({old[1]}); "
                "pass --run-id to store this one under another id, or --replace to drop the stored run"
            )
        elif old and row["source"] == "csv" and old[1] != row["path"]:
            clash = (
                f"run id {row['run_id']!r} is already in the database from another folder ({old[1]}); "
                f"{row['path']} was not loaded, so the two runs are not mixed: pass --replace to drop the "
                "stored run and load this folder instead"
            )
        if clash and not replace:
            refused.append((row["run_id"], clash))
            continue
        if clash:
            dropped.append(row["run_id"])
        keep.append(row)
    if dropped:
        drop_run_data(con, dropped)
    if not keep:
        return refused
    ids = [row["run_id"] for row in keep]
    con.execute("DELETE FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
    con.execute("DELETE FROM run_config WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
    insert_columns(
        con, "runs", {name: (typ, [row.get(name) for row in keep]) for name, typ in RUN_COLUMN_TYPES.items()}
    )
    con.execute("UPDATE runs SET ingested_at = now() WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
    leaf_rows = [r for run_id in ids for r in config_rows(run_id, configs.get(run_id) or {})]
    if leaf_rows:
        insert_columns(
            con,
            "run_config",
            {
                name: (typ, [r[i] for r in leaf_rows])
                for i, (name, typ) in enumerate(
                    (
                        ("run_id", "VARCHAR"),
                        ("key", "VARCHAR"),
                        ("value", "JSON"),
                        ("value_num", "DOUBLE"),
                        ("value_type", "VARCHAR"),
                    )
                )
            },
        )
    return refused


def csv_run_row(run_dir: Path, header: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    wandb = header.get("wandb") or {}
    return {
        "run_id": header["run_id"],
        "source": "csv",
        "path": str(run_dir.resolve()),
        "preset": header.get("preset"),
        "config_hash": header.get("config_hash"),
        "config": json_or_none(header.get("config")),
        "created_at": timestamp(header.get("created_at")),
        "git_sha": header.get("git_sha"),
        "host": header.get("host"),
        "world_size": header.get("world_size"),
        "device": header.get("device"),
        "num_layers": header.get("num_layers"),
        "num_experts": header.get("num_experts"),
        "top_k": header.get("top_k"),
        "tokens_per_step": header.get("tokens_per_step"),
        "total_steps": header.get("total_steps"),
        "state": status.get("state", "running"),
        "status": json_or_none(status),
        "wandb_run_id": wandb.get("run_id"),
        "wandb_project": wandb.get("project"),
        "format_version": header.get("format_version"),
    }
