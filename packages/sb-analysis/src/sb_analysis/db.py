"""The DuckDB file: base tables, connections for readers and the atomic-replace writer.

Writers never hold a lock on the database file that readers open: `writable_copy` copies the file, the
ingest writes into the copy, and the copy is renamed over the original when the ingest succeeded. A
reader that opens the file read-only therefore never meets a writer's lock (and an ingest that fails
leaves the original untouched). A cross-process lock file serializes concurrent writers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
from sb_runlog.columns import ROUTER_COLUMNS, SCALARS_COLUMNS

from .derive import create_router_tables
from .sandbox import DatabaseBusyError, _is_lock_error

DEFAULT_DB = "runs.duckdb"
# the database table each run-directory table is loaded into
_LOCK_HOLDER = re.compile(r"held in (\S+) \(PID (\d+)\)")
DB_TABLES = {"scalars": "steps", "router": "router_layers", "domains": "domain_load"}
SCHEMA_VERSION = 1

BASE_TABLES = f"""
CREATE TABLE IF NOT EXISTS sb_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    source VARCHAR,            -- 'csv', 'wandb-offline' or 'wandb-api'
    path VARCHAR,              -- run directory, .wandb file, or entity/project/run_id
    preset VARCHAR,
    config_hash VARCHAR,
    config JSON,
    created_at TIMESTAMP,
    git_sha VARCHAR,
    host VARCHAR,
    world_size INTEGER,
    device VARCHAR,
    num_layers INTEGER,
    num_experts INTEGER,
    top_k INTEGER,
    tokens_per_step BIGINT,
    total_steps BIGINT,
    state VARCHAR,             -- running / finished / aborted / failed
    status JSON,
    wandb_run_id VARCHAR,
    wandb_project VARCHAR,
    format_version INTEGER,
    ingested_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS run_config (
    run_id VARCHAR, key VARCHAR, value JSON, value_num DOUBLE, value_type VARCHAR
);
CREATE TABLE IF NOT EXISTS steps (
    run_id VARCHAR, {", ".join(f"{name} {typ}" for name, typ in SCALARS_COLUMNS.items())}
);
CREATE TABLE IF NOT EXISTS router_layers (
    run_id VARCHAR, {", ".join(f"{name} {typ}" for name, typ in ROUTER_COLUMNS.items())},
    load DOUBLE[], demand DOUBLE[], importance DOUBLE[]
);
CREATE TABLE IF NOT EXISTS domain_load (
    run_id VARCHAR, step BIGINT, layer INTEGER, domain VARCHAR, expert INTEGER, tokens BIGINT
);
CREATE TABLE IF NOT EXISTS ingest_files (
    run_id VARCHAR, path VARCHAR, kind VARCHAR, header VARCHAR, bytes_done BIGINT, lines_done BIGINT,
    rows_loaded BIGINT, file_size BIGINT, updated_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS ingest_errors (
    run_id VARCHAR, path VARCHAR, line BIGINT, column_name VARCHAR, error_type VARCHAR, message VARCHAR,
    raw_line VARCHAR, ingested_at TIMESTAMP
);
"""


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(BASE_TABLES)
    create_router_tables(con)
    con.execute("INSERT OR REPLACE INTO sb_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])


@contextlib.contextmanager
def writer_lock(db: Path, timeout_s: float = 600.0) -> Iterator[None]:
    """Cross-process exclusive lock next to the database (one ingest at a time)."""
    lock_path = db.with_name(db.name + ".ingest.lock")
    with open(lock_path, "w") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DatabaseBusyError(f"another ingest holds {lock_path}") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def writable_copy(
    db: str | os.PathLike[str], in_place: bool = False, lock_wait_s: float = 30.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection whose changes replace `db` atomically when the block exits cleanly.

    With in_place=True the file itself is opened read-write (faster for big files, but readers wait, and
    it waits up to `lock_wait_s` for readers that hold the file open).
    """
    path = Path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(path):
        if in_place:
            con = _connect_in_place(path, lock_wait_s)
            try:
                create_schema(con)
                yield con
                con.execute("CHECKPOINT")
            finally:
                con.close()
            return
        tmp = path.with_name(f".{path.name}.ingest-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        if path.is_file():
            shutil.copyfile(path, tmp)
            wal = Path(str(path) + ".wal")
            if wal.is_file():
                shutil.copyfile(wal, str(tmp) + ".wal")
        con = duckdb.connect(str(tmp))
        try:
            create_schema(con)
            yield con
            con.execute("CHECKPOINT")
            con.close()
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(Exception):
                con.close()
            tmp.unlink(missing_ok=True)
            Path(str(tmp) + ".wal").unlink(missing_ok=True)


def _connect_in_place(path: Path, lock_wait_s: float) -> duckdb.DuckDBPyConnection:
    """The database file itself, read-write; waits while readers (explorer, shell) hold it open."""
    deadline = time.monotonic() + lock_wait_s
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as err:
            if not _is_lock_error(err):
                raise
            if time.monotonic() > deadline:
                holder = _LOCK_HOLDER.search(str(err))
                who = f" ({holder.group(1)} pid {holder.group(2)})" if holder else ""
                raise DatabaseBusyError(
                    f"{path} is held open by a reader{who} for more than {lock_wait_s:g} s: close that "
                    "reader (the router explorer or an `sb-analysis shell`), or ingest without --in-place "
                    "(the default writes a copy and renames it, which readers never block)"
                ) from err
            time.sleep(0.2)
