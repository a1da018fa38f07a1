"""Writer throughput: `prepare` with one encoding thread vs every core, on real text, GPT-2 BPE.

Run:  uv run python packages/sb-data/benchmarks/bench_prepare.py [--bpe-dir DIR] [--copies N]

The corpus is the machine's licence texts (or Python's standard library sources), each repeated with a
copy number so that documents differ; the ratio is against one thread, measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sysconfig
import tempfile
import time
from pathlib import Path

from sb_data import prepare


def corpus(folder: Path, copies: int) -> list[Path]:
    licences = Path("/usr/share/common-licenses")
    if licences.is_dir():
        sources = sorted({p.resolve() for p in licences.iterdir() if p.is_file()})
    else:
        sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sources]
    out = folder / "corpus.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for c in range(copies):
            for t in texts:
                f.write(json.dumps({"text": f"copy {c}\n{t}"}) + "\n")
    return [out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bpe-dir", default=os.environ.get("SB_DATA_BPE_DIR", "/work/shared/data/gpt2-bpe"))
    parser.add_argument("--copies", type=int, default=40)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = corpus(Path(tmp), args.copies)
        size = inputs[0].stat().st_size
        rates = {}
        for workers in sorted({1, cores}):
            cpu0 = time.process_time()
            s = prepare(
                inputs, Path(tmp) / f"o{workers}", bpe_dir=args.bpe_dir, workers=workers, progress=False
            )
            busy = (time.process_time() - cpu0) / s.seconds
            rates[workers] = rate = s.tokens_per_second
            name = f"prepare, gpt2, {workers} thread(s)"
            rows.append((name, f"{rate / 1e6:,.2f} M tokens/s", f"{busy:.2f}", f"{rate / rates[1]:.2f}"))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"machine: {cores} cores, Python {platform.python_version()}; {stamp}")
    print(f"input: {size / 1e6:,.1f} MB of JSON Lines ({sum(s.documents.values()):,} documents)")
    print()
    print(f"load average before the run: {load[0]:.1f} (1 min) on {cores} cores")
    print()
    print("| measurement | value | CPU seconds per wall second | ratio |")
    print("|---|---:|---:|---:|")
    for name, value, busy, ratio in rows:
        print(f"| {name} | {value} | {busy} | {ratio} |")


if __name__ == "__main__":
    main()
