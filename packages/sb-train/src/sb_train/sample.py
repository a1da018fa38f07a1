"""``sb-train sample RUN_OR_CHECKPOINT --prompt TEXT``: generate text from a trained SwitchBank GPT.

RUN_OR_CHECKPOINT is a run directory, its ``checkpoints`` folder (the newest complete checkpoint is used) or
one checkpoint directory (``.../checkpoints/step_000600``). The weights are found and read through
:mod:`sb_train.checkpoint` (``torch.load(weights_only=True)``: a checkpoint cannot run code). The schedule
values in force when the checkpoint was written (temperature, logit cap, live experts, attention window)
are restored; sampling never adds Gumbel noise. Text is encoded with sb-data's tokenizers (bytes for a
256-token vocabulary, else GPT-2), or pass token ids with ``--ids``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

from sb_model import GPT
from sb_train.checkpoint import CheckpointError, find_checkpoint, load_shared_state
from sb_train.cli_errors import debug_requested, run_cli
from sb_train.config_loading import model_config_from_dict
from sb_train.errors import RunError

__all__ = ["build_parser", "load_model", "main"]


def load_model(path: str | os.PathLike[str], device: str = "cpu") -> tuple[GPT, dict[str, Any]]:
    """The model of the checkpoint ``path`` names (eval mode, schedule values restored) and the
    checkpoint's other shared entries."""
    checkpoint = find_checkpoint(path)
    shared = load_shared_state(checkpoint, map_location=device)
    try:
        model = GPT(model_config_from_dict(shared["config"]["model"]), device=torch.device(device))
        model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in shared["model"].items()})
    except (KeyError, TypeError, AttributeError, RuntimeError) as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{checkpoint} does not hold the model of an sb-train run "
                              f"({type(err).__name__}: {detail})") from err
    routing = shared.get("routing") or {}
    if model.bank is not None and routing:
        model.routing_schedule.set_(temperature=routing.get("temperature"),
                                    logit_cap=routing.get("logit_cap"),
                                    active_experts=routing.get("active_experts"), gumbel=False)
    if "window_blocks" in routing:
        model.set_window_blocks(int(routing["window_blocks"]))
    model.eval()
    return model, {k: v for k, v in shared.items() if k != "model"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sb-train sample", description="Generate text from a checkpoint.")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="run directory, its checkpoints folder, or one checkpoint directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="\n", help="prompt text (default: a newline)")
    src.add_argument("--ids", help="prompt as comma-separated token ids instead of text")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bpe-dir", help="folder of GPT-2 BPE files (50257-token models); else $SB_DATA_BPE_DIR")
    p.add_argument("--json", action="store_true", help="print the token ids and text as JSON")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error (or set SB_DEBUG=1)")
    return p


def _sample(args: argparse.Namespace) -> int:
    from sb_data.tokenizers import tokenizer_for_header

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"--device {args.device}: this machine has no usable CUDA GPU; use --device cpu")
    model, _ = load_model(args.checkpoint, args.device)
    vocab = model.config.vocab_size
    tok = None if args.ids else tokenizer_for_header(vocab, bpe_dir=args.bpe_dir)
    if args.ids:
        ids = [int(x) for x in args.ids.split(",") if x.strip()]
    else:
        ids = [int(i) for i in tok.encode(args.prompt)]
    if not ids or max(ids) >= vocab or min(ids) < 0:
        raise ValueError(f"the prompt must be 1+ token ids in [0, {vocab}) (got {ids[:10]})")
    room = model.config.max_seq_len - len(ids)
    if args.max_new_tokens > room:
        raise ValueError(f"prompt ({len(ids)} tokens) + --max-new-tokens ({args.max_new_tokens}) exceeds the "
                         f"model's max_seq_len={model.config.max_seq_len}; ask for at most {room} new tokens")
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    prompt = torch.tensor([ids] * args.num_samples, device=args.device)
    out = model.generate(prompt, args.max_new_tokens, args.temperature, args.top_k, generator=gen)
    for row in out.tolist():
        text = tok.decode(row) if tok is not None else None
        if args.json:
            print(json.dumps({"prompt_ids": ids, "new_ids": row[len(ids):], "text": text}))
        else:
            print(text if text is not None else ",".join(map(str, row)))
            print("-" * 40)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``sb-train sample ...`` (``argv`` without the ``sample`` word); bad input is one line and exit code 2
    (1 when the file system refuses), see :mod:`sb_train.cli_errors`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("sb-train sample", lambda: _sample(build_parser().parse_args(argv)),
                   debug=debug_requested(argv))
