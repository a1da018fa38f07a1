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
