"""W&B names map back to the same columns, the health rule's boundaries, and the format document."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from sb_runlog import TABLES
from sb_runlog.columns import SCALARS_COLUMNS
from sb_runlog.health_thresholds import COLLAPSE_MAX_FRAC, entropy_bounds, is_collapsed
from sb_runlog.wandb_names import column_name, layer_key, scalar_column, scalar_key, split_layer_key

PACKAGE = Path(__file__).resolve().parents[1]
DOC = PACKAGE.parents[1] / "docs" / "log-format.md"


@pytest.mark.parametrize("column", [*SCALARS_COLUMNS, "lr_embed", "lr_shared_ffn", "router_max_frac_max"])
def test_every_scalar_column_maps_to_a_wandb_key_and_back(column):
    key = scalar_key(column)
    if column == "step":
        assert key is None
    elif column == "wall_time":
        assert key is None and scalar_column("_timestamp") == "wall_time"
    else:
        assert key is not None and scalar_column(key) == column


def test_reference_names_and_layer_keys():
    assert scalar_key("time_ms") == "perf/approx_step_time_ms" and scalar_key("lr_muon") == "lr/muon"
    assert scalar_key("router_temp") == "router/temperature" and scalar_key("momentum") == "momentum"
    assert scalar_column("_step") is None and scalar_column("train/step") is None
    assert split_layer_key(layer_key(7, "load_e3")) == (7, "load_e3")
    assert split_layer_key("router/imp_cv2") is None
    assert column_name("Perf/GPU Util%") == "perf_gpu_util" and column_name("9x") == "m_9x"


def test_collapse_rule_boundaries():
    assert is_collapsed(COLLAPSE_MAX_FRAC, 8) and not is_collapsed(0.8999, 8)
    assert is_collapsed(0.3, 1) and not is_collapsed(0.3, 2) and not is_collapsed(None, None)
    low, high = entropy_bounds(8)
    assert low == pytest.approx(0.2 * 2.0794415) and high == pytest.approx(0.95 * 2.0794415)


def test_format_document_lists_every_declared_column_and_names_this_package():
    if not DOC.is_file():
        pytest.skip("docs/log-format.md not in this checkout")
    text = DOC.read_text()
    assert "sb-runlog" in text
    for spec in TABLES.values():
        for name in spec.declared:
            assert f"`{name}`" in text, f"{spec.name}.{name} is not in docs/log-format.md"


def test_package_needs_only_the_standard_library():
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == []
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import sb_runlog, sb_runlog.wandb_names, sb_runlog.health_thresholds\n"
        "top = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(top - set(sys.stdlib_module_names) - {'sb_runlog'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
