import sys
from pathlib import Path

# --import-mode=importlib does not put test folders on sys.path; run_log_helpers has a package-specific name.
sys.path.insert(0, str(Path(__file__).parent))
