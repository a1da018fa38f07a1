"""RunLogWriter writes a run directory that follows docs/log-format.md (run.json, tables, status.json)."""

from __future__ import annotations

import hashlib
import json

import pytest
from sb_runlog import (
    LogFormatError,
    RunLogWriter,
    config_hash,
    new_run_header,
    read_run_header,
    read_status,
)

SCALARS = ["step", "time_ms", "wall_time", "tokens", "loss", "val_loss"]
ROUTER = ["step", "layer", "imp_cv2", "load_e0", "load_e1"]


def header(run_id="r1", **overrides):
    base = dict(num_layers=2, num_experts=2, top_k=1, tokens_per_step=64, total_steps=3)
    base.update(overrides)
    return new_run_header(run_id, "smoke", {"seed": 0, "model": {"num_layers": 2}}, **base)


def test_run_directory_round_trip(tmp_path):
    writer = RunLogWriter(tmp_path / "run", header(), scalar_columns=SCALARS, router_columns=ROUTER)
    scalars, router = writer.log_step(
        {"step": 0, "time_ms": 10, "wall_time": 1_790_000_000.5, "tokens": 64.0, "loss": 3},
        [{"step": 0, "layer": layer, "imp_cv2": 0.1, "load_e0": 0.5, "load_e1": 0.5} for layer in (0, 1)],
    )
    assert scalars["tokens"] == 64 and isinstance(scalars["time_ms"], float) and router[1]["layer"] == 1
    writer.write_status("finished", 0, 10.0, final_val_loss=None)
    writer.close()
    run_dir = tmp_path / "run"
    assert read_run_header(run_dir)["run_id"] == "r1"
    assert read_status(run_dir)["state"] == "finished"
    assert (run_dir / "scalars.csv").read_text().splitlines() == [
        ",".join(SCALARS),
        "0,10,1790000000.5,64,3,",
    ]
    assert len((run_dir / "router.csv").read_text().splitlines()) == 3
    assert not (run_dir / "domains.csv").exists()


def test_a_bad_value_or_column_writes_nothing(tmp_path):
    writer = RunLogWriter(tmp_path, header(), scalar_columns=SCALARS, router_columns=ROUTER)
    good_layer = {"step": 0, "layer": 0, "load_e0": 1.0, "load_e1": 0.0}
    with pytest.raises(ValueError, match="integer column"):
        writer.log_step({"step": 0, "time_ms": 1.0, "tokens": 1.5}, [good_layer])
    with pytest.raises(ValueError, match=r"not in the scalars.csv header: \['lr_x'\]"):
        writer.log_step({"step": 0, "time_ms": 1.0, "lr_x": 1.0}, [good_layer])
    with pytest.raises(ValueError, match="no columns for it"):
        writer.log_step({"step": 0, "time_ms": 1.0}, domain_rows=[{"step": 0}])
    writer.close()
    assert (tmp_path / "scalars.csv").read_text() == ",".join(SCALARS) + "\n"
    assert not (tmp_path / "router.csv").exists()


def test_headers_are_checked_when_the_writer_is_built(tmp_path):
    with pytest.raises(LogFormatError, match="required"):
        RunLogWriter(tmp_path, header(), scalar_columns=["step", "loss"])
    with pytest.raises(LogFormatError, match="run_id"):
        header(run_id="bad id")


def test_config_hash_is_the_documented_formula():
    config = {"b": [1, 2], "a": {"x": 0.5}}
    canonical = '{"a":{"x":0.5},"b":[1,2]}'
    assert config_hash(config) == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert header()["config_hash"] == config_hash({"seed": 0, "model": {"num_layers": 2}})


def test_reader_refuses_other_formats_and_versions(tmp_path):
    RunLogWriter(tmp_path, header(), scalar_columns=SCALARS).close()
    data = json.loads((tmp_path / "run.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps({**data, "format_version": 2}))
    with pytest.raises(LogFormatError, match="format_version 2 is not supported"):
        read_run_header(tmp_path)
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(LogFormatError, match="not valid JSON"):
        read_run_header(tmp_path)
    with pytest.raises(LogFormatError, match=r"no run\.json"):
        read_run_header(tmp_path / "missing")
    assert read_status(tmp_path / "missing") == {"state": "running"}
    with pytest.raises(ValueError, match="status state"):
        RunLogWriter(tmp_path / "w", header(), scalar_columns=SCALARS).write_status("done", 0, 0.0)
