"""One optimizer for a whole model: Muon for hidden matrices, AdamW for everything else."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .coefficients import Triple
from .muon import _LOW_PRECISION, Muon
from .options import check_adamw_options


class MuonAdamW(Muon):
    """Muon for the groups with ``use_muon=True``, AdamW for the groups with ``use_muon=False``.

    One ``step()``, one ``state_dict()``, one ``zero_grad()``. Each group says which algorithm it
    uses; which parameters go where is the caller's choice (``sb_muon.split_muon_params`` gives a
    sensible default split)::

        muon, other = split_muon_params(model)
        opt = MuonAdamW([
            {"params": muon, "use_muon": True, "lr": 0.02},
            {"params": other, "use_muon": False, "lr": 3e-4, "betas": (0.9, 0.95)},
        ])

    AdamW groups take lr, betas, eps and weight_decay (decoupled, multiplied by lr and by the
    parameter's optional ``wd_mul``); missing keys come from the ``adamw_*`` constructor
    arguments. Muon groups take the options of :class:`Muon`. AdamW state (exp_avg, exp_avg_sq)
    is fp32 for bf16/fp16 parameters. The AdamW half runs on every rank (it is cheap).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float | torch.Tensor = 0.02,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: Triple | Sequence[Triple] | None = None,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        adamw_lr: float | torch.Tensor = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
        **muon_kwargs: Any,
    ) -> None:
        self._adamw_defaults = dict(lr=adamw_lr, betas=tuple(adamw_betas), eps=adamw_eps,
                                    weight_decay=adamw_weight_decay)
        super().__init__(params, lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
                         adjust_lr_fn, **muon_kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "use_muon" not in param_group:
            raise ValueError("every MuonAdamW param group needs a 'use_muon' key: True for hidden "
                             "matrices, False for embeddings, heads, biases, norms and scalars")
        if not param_group["use_muon"]:
            param_group = {**self._adamw_defaults, **param_group}
        super().add_param_group(param_group)

    def _complete_group(self, group: dict[str, Any]) -> None:
        if not group.get("use_muon", True):
            for key, value in self._adamw_defaults.items():
                group.setdefault(key, value)
        super()._complete_group(group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        attrs = state.get("sb_muon_attrs", {})
        if "_adamw_defaults" in attrs or not hasattr(self, "_adamw_defaults"):
            self._adamw_defaults = attrs.get("_adamw_defaults", dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8,
                                                                     weight_decay=0.0))
        super().__setstate__(state)

    def _validate_other_group(self, group: dict[str, Any]) -> None:
        check_adamw_options(group)

    def _other_step(self, groups: list[dict[str, Any]]) -> None:
        for group in groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "step" not in state:
                    state_dtype = torch.float32 if p.dtype in _LOW_PRECISION else p.dtype
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=state_dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=state_dtype)
                state["step"] += 1
                t = float(state["step"])  # a CPU tensor: no device sync
                m, v = state["exp_avg"], state["exp_avg_sq"]
                g = p.grad.to(m.dtype)
                m.lerp_(g, 1.0 - b1)
                v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                denom = (v.sqrt() / math.sqrt(1.0 - b2 ** t)).add_(eps)
                decay = lr * wd * getattr(p, "wd_mul", 1.0)
                if p.dtype == m.dtype:
                    if decay != 0.0:
                        p.mul_(1.0 - decay)
                    p.addcdiv_(m, denom, value=-lr / (1.0 - b1 ** t))
                else:
                    p32 = p.float()
                    if decay != 0.0:
                        p32.mul_(1.0 - decay)
                    p32.addcdiv_(m, denom, value=-lr / (1.0 - b1 ** t))
                    p.copy_(p32)
