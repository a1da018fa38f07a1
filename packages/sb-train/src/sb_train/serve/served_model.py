"""The model a server serves: loaded through sb-train's one loading path (:func:`sb_train.sample.load_model`,
weights_only and digest-verified), with its tokenizer and the name clients address it by."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from sb_model import GPT
from sb_train.checkpoint import find_checkpoint
from sb_train.errors import RunError
from sb_train.sample import load_model

EOD_TEXT = "<|endoftext|>"


@dataclass
class ServedModel:
    model: GPT
    name: str  # "<run folder>/<checkpoint folder>", the id of GET /v1/models
    tokenizer: object  # sb_data tokenizer: encode(text) -> ids, decode(ids) -> text

    @property
    def eod(self) -> int:
        return self.model.config.eod_token_id

    def encode_prompt(self, text: str) -> list[int]:
        """A prompt as one document: the end-of-document token (a document's first token, as in training
        data) followed by the text's tokens."""
        return [self.eod, *(int(i) for i in self.tokenizer.encode(text))]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_text(self, token: int) -> str:
        return EOD_TEXT if token == self.eod else self.tokenizer.decode([token])


def load_served_model(
    path: str | os.PathLike[str], device: str = "cpu", bpe_dir: str | None = None
) -> ServedModel:
    """The model of the checkpoint ``path`` names (a run folder, its checkpoints folder or one checkpoint)."""
    from sb_data.tokenizers import tokenizer_for_header

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"--device {device}: this machine has no usable CUDA GPU; use --device cpu")
    checkpoint = find_checkpoint(path)
    model, _ = load_model(checkpoint, device)
    tokenizer = tokenizer_for_header(model.config.vocab_size, bpe_dir=bpe_dir)
    return ServedModel(model, f"{checkpoint.parent.parent.name}/{checkpoint.name}", tokenizer)
