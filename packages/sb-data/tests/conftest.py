import sys
from pathlib import Path

# --import-mode=importlib does not put test folders on sys.path; the helper module has a
# package-specific name so it cannot clash with other packages' test helpers.
sys.path.insert(0, str(Path(__file__).parent))
