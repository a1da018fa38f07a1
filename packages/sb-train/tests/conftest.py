import sys
from pathlib import Path

import pytest

# --import-mode=importlib does not put test folders on sys.path; train_helpers has a package-specific name.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """One folder of smoke shards shared by every trainer test of the session."""
    from train_helpers import prepare_data

    folder = tmp_path_factory.mktemp("smoke-data")
    prepare_data(folder)
    return folder
