"""CSV fields, whole-line appends and the repair of a half-written last line."""

from __future__ import annotations

import math

import pytest
from sb_runlog import (
    SCALARS,
    CsvAppender,
    complete_end,
    cut_partial_last_line,
    format_value,
    open_table,
    read_header,
    typed_row,
    typed_value,
)


def test_field_text():
    assert [format_value(v) for v in (None, True, 7, 0.1, math.nan, math.inf, -math.inf)] == [
        "",
        "1",
        "7",
        "0.1",
        "nan",
        "inf",
        "-inf",
    ]
    assert format_value(1.0 / 3) == "0.333333333"
    assert float(format_value(1_790_000_000.123456, full_precision=True)) == 1_790_000_000.123456
    assert format_value('say "a,b"') == '"say ""a,b"""'


def test_values_are_typed_by_the_declared_column():
    row = typed_row(SCALARS, {"step": 3.0, "tokens": 256, "loss": 2, "router_clipped": False, "x": None})
    assert row == {"step": 3, "tokens": 256, "loss": 2.0, "router_clipped": 0, "x": None}
    assert isinstance(row["loss"], float) and isinstance(row["step"], int)
    with pytest.raises(ValueError, match="tokens is an integer column"):
        typed_value("tokens", 2.5, "BIGINT")
    with pytest.raises(TypeError, match="loss: expected a number"):
        typed_value("loss", "low", "DOUBLE")
    assert typed_value("domain", "code", "VARCHAR") == "code"


def test_appender_writes_header_once_and_refuses_another(tmp_path):
    path = tmp_path / "scalars.csv"
    table = CsvAppender(path, ["step", "time_ms", "wall_time"])
    table.append({"step": 0, "time_ms": 1.5, "wall_time": 1_790_000_000.25})
    table.close()
    again = CsvAppender(path, ["step", "time_ms", "wall_time"])
    again.append({"step": 1})
    again.close()
    assert path.read_text().splitlines() == ["step,time_ms,wall_time", "0,1.5,1790000000.25", "1,,"]
    with pytest.raises(ValueError, match="new segment"):
        CsvAppender(path, ["step", "time_ms"])
    with pytest.raises(ValueError, match="not in the header"):
        CsvAppender(path, ["step", "time_ms", "wall_time"]).append({"loss": 1.0})


@pytest.mark.parametrize("tail", [b"", b"5,600,17", b"x" * 70_000])
def test_cut_partial_last_line_keeps_every_complete_line(tmp_path, tail):
    path = tmp_path / "t.csv"
    body = b"step,time_ms\n" + b"".join(b"%d,%d\n" % (i, i * 10) for i in range(5000))
    path.write_bytes(body + tail)
    assert complete_end(path) == len(body)
    assert cut_partial_last_line(path) == len(tail)
    assert path.read_bytes() == body


def test_file_without_any_newline_is_cut_to_empty(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"step,ti")
    assert complete_end(path) == 0 and cut_partial_last_line(path) == 7 and path.read_bytes() == b""


def test_open_table_continues_the_same_header_and_segments_a_new_one(tmp_path):
    first = open_table(tmp_path, SCALARS, ["step", "time_ms"])
    first.append({"step": 0, "time_ms": 1.0})
    first.close()
    with open(tmp_path / "scalars.csv", "a") as handle:
        handle.write("1,2")  # killed mid-line
    same = open_table(tmp_path, SCALARS, ["step", "time_ms"])
    same.append({"step": 1, "time_ms": 2.5})
    same.close()
    assert (tmp_path / "scalars.csv").read_text() == "step,time_ms\n0,1\n1,2.5\n"
    other = open_table(tmp_path, SCALARS, ["step", "time_ms", "loss"])
    other.close()
    assert other.path.name == "scalars.1.csv" and read_header(other.path) == ["step", "time_ms", "loss"]
    assert open_table(tmp_path, SCALARS, ["step", "time_ms"]).path.name == "scalars.2.csv"
