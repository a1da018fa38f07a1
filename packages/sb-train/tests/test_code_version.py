"""code_version reads git state without raising; make_run_id builds unique, format-safe ids."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime

import pytest

from sb_train.code_version import RUN_ID_PATTERN, code_version, make_run_id

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True
    )


@needs_git
def test_clean_and_dirty_repository(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "commit", "-q", "-m", "first")
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert code_version(tmp_path) == {"git_sha": sha, "git_dirty": False}
    assert code_version(tmp_path / "a.txt") == {"git_sha": sha, "git_dirty": False}  # a file's repository
    (tmp_path / "a.txt").write_text("two\n")
    assert code_version(tmp_path) == {"git_sha": sha, "git_dirty": True}
    git(tmp_path, "commit", "-q", "-am", "second")
    (tmp_path / "new.txt").write_text("untracked\n")
    state = code_version(tmp_path)
    assert state["git_dirty"] is True and state["git_sha"] != sha


@needs_git
def test_repository_without_commits(tmp_path):
    git(tmp_path, "init", "-q")
    assert code_version(tmp_path) == {"git_sha": None, "git_dirty": False}


def test_outside_a_repository_and_without_git(tmp_path, monkeypatch):
    outside = tmp_path / "plain"
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # do not find a repository above tmp
    assert code_version(outside) == {"git_sha": None, "git_dirty": False}
    assert code_version(tmp_path / "missing") == {"git_sha": None, "git_dirty": False}
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no git executable at all
    assert code_version() == {"git_sha": None, "git_dirty": False}


def test_run_ids():
    now = datetime(2026, 11, 23, 9, 15, 0, tzinfo=UTC)
    run_id = make_run_id("record", 0, now=now)
    assert run_id.startswith("20261123-091500-record-s0-") and len(run_id.rsplit("-", 1)[1]) == 4
    assert RUN_ID_PATTERN.match(run_id)
    assert make_run_id("record", 0) != make_run_id("record", 0)  # random suffix
    odd = make_run_id("my preset/v2", None, now=now)
    assert odd.startswith("20261123-091500-my-preset-v2-snone-") and RUN_ID_PATTERN.match(odd)
    assert RUN_ID_PATTERN.match(make_run_id("x", -3))
