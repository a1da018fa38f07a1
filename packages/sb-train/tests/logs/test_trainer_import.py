"""Importing the trainer loads no analysis stack: the log schema comes from sb-runlog (standard library)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["sb_train.trainer", "sb_train.cli", "sb_train.logs"])
def test_importing_the_trainer_loads_neither_duckdb_nor_polars(module):
    code = (
        f"import sys, {module}\n"
        "print(sorted(m for m in ('duckdb', 'polars', 'pyarrow', 'sb_analysis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"{module} loads {out.stdout.strip()}"
