"""File names, segment order and the header rules of docs/log-format.md §1."""

from __future__ import annotations

import pytest
from sb_runlog import TABLES, LogFormatError, column_types, expert_counts, segment_files, segment_name
from sb_runlog.layout import segment_index


def test_segment_names_round_trip_and_read_in_numeric_order(tmp_path):
    for index in (0, 1, 2, 10):
        assert segment_index("router", segment_name("router", index)) == index
    assert segment_index("router", "scalars.1.csv") is None
    assert segment_index("router", "router.x.csv") is None
    for name in ("router.10.csv", "router.csv", "router.2.csv", "scalars.csv", "router.1.csv"):
        (tmp_path / name).write_text("step,layer\n")
    (tmp_path / "router.3.csv").mkdir()  # not a file: not a segment
    assert [p.name for p in segment_files(tmp_path, "router")] == [
        "router.csv",
        "router.1.csv",
        "router.2.csv",
        "router.10.csv",
    ]


def test_column_types_are_declared_not_sniffed():
    types = column_types(TABLES["router"], ["step", "layer", "load_e0", "load_e1", "feat_w_tok"])
    assert types == {
        "step": "BIGINT",
        "layer": "INTEGER",
        "load_e0": "DOUBLE",
        "load_e1": "DOUBLE",
        "feat_w_tok": "DOUBLE",
    }
    domains = column_types(TABLES["domains"], ["step", "layer", "domain", "expert", "tokens"])
    assert domains["domain"] == "VARCHAR"


@pytest.mark.parametrize(
    ("table", "header", "message"),
    [
        ("scalars", ["step", "loss"], "required"),
        ("scalars", ["step", "time_ms", "step"], "twice"),
        ("scalars", ["step", "time_ms", "Loss"], "form"),
        ("router", ["step", "layer", "load_e0", "load_e2"], "missing load_e1"),
    ],
)
def test_bad_headers_are_refused(table, header, message):
    with pytest.raises(LogFormatError, match=message):
        column_types(TABLES[table], header)


def test_expert_counts_per_family():
    header = ["step", "layer", *(f"load_e{i}" for i in range(3)), *(f"importance_e{i}" for i in range(3))]
    assert expert_counts(header) == {"load": 3, "importance": 3}
