import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.skipif(not Path("/usr/share/common-licenses").is_dir(), reason="the example reads licence texts")
def test_readme_example_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})
    assert (tmp_path / "data" / "data_summary.json").exists()
