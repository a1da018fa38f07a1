"""``sb-train serve RUN_OR_CHECKPOINT``: parse the command line, load the model, run uvicorn."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from sb_train.cli_errors import debug_requested, run_cli
from sb_train.errors import RunError

INSTALL_HINT = ("sb-train serve needs the serving extra (starlette, uvicorn): pip install 'sb-train[serve]' "
                "(in this repository: uv sync)")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    from sb_train.serve.app import DEFAULT_MAX_BODY_BYTES

    p = argparse.ArgumentParser(prog="sb-train serve", description="Serve a checkpoint over an "
                                "OpenAI-compatible completions API, with per-token routing (see the README).")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="run directory, its checkpoints folder, or one checkpoint directory")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=_positive, default=8, help="rows decoded together (default 8)")
    p.add_argument("--max-queue", type=_positive, default=64,
                   help="choices that may wait for a row; more get 429 + Retry-After (default 64)")
    p.add_argument("--max-body-bytes", type=_positive, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"largest request body; larger ones get 413 (default {DEFAULT_MAX_BODY_BYTES})")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--bpe-dir", help="folder of GPT-2 BPE files (50257-token models); else $SB_DATA_BPE_DIR")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error (or set SB_DEBUG=1)")
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def _serve(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    from sb_train.serve.app import build_app
    from sb_train.serve.served_model import load_served_model

    if not 0 < args.port < 65536:
        raise RunError(f"--port {args.port} is not a TCP port; use 1-65535")
    served = load_served_model(args.checkpoint, args.device, args.bpe_dir)
    app = build_app(served, max_batch=args.max_batch, max_queue=args.max_queue,
                    max_body_bytes=args.max_body_bytes)
    if args.host not in LOOPBACK:
        print(f"sb-train serve: WARNING: binding {args.host} exposes the model to the network without "
              "authentication or TLS; put it behind a proxy that adds both", file=sys.stderr)
    print(f"sb-train serve: {served.name} on http://{args.host}:{args.port} (POST /v1/completions)",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``sb-train serve ...`` (``argv`` without the ``serve`` word)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        print(f"sb-train: {INSTALL_HINT}", file=sys.stderr)
        return 2
    return run_cli("sb-train serve", lambda: _serve(argv), debug=debug_requested(argv))
