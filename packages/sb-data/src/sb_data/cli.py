"""The ``sb-data`` command line: ``prepare``, ``download`` and ``inspect``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from sb_data._version import __version__
from sb_data.cli_errors import DEBUG_ENV, EXIT_FAILED, EXIT_INTERRUPTED, debug_requested, describe, report
from sb_data.download import DATASETS, download
from sb_data.format import ShardFormatError
from sb_data.inspection import inspect_shard, report_dict
from sb_data.prepare import prepare
from sb_data.shards import find_shards
from sb_data.tokenizers import BPE_DIR_ENV


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sb-data", description="Token shards: write them from text, download them, inspect them."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help=f"show the traceback of an error (or {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "prepare",
        help="tokenize text / .jsonl / .parquet into train and val shards",
        description="Tokenize documents into {prefix}_train_NNNNNN.bin and {prefix}_val_NNNNNN.bin shards.",
    )
    p.add_argument(
        "inputs", nargs="+", help="text files, folders (searched recursively), globs, .jsonl, .parquet"
    )
    p.add_argument("-o", "--out", required=True, help="output folder (created if missing)")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 (default), bytes, or tiktoken:<encoding>")
    p.add_argument(
        "--bpe-dir",
        help=f"folder with GPT-2's vocab.bpe and encoder.json, for offline use (or ${BPE_DIR_ENV})",
    )
    p.add_argument(
        "--shard-size", type=_positive_int, default=100_000_000, help="tokens per shard (default 1e8)"
    )
    val = p.add_mutually_exclusive_group()
    val.add_argument(
        "--val-fraction", type=float, default=0.01, help="fraction of documents for validation (default 0.01)"
    )
    val.add_argument("--val-docs", type=int, help="send the first N documents to validation instead")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation choice (default 0)")
    p.add_argument("--text-field", default="text", help="JSON field / Parquet column holding the text")
    p.add_argument(
        "--domain-field", default="domain", help="JSON field holding a document's domain label (optional)"
    )
    p.add_argument("--prefix", default="data", help="shard name prefix (default 'data')")
    p.add_argument("--workers", type=_positive_int, help="encoding threads (default: all cores)")
    p.add_argument(
        "--header-version", type=int, choices=(1, 2), help="1 = uint16, 2 = uint32 (default: by vocab)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing shards with the same prefix")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    d = sub.add_parser(
        "download",
        help="fetch the pre-tokenised FineWeb GPT-2 shards of the speedrun",
        description="Fetch the val shard and the first N train shards; complete files are skipped, "
        "partial ones resumed.",
    )
    d.add_argument("dataset", choices=sorted(DATASETS), help="dataset name")
    d.add_argument("dir", help="destination folder")
    d.add_argument("--shards", type=int, required=True, help="number of training shards (fineweb10B: 1..103)")
    d.add_argument(
        "--base-url", help="folder URL that holds the files (default: $SB_DATA_BASE_URL or the HF repo)"
    )
    d.add_argument("--no-val", action="store_true", help="skip the validation shard")
    d.add_argument("--retries", type=int, default=3, help="resume attempts per file after errors (default 3)")
    d.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default 60)")
    d.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    i = sub.add_parser(
        "inspect", help="describe and validate shards", description="Validate and describe shards."
    )
    i.add_argument("files", nargs="+", help="shard files, folders (their *.bin files) or glob patterns")
    i.add_argument("--tokens", type=int, default=32, help="how many leading tokens to show (default 32)")
    i.add_argument("--tokenizer", default="auto", help="auto (from the header), gpt2, bytes, none")
    i.add_argument("--bpe-dir", help=f"folder with GPT-2's BPE files (or ${BPE_DIR_ENV})")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    for command in (p, d, i):  # also accepted after the command; SUPPRESS keeps the top-level value
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def _prepare(args: argparse.Namespace) -> int:
    summary = prepare(
        args.inputs,
        args.out,
        tokenizer=args.tokenizer,
        bpe_dir=args.bpe_dir,
        shard_size=args.shard_size,
        val_fraction=0.0 if args.val_docs is not None else args.val_fraction,
        val_docs=args.val_docs,
        seed=args.seed,
        text_field=args.text_field,
        domain_field=args.domain_field,
        prefix=args.prefix,
        workers=args.workers,
        header_version=args.header_version,
        overwrite=args.overwrite,
        progress=False if args.no_progress else None,
    )
    print(summary.format())
    return 0


def _download(args: argparse.Namespace) -> int:
    results = download(
        args.dataset,
        args.shards,
        args.dir,
        base_url=args.base_url,
        include_val=not args.no_val,
        retries=args.retries,
        timeout=args.timeout,
        progress=False if args.no_progress else None,
    )
    for r in results:
        print(f"{r.status:>10}  {r.path}  ({r.bytes_fetched:,} bytes fetched)")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    tokenizer = None if args.tokenizer == "none" else args.tokenizer
    reports, failed = [], 0
    for item in args.files:
        try:
            paths = find_shards(item)  # a folder stands for its *.bin files
        except OSError as exc:
            failed += 1
            print(f"sb-data: error: {describe(exc)[0]}", file=sys.stderr)
            continue
        for path in paths:
            try:
                report = inspect_shard(path, first=args.tokens, tokenizer=tokenizer, bpe_dir=args.bpe_dir)
            except (ShardFormatError, OSError) as exc:  # a bad file does not stop the others
                failed += 1
                print(f"sb-data: error: {describe(exc)[0]}", file=sys.stderr)
                continue
            reports.append(report)
            if not args.json:
                print(report.format())
    if args.json:
        print(json.dumps([report_dict(r) for r in reports], indent=2))
    return EXIT_FAILED if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sb-data``; every error becomes one line on stderr and an exit code (sb_data.cli_errors)."""
    args = build_parser().parse_args(argv)
    debug = debug_requested(args.debug)
    handler = {"prepare": _prepare, "download": _download, "inspect": _inspect}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(
            "sb-data: interrupted; finished files are whole, unfinished ones were not renamed",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Exception as exc:
        return report(exc, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
