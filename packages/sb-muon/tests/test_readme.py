"""The README's example runs as written (with a few random batches supplied)."""

import re
from pathlib import Path

import torch


def test_readme_example_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## Example\n\n```python\n(.*?)```", text, re.S).group(1)
    batches = [torch.randint(0, 1000, (2, 17)) for _ in range(3)]
    scope = {"batches": batches}
    exec(compile(code, "README.md", "exec"), scope)
    groups = scope["opt"].param_groups
    assert groups[0]["use_muon"] is True and groups[1]["use_muon"] is False
    head = scope["model"][2].weight
    assert any(p is head for p in groups[1]["params"]), "the README example must send the head to AdamW"
    assert not any(p is head for p in groups[0]["params"])
    assert torch.isfinite(scope["loss"])
