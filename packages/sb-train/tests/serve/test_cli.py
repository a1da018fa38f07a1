"""``sb-train serve`` on the command line: one line for a missing extra and for a bad checkpoint path."""

from __future__ import annotations

import importlib.util

from sb_train.cli import main


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sb-train: sb-train serve needs the serving extra (starlette, uvicorn): pip install "
                   "'sb-train[serve]' (in this repository: uv sync)"]


def test_serve_of_a_missing_checkpoint_or_a_bad_port_is_one_line_and_exit_2(capsys, tmp_path):
    assert main(["serve", str(tmp_path), "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "sb-train serve: --port 70000 is not a TCP port; use 1-65535"
    assert main(["serve", str(tmp_path / "nope"), "--port", "8123"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and "Traceback" not in err[0]
