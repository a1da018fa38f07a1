import sys
from pathlib import Path

import pytest
import torch

# --import-mode=importlib does not put test folders on sys.path; the helpers module has a
# package-specific name so it cannot clash with other packages' test helpers.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fp32_products(monkeypatch):
    """Tests compare against fp32 references: pin the default compute dtype, which on some CPUs a timing probe
    chooses (and a loaded machine could tilt). Tests of that choice set or delete the variable themselves."""
    monkeypatch.setenv("SB_MUON_COMPUTE_DTYPE", "float32")
