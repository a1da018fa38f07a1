"""``sb-model sample CHECKPOINT --prompt TEXT``: generate text from a trained SwitchBank GPT.

CHECKPOINT is any of:

- a file saved with ``torch.save({"model": state_dict, "model_config": GPTConfig.to_dict(), ...})``;
- an sb-train checkpoint folder (``.../checkpoints/step_000600``, read from its ``shared.pt``);
- an sb-train run folder or its ``checkpoints`` folder (the newest complete checkpoint is used).

The routing schedule in force when the checkpoint was written (temperature, logit cap, active experts,
attention window) is restored when the checkpoint records it (``"routing"``); sampling itself never adds
Gumbel noise. Text is encoded with sb-data's tokenizers (bytes for a 256-token vocabulary, else GPT-2), or
pass token ids with ``--ids``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sb_model.gpt import GPT
from sb_model.gpt_config import GPTConfig


def find_checkpoint_file(path: str | Path) -> Path:
    """Resolve CHECKPOINT (see the module docstring) to the file that holds the weights."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if (p / "shared.pt").is_file():
        return p / "shared.pt"
    root = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    complete = sorted(
        d for d in root.glob("step_*") if (d / "meta.json").is_file() and (d / "shared.pt").is_file()
    )
    if not complete:
        raise FileNotFoundError(f"{p}: no complete checkpoint (a step_* folder with meta.json and shared.pt)")
    return complete[-1] / "shared.pt"


def _as_config(d: dict[str, Any]) -> GPTConfig:
    return GPTConfig.from_dict(d)


def load_model(path: str | Path, device: str = "cpu") -> tuple[GPT, dict[str, Any]]:
    """The model of a checkpoint (eval mode, routing schedule restored) and the checkpoint's other keys."""
    file = find_checkpoint_file(path)
    blob = torch.load(file, map_location=device, weights_only=False)
    if "model" not in blob:
        raise ValueError(f"{file} has no 'model' entry; it is not a SwitchBank checkpoint")
    cfg_dict = blob.get("model_config") or (blob.get("config") or {}).get("model")
    if cfg_dict is None:
        raise ValueError(f"{file} records no model configuration ('model_config' or config['model'])")
    model = GPT(_as_config(cfg_dict), device=torch.device(device))
    state = {k.removeprefix("_orig_mod."): v for k, v in blob["model"].items()}
    model.load_state_dict(state)
    routing = blob.get("routing") or {}
    if model.bank is not None and routing:
        model.routing_schedule.set_(
            temperature=routing.get("temperature"),
            logit_cap=routing.get("logit_cap"),
            active_experts=routing.get("active_experts"),
            gumbel=False,
        )
    if "window_blocks" in routing:
        model.set_window_blocks(int(routing["window_blocks"]))
    model.eval()
    return model, {k: v for k, v in blob.items() if k != "model"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sb-model", description="SwitchBank model tools.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="generate text from a checkpoint")
    s.add_argument("checkpoint", help="checkpoint file, sb-train checkpoint folder, or run folder")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="\n", help="prompt text (default: a newline)")
    src.add_argument("--ids", help="prompt as comma-separated token ids instead of text")
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--num-samples", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.add_argument("--bpe-dir", help="folder of GPT-2 BPE files (50257-token models); else $SB_DATA_BPE_DIR")
    s.add_argument("--json", action="store_true", help="print the token ids and text as JSON")
    return p


def _tokenizer(vocab_size: int, bpe_dir: str | None):
    try:
        from sb_data.tokenizers import tokenizer_for_header
    except ImportError as exc:  # pragma: no cover - sb-data is in the workspace
        raise RuntimeError("text prompts need sb-data (pip install sb-data); or pass --ids") from exc
    return tokenizer_for_header(vocab_size, bpe_dir=bpe_dir)


def sample_main(args: argparse.Namespace) -> int:
    model, _ = load_model(args.checkpoint, args.device)
    vocab = model.config.vocab_size
    tok = None if args.ids else _tokenizer(vocab, args.bpe_dir)
    if args.ids:
        ids = [int(x) for x in args.ids.split(",") if x.strip()]
    else:
        ids = [int(i) for i in tok.encode(args.prompt)]
    if not ids or max(ids) >= vocab or min(ids) < 0:
        raise ValueError(f"the prompt must be 1+ token ids in [0, {vocab}) (got {ids[:10]})")
    room = model.config.max_seq_len - len(ids)
    if args.max_new_tokens > room:
        raise ValueError(
            f"prompt ({len(ids)} tokens) + --max-new-tokens ({args.max_new_tokens}) exceeds the "
            f"model's max_seq_len={model.config.max_seq_len}; ask for at most {room} new tokens"
        )
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    prompt = torch.tensor([ids] * args.num_samples, device=args.device)
    out = model.generate(prompt, args.max_new_tokens, args.temperature, args.top_k, generator=gen)
    for row in out.tolist():
        new = row[len(ids) :]
        text = tok.decode(row) if tok is not None else None
        if args.json:
            print(json.dumps({"prompt_ids": ids, "new_ids": new, "text": text}))
        else:
            print(text if text is not None else ",".join(map(str, row)))
            print("-" * 40)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return sample_main(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"sb-model: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
