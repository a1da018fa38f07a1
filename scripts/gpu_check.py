"""One GPU check in at most 8 minutes: GPU tests, record-1gpu step time + MFU, bank vs dense, Muon, loader.

    scripts/gpu_check [--out DIR] [--only PART ...] [--budget PART=SECONDS ...] [--dry-run]
    python scripts/gpu_check.py --out DIR     # without uv (a bare GPU machine): it puts packages/*/src on
                                              # sys.path itself, and .gpu_check_deps/ when it is there

Every part runs in its own process with its own time budget; a part that overruns is killed and reported
failed, and the next part still runs. Writes ``report.json`` and ``report.md`` to ``--out`` (default
gpu_check_report/) and exits 1 if any part failed. ``--dry-run`` runs every part at toy size on CPU.
How the figures are counted: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PART_NAMES = ("pytest_gpu", "train", "bank", "muon", "loader")
# seconds per part on the GPU (sum 450 s) and in the dry run; the whole check stops at TOTAL_S
BUDGETS = {"pytest_gpu": 90, "train": 220, "bank": 70, "muon": 45, "loader": 25}
DRY_BUDGETS = {"pytest_gpu": 60, "train": 60, "bank": 40, "muon": 30, "loader": 30}
TOTAL_S = 480


def src_paths() -> list[str]:
    return sorted(str(p) for p in (ROOT / "packages").glob("*/src") if p.is_dir())


# the packages' sources first; .gpu_check_deps (scripts/gpu_check_deps.sh) last, so installed packages win
sys.path[:0] = [*src_paths(), str(Path(__file__).resolve().parent)]
if (ROOT / ".gpu_check_deps").is_dir():
    sys.path.append(str(ROOT / ".gpu_check_deps"))


def gpu_test_files() -> list[str]:
    """Test files that carry the gpu marker (so pytest imports only those)."""
    found = []
    for folder in ("packages", "apps"):
        for f in sorted((ROOT / folder).glob("*/tests/**/test_*.py")):
            if "mark.gpu" in f.read_text(encoding="utf-8", errors="replace"):
                found.append(str(f.relative_to(ROOT)))
    return found


NO_PYTEST = 4  # exit code of the pytest part's process when pytest cannot be imported


def _child(name: str, part_json: Path, pytest_args: list[str], dry_run: bool) -> int:
    os.chdir(ROOT)
    if name == "pytest_gpu":
        try:
            import pytest
        except ImportError:
            print("pytest is not installed", flush=True)
            return NO_PYTEST
        return int(pytest.main(pytest_args))
    import gpu_check_parts

    return gpu_check_parts.run_part(name, part_json, dry_run)


def run_forked(name: str, budget: float, log: Path, part_json: Path, pytest_args: list[str],
               dry_run: bool) -> tuple[int | None, float]:
    """Run one part in a forked process (the parent's imports are shared, CUDA is not touched before the
    fork) in its own session; after ``budget`` seconds kill its process group and return None."""
    sys.stdout.flush()
    sys.stderr.flush()
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the part's process
        rc = 1
        try:
            os.setsid()
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            rc = _child(name, part_json, pytest_args, dry_run)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    deadline = t + max(budget, 0.01)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), time.perf_counter() - t
        if time.perf_counter() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, time.perf_counter() - t
        time.sleep(0.05)


def run_part(name: str, budget: float, out: Path, dry_run: bool) -> dict[str, Any]:
    log = out / f"{name}.log"
    part_json = out / f"{name}.json"
    part_json.unlink(missing_ok=True)
    result: dict[str, Any] = {"budget_s": budget, "log": log.name}
    pytest_args: list[str] = []
    if name == "pytest_gpu":
        pytest_args = ["-m", "gpu", "-q", "-p", "no:cacheprovider", *gpu_test_files()]
        if dry_run:
            pytest_args.append("--collect-only")  # no GPU: prove the command and the markers, run nothing
        result["command"] = "pytest " + " ".join(pytest_args)
    rc, took = run_forked(name, budget, log, part_json, pytest_args, dry_run)
    text = log.read_text(errors="replace") if log.exists() else ""
    if name == "pytest_gpu":
        tail = text.strip().splitlines()[-1:]
        result["summary"] = tail[0] if tail else ""
        ok = rc == 0
        error = None if ok else f"pytest exit {rc} (see {log.name})"
        if rc == NO_PYTEST:
            error = "pytest is not installed: pip install pytest hypothesis, then run again"
    else:
        if part_json.exists():
            result["figures"] = json.loads(part_json.read_text())
        ok = rc == 0 and result.get("figures", {}).get("ok") is True
        part_error = result.get("figures", {}).get("error")
        error = None if ok else part_error or f"exit {rc} (see {log.name})"
    result["seconds"] = round(took, 2)
    if rc is None:
        result.update(status="failed", error=f"over its budget of {budget:g} s: killed (see {log.name})")
    else:
        result["status"] = "ok" if ok else "failed"
        if error:
            result["error"] = error
    return result


def preimport() -> str | None:
    """Import what the parts need once, before any fork (no CUDA call: a CUDA context must not be
    inherited); a failure here is reported by the parts themselves."""
    with contextlib.suppress(ImportError):
        import pytest  # noqa: F401
    try:
        import gpu_check_parts  # noqa: F401
        import gpu_check_train  # noqa: F401
        import torch  # noqa: F401

        import sb_data  # noqa: F401
        import sb_muon  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "host": platform.node(),
                            "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_available"] = torch.cuda.is_available()
        info["cuda_runtime"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            props = torch.cuda.get_device_properties(0)
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    except Exception as exc:
        info["torch"] = f"not importable: {exc}"
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = q.stdout.strip() or None
        info["driver"] = q.stdout.strip().split(",")[-1].strip() if q.returncode == 0 and q.stdout else None
    except (OSError, subprocess.TimeoutExpired):
        info["driver"] = None
    return info


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    kind = "(dry run, CPU, toy sizes) " if report["dry_run"] else ""
    lines = [f"# GPU check {kind}— {report['started']}", "",
             f"GPU: {env.get('gpu', 'none')}; driver {env.get('driver')}; torch {env.get('torch')}; "
             f"triton {env.get('triton')}; CUDA {env.get('cuda_runtime')}; Python {env.get('python')}; "
             f"{env.get('cpus')} CPUs", "",
             f"Result: **{'all parts ok' if report['ok'] else 'FAILED'}** in {report['seconds']} s", "",
             *([f"Import error before the parts: {report['import_error']}", ""]
               if report.get("import_error") else []),
             "| part | status | seconds | budget | note |", "|---|---|---|---|---|"]
    for name, r in report["parts"].items():
        note = (r.get("error") or r.get("summary") or "").replace("|", "/").replace("\n", " ")[:200]
        took, budget = r.get("seconds", ""), r.get("budget_s", "")
        lines.append(f"| {name} | {r['status']} | {took} | {budget} | {note} |")
    for name, r in report["parts"].items():
        figures = {k: v for k, v in r.get("figures", {}).items() if k not in ("traceback", "rows")}
        if not figures and "command" not in r:
            continue
        lines += ["", f"## {name}", ""]
        if "command" in r:
            lines.append(f"- command: `{r['command']}`")
        for key, value in figures.items():
            lines.append(f"- {key}: {value}")
        rows = r.get("figures", {}).get("rows") or []
        if rows:
            cols = list(rows[0])
            lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(row.get(c, "") for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def parse_budgets(items: list[str]) -> dict[str, float]:
    budgets = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in PART_NAMES:
            raise SystemExit(f"gpu_check: --budget {item!r}: expected PART=SECONDS with PART one of "
                             f"{', '.join(PART_NAMES)}")
        try:
            budgets[name] = float(value)
        except ValueError:
            raise SystemExit(f"gpu_check: --budget {item!r}: {value!r} is not a number of seconds") from None
    return budgets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gpu_check_report", help="folder for report.json, report.md and logs")
    ap.add_argument("--dry-run", action="store_true", help="every part at toy size on CPU")
    ap.add_argument("--only", nargs="+", choices=PART_NAMES, help="run only these parts")
    ap.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS",
                    help="override a part's time budget")
    args = ap.parse_args(argv)
    budgets = {**(DRY_BUDGETS if args.dry_run else BUDGETS), **parse_budgets(args.budget)}
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {"started": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC",
                              "dry_run": args.dry_run, "parts": {}}
    import_error = preimport()
    if import_error:
        report["import_error"] = import_error
    for name in args.only or PART_NAMES:
        left = TOTAL_S - (time.perf_counter() - start)
        if left < 5:
            report["parts"][name] = {"status": "failed",
                                     "error": f"not started: the {TOTAL_S} s total is spent"}
            continue
        budget = min(budgets[name], left)
        print(f"[gpu_check] {name} (budget {budget:.0f} s) ...", file=sys.stderr, flush=True)
        r = run_part(name, budget, out, args.dry_run)
        report["parts"][name] = r
        print(f"[gpu_check] {name}: {r['status']} in {r.get('seconds')} s"
              + (f" — {r['error']}" if r.get("error") else ""), file=sys.stderr, flush=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["environment"] = environment()  # after the parts: it initialises CUDA, a fork must not inherit it
    report["ok"] = all(r["status"] == "ok" for r in report["parts"].values())
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(markdown(report))
    print(f"[gpu_check] {'ok' if report['ok'] else 'FAILED'}: {out / 'report.md'}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
