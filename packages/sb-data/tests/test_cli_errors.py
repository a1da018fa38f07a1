"""The sb-data command answers bad input with one line and an exit code, never a traceback (unless
--debug), and a failed write never leaves a partial shard."""

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from sbdata_helpers import real_text_files

import sb_data.atomic
import sb_data.output_checks
from sb_data.cli import main
from sb_data.format import read_header, read_tokens, write_shard
from sb_data.prepare import prepare

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    """The single error line; fails when there is a traceback or more than one line."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sb-data: error: ")
    return lines[0]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def text(tmp_path) -> str:
    path = tmp_path / "doc.txt"
    path.write_text("one short document\n", encoding="utf-8")
    return str(path)


def prepare_args(text: str, out: Path, *extra: str) -> list[str]:
    return [
        "prepare",
        text,
        "-o",
        str(out),
        "--tokenizer",
        "bytes",
        "--val-docs",
        "0",
        "--no-progress",
        *extra,
    ]


# -- inspect ---------------------------------------------------------------------------------------------


def test_inspect_a_folder_inspects_its_shards(tmp_path, capsys):
    for i in range(2):
        write_shard(tmp_path / f"s_{i}.bin", np.arange(5 + i, dtype=np.uint16), vocab_size=256, eot_id=0)
    (tmp_path / "notes.txt").write_text("not a shard")
    code, out, err = run(capsys, "inspect", str(tmp_path), "--tokenizer", "none")
    assert code == 0 and err == ""
    assert out.count("header:") == 2 and "s_0.bin" in out and "s_1.bin" in out and "notes.txt" not in out


def test_inspect_a_folder_without_shards_says_so(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run(capsys, "inspect", str(empty))
    line = one_line(err)
    assert code == 1 and out == ""
    assert f"the folder '{empty}' holds no *.bin shard files" in line and "sb-data prepare" in line


def test_inspect_reports_each_bad_item_and_goes_on(tmp_path, capsys):
    good = tmp_path / "good.bin"
    write_shard(good, np.arange(4, dtype=np.uint16))
    text = tmp_path / "a.txt"
    text.write_text("hello")
    code, out, err = run(
        capsys, "inspect", str(tmp_path / "missing.bin"), str(text), str(good), "--tokenizer", "none"
    )
    assert code == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "missing.bin" in lines[0] and f"{text}: truncated" in lines[1]
    assert str(good) in out


# -- prepare: the output folder and the prefix -------------------------------------------------------------


@pytest.mark.parametrize("under", [False, True])
def test_output_folder_that_is_or_lies_under_a_file_is_refused(tmp_path, capsys, text, under):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    out = blocker / "shards" if under else blocker
    code, _, err = run(capsys, *prepare_args(text, out))
    line = one_line(err)
    assert code == 2
    assert f"output folder {out}" in line and "is a file" in line and "choose another -o" in line
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize(
    "prefix", ["../escape", "/tmp/sb-data-abs", "sub/dir", "..", ".", ".hidden", "*", "a b", ""]
)
def test_a_prefix_that_could_leave_the_output_folder_is_refused(tmp_path, capsys, text, prefix):
    out = tmp_path / "out"
    before = files_under(tmp_path)
    code, _, err = run(capsys, *prepare_args(text, out, "--prefix", prefix))
    line = one_line(err)
    assert code == 2 and "--prefix" in line and ("change -o" in line or "must not be empty" in line)
    assert files_under(tmp_path) == before  # nothing written, not even the output folder
    assert not Path("/tmp/sb-data-abs_summary.json").exists()


def test_a_glob_prefix_with_overwrite_cannot_delete_other_shards(tmp_path, text):
    out = tmp_path / "out"
    kept = prepare([text], out, tokenizer="bytes", val_docs=0, prefix="mine", progress=False)
    with pytest.raises(ValueError, match="not a plain name"):
        prepare([text], out, tokenizer="bytes", val_docs=0, prefix="*", overwrite=True, progress=False)
    assert all(Path(p).exists() for p in kept.shards["train"]) and (out / "mine_summary.json").exists()


def test_plain_prefixes_are_accepted(tmp_path, text):
    for prefix in ("fineweb-edu_v2.1", "données", "_x"):
        s = prepare([text], tmp_path / "o", tokenizer="bytes", val_docs=0, prefix=prefix, progress=False)
        assert [Path(p).parent for p in s.shards["train"]] == [tmp_path / "o"]


# -- prepare: the disk fails -------------------------------------------------------------------------------


@pytest.mark.skipif(IS_ROOT, reason="root ignores a folder's write permission")
def test_read_only_output_folder_fails_before_reading_input(tmp_path, capsys, text):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, _, err = run(capsys, *prepare_args(text, out))
    finally:
        out.chmod(0o755)
    line = one_line(err)
    assert code == 1 and f"{out}: permission denied" in line
    assert files_under(out) == []


class _Disk:
    """Stands in for ``open`` in sb-data's writing modules: the disk is read-only, or fills up while the
    ``full_at``-th file is being written, after ``room`` bytes of it (a real full disk fails part-way)."""

    def __init__(self, *, read_only: bool = False, full_at: int | None = None, room: int = 1124) -> None:
        self.read_only, self.full_at, self.room, self.opened = read_only, full_at, room, 0

    def __call__(self, path, mode="r", *args, **kwargs):
        if "r" in mode:
            return open(path, mode, *args, **kwargs)
        if self.read_only:
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        self.opened += 1
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115 (the caller's `with` closes it)
        return _FillsUp(f, self.room) if self.opened == self.full_at else f


class _FillsUp:
    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self.room:
            self.f.write(data[: self.room])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def install(monkeypatch, disk: _Disk) -> None:
    for module in (sb_data.atomic, sb_data.output_checks):
        monkeypatch.setattr(module, "open", disk, raising=False)


def test_read_only_file_system_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, text):
    out = tmp_path / "out"
    out.mkdir()
    install(monkeypatch, _Disk(read_only=True))
    code, _, err = run(capsys, *prepare_args(text, out))
    line = one_line(err)
    assert code == 1
    assert line == f"sb-data: error: {out}: read-only file system; write to a folder on a writable disk"
    assert files_under(out) == []


@pytest.mark.parametrize("debug", ["", "--debug", "env"])
def test_full_disk_during_prepare_leaves_only_whole_shards(tmp_path, capsys, monkeypatch, debug):
    inputs = [str(p) for p in real_text_files(3)]
    out = tmp_path / "out"
    disk = _Disk(full_at=3)  # the write probe, shard 0, then shard 1 runs out of space
    install(monkeypatch, disk)
    monkeypatch.delenv("SB_DEBUG", raising=False)
    if debug == "env":
        monkeypatch.setenv("SB_DEBUG", "1")
    flags = ["--debug"] if debug == "--debug" else []
    args = prepare_args(inputs[0], out, "--shard-size", "2000", *flags)
    code = main([*args[:2], *inputs[1:], *args[2:]])
    err = capsys.readouterr().err
    assert code == 1
    last = err.strip().splitlines()[-1]
    shard1 = out / "data_train_000001.bin"
    assert last.startswith(f"sb-data: error: {shard1}: no space left on the device; free some space")
    assert "1 shard(s) finished before this error are whole" in last and "--overwrite" in last
    if debug:
        assert "Traceback" in err and "OSError" in err
    else:
        one_line(err)
    assert files_under(out) == ["data_train_000000.bin"]  # no half shard, no temporary file, no summary
    assert (
        read_tokens(out / "data_train_000000.bin").size
        == read_header(out / "data_train_000000.bin").num_tokens
    )


def test_full_disk_while_writing_the_summary_leaves_no_summary(tmp_path, monkeypatch, text):
    out = tmp_path / "out"
    install(monkeypatch, _Disk(full_at=3, room=10))  # probe, the only shard, then the summary
    with pytest.raises(OSError, match="No space left") as caught:
        prepare([text], out, tokenizer="bytes", val_docs=0, progress=False)
    assert caught.value.filename == str(out / "data_summary.json")
    assert files_under(out) == ["data_train_000000.bin"]


# -- the handler itself ----------------------------------------------------------------------------------


def test_not_utf8_input_is_one_line(tmp_path, capsys):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café".encode("latin-1"))
    code, _, err = run(capsys, *prepare_args(str(latin), tmp_path / "out"))
    line = one_line(err)
    assert code == 1 and f"{latin}: not UTF-8 text" in line and "convert it to UTF-8" in line


def test_a_bug_is_one_line_that_points_at_debug(tmp_path, capsys, monkeypatch, text):
    def broken(*args, **kwargs):
        raise TypeError("unexpected keyword")

    monkeypatch.setattr("sb_data.cli.prepare", broken)
    monkeypatch.delenv("SB_DEBUG", raising=False)
    code, _, err = run(capsys, *prepare_args(text, tmp_path / "out"))
    line = one_line(err)
    assert code == 1 and "internal error (TypeError: unexpected keyword)" in line and "--debug" in line
    code, _, err = run(capsys, "--debug", *prepare_args(text, tmp_path / "out"))
    assert code == 1 and "Traceback" in err and 'raise TypeError("unexpected keyword")' in err


def test_bad_option_values_are_usage_errors(tmp_path, capsys, text):
    code, _, err = run(capsys, "prepare", text, "-o", str(tmp_path / "out"), "--val-fraction", "1.5")
    assert code == 2 and "val fraction must be in [0, 1)" in one_line(err)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as caught:
        main(prepare_args(text, tmp_path / "out", "--shard-size", "lots"))
    assert caught.value.code == 2 and "not a whole number: 'lots'" in capsys.readouterr().err
