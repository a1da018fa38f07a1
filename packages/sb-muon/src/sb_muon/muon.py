"""The Muon optimizer: momentum, then an orthogonalized (polar-factor) step per weight matrix."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from .coefficients import Triple
from .distributed import assign_owners, share_results, world_and_rank
from .hardware import compute_choice
from .idle import active_slices, validate_skip_idle
from .options import check_lr, check_muon_options, translate_torch_names
from .orthogonalize import DEFAULT_METHOD, Method, orthogonalize
from .params import describe, looks_like_embedding_or_head, normalize_params
from .power_iter import power_iter_generator, validate_power_iter
from .scaling import LrScale, lr_scale_factor

NONFINITE_POLICIES = ("raise", "skip", "ignore")
_LOW_PRECISION = (torch.bfloat16, torch.float16)
STATE_VERSION = 1
#: The per-group defaults of the constructor (filled into groups of older pickles and foreign state dicts).
MUON_DEFAULTS: dict[str, Any] = dict(
    lr=0.02, weight_decay=0.0, momentum=0.95, nesterov=True, eps=1e-7, ns_steps=5, method=DEFAULT_METHOD,
    lr_scale="original", stacked=False, compute_dtype=None, master_weights=False, use_triton=False,
    skip_idle_slices=False, power_iter_start="constant", power_iter_seed=0)


def _matrix_dims(p: torch.Tensor, stacked: bool) -> tuple[int, int]:
    """(rows, cols) of the matrix (or of each stacked slice) that Muon orthogonalizes."""
    if stacked:
        return p.shape[-2], p.shape[-1]
    return p.shape[0], math.prod(p.shape[1:])


def _as_matrices(t: torch.Tensor, stacked: bool) -> torch.Tensor:
    """View a parameter-shaped tensor as a matrix (conv: out x in*kh*kw) or a stack of matrices."""
    if stacked or t.ndim == 2:
        return t
    return t.reshape(t.shape[0], -1)


class Muon(torch.optim.Optimizer):
    """Muon: MomentUm Orthogonalized by Newton–Schulz.

    For each weight matrix W with gradient G (per step):

        B <- μ B + (1 - μ) G                      momentum (EMA form, kept in fp32)
        D  = (1 - μ) G + μ B   if nesterov else B
        O  = orthogonalize(D)                     ≈ polar factor U Vᵀ of D
        W <- W (1 - lr · wd · wd_mul) - lr · s(rows, cols) · O

    The positional arguments, their names and their meanings are torch.optim.Muon's (lr,
    weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn), so it is a
    one-line swap; the defaults of lr, weight_decay and ns_coefficients differ (see the README,
    "Migrating from torch.optim.Muon").

    Args:
        params: tensors, (name, tensor) pairs (pass `model.named_parameters()` for error messages
            that name parameters) or param-group dicts. Every parameter must have >= 2 dims.
        lr: learning rate (before the shape factor s): a number or a 1-element tensor.
        weight_decay: decoupled weight decay, multiplied by lr and by the parameter's optional
            ``wd_mul`` attribute.
        momentum: μ in [0, 1).
        nesterov: use the Nesterov look-ahead direction.
        ns_coefficients: torch.optim.Muon's name for a custom schedule: one (a, b, c) triple used at
            every step, or a list of triples, one per step. Default None: ``method``.
        eps: added to the Frobenius norm in the normalization.
        ns_steps: Newton–Schulz iterations.
        adjust_lr_fn: torch.optim.Muon's name for the shape factor: None or "original",
            "match_rms_adamw", "spectral_unclamped" (same meanings). Or use ``lr_scale``.
        method: orthogonalization method (see :func:`sb_muon.orthogonalize`); default "tuned5".
        lr_scale: shape factor s: "original" (sqrt(max(1, rows/cols)), the default),
            "match_rms_adamw" (0.2·sqrt(max(rows, cols))), "spectral" (= "spectral_unclamped"),
            "none", a float, or callable(rows, cols).
        stacked: treat the leading dims of >2-D parameters as a stack of independent matrices (MoE
            experts, fused QKV) instead of flattening them like conv kernels.
        compute_dtype: dtype of the Newton–Schulz products; default None: what the device computes
            fastest (bf16 on CUDA and on CPUs with native bf16 matrix units, else fp32; decided once
            per process, overridable with SB_MUON_COMPUTE_DTYPE; see :mod:`sb_muon.hardware`).
        master_weights: for bf16/fp16 parameters, keep an fp32 copy in the state and update that,
            so that steps smaller than the parameter's precision are not lost.
        use_triton: use the Triton Gram-matrix kernel for the symmetric products (CUDA).
        nonfinite: what to do when a gradient holds NaN/inf: "raise" (default; FloatingPointError
            naming the parameters), "skip" (leave params and state unchanged and count the step in
            ``skipped_steps``), or "ignore" (no check; no host sync). The check costs one host sync
            per step.
        distributed: when torch.distributed is initialised (and this is True), each rank
            orthogonalizes only its share of the parameters and the results are broadcast.
            Gradients must already be identical on all ranks (all-reduced).
        process_group: the group to split the work over (default: the world). Not pickled: a
            copied or unpickled optimizer uses the world until it is set again.
        check_names: refuse parameters whose names look like embeddings or heads.
        skip_idle_slices: a matrix (one slice of a stacked parameter, or the whole of a 2-D or
            flattened one) whose gradient is exactly zero everywhere is idle this step: no update, no
            weight decay, no momentum change, as if it had no gradient. For stacked experts that got no
            tokens (docs/design/optimizer.md, Idle experts). Decided on the device (no host sync).
            Muon groups only: MuonAdamW's AdamW groups update every element, as one parameter.
        power_iter_start: "turbo" only: start the σ_max power iteration from the "constant" vector
            (default; depends on nothing but the input) or a "random" Gaussian vector, reseeded for
            each parameter and step from (power_iter_seed, parameter index, the parameter's step
            count), so it is reproducible, survives a state_dict round trip, and does not depend on
            which rank computes it.
        power_iter_seed: the base seed of the random start.

    The per-group options are lr, weight_decay, momentum, nesterov, eps, ns_steps, method (or
    ns_coefficients), lr_scale (or adjust_lr_fn), stacked, compute_dtype, master_weights, use_triton,
    skip_idle_slices, power_iter_start and power_iter_seed.
    """

    #: Attributes that are not pickled or deep-copied (rebuilt by __setstate__).
    _TRANSIENT = ("process_group",)

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
        method: Method | None = None,
        lr_scale: LrScale | None = None,
        stacked: bool = False,
        compute_dtype: torch.dtype | None = None,
        master_weights: bool = False,
        use_triton: bool = False,
        nonfinite: str = "raise",
        distributed: bool = True,
        process_group: dist.ProcessGroup | None = None,
        check_names: bool = True,
        skip_idle_slices: bool = False,
        power_iter_start: str = "constant",
        power_iter_seed: int = 0,
    ) -> None:
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        params = normalize_params(params)  # first: torch's TypeError for a bare tensor
        group = dict(lr=check_lr(lr, "Muon"), weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                     ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                     method=method, lr_scale=lr_scale, stacked=stacked, compute_dtype=compute_dtype,
                     master_weights=master_weights, use_triton=use_triton)
        group.update(skip_idle_slices=skip_idle_slices, power_iter_start=power_iter_start,
                     power_iter_seed=power_iter_seed)
        translate_torch_names(group)
        group["method"] = group["method"] if group["method"] is not None else DEFAULT_METHOD
        group["lr_scale"] = group["lr_scale"] if group["lr_scale"] is not None else "original"
        self.nonfinite = nonfinite
        self.distributed = distributed
        self.process_group = process_group
        self.check_names = check_names
        self.skipped_steps = 0
        super().__init__(params, group)

    # ----------------------------------------------------------------- validation
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = normalize_params([param_group])[0]
        translate_torch_names(group)
        super().add_param_group(group)
        self._check_group(self.param_groups[-1])

    def _check_group(self, group: dict[str, Any]) -> None:
        if group.get("use_muon", True):
            self._validate_muon_group(group)
        else:
            self._validate_other_group(group)

    def _validate_other_group(self, group: dict[str, Any]) -> None:
        raise ValueError("Muon only takes Muon groups; for a group with use_muon=False "
                         "(embeddings, heads, biases, norms) use sb_muon.MuonAdamW")

    def _validate_muon_group(self, group: dict[str, Any]) -> None:
        check_muon_options(group)
        names = group.get("param_names") or [None] * len(group["params"])
        too_flat = [describe(n, i, p) for i, (n, p) in enumerate(zip(names, group["params"], strict=True))
                    if p.ndim < 2]
        if too_flat:
            raise ValueError(
                "Muon only updates matrices (>= 2 dims), but got: " + ", ".join(too_flat)
                + ". Give biases, norms and scalars to AdamW: use sb_muon.MuonAdamW with a "
                "use_muon=False group, or sb_muon.split_muon_params(model).")
        if self.check_names:
            flagged = [describe(n, i, p) for i, (n, p) in enumerate(zip(names, group["params"], strict=True))
                       if n is not None and looks_like_embedding_or_head(n)]
            if flagged:
                raise ValueError(
                    "these parameters look like embeddings or output heads, which Muon should not "
                    "update: " + ", ".join(flagged) + ". Put them in a use_muon=False group of "
                    "sb_muon.MuonAdamW (sb_muon.split_muon_params does this), or pass check_names=False.")
        if any(p.is_complex() for p in group["params"]):
            raise ValueError("Muon does not support complex parameters")
        if any(p.is_sparse for p in group["params"]):
            raise ValueError("Muon does not support sparse parameters")
        validate_skip_idle(group)
        validate_power_iter(group)

    def _complete_group(self, group: dict[str, Any]) -> None:
        """Translate torch's names and fill in missing keys of a loaded or unpickled group, then check it."""
        translate_torch_names(group)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group)

    # ----------------------------------------------------------------- state
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["sb_muon_attrs"] = {k: v for k, v in vars(self).items() if k not in state
                                  and k not in self._TRANSIENT and not k.startswith("_optimizer_")}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled or deep-copied optimizer (torch's load_state_dict also calls this, with
        only state and param_groups): attributes missing from the pickle and group keys missing from
        older or foreign groups get their defaults; the process group is the world until set again."""
        attrs = state.pop("sb_muon_attrs", {})
        had_differentiable = "differentiable" in state.get("defaults", getattr(self, "defaults", {}))
        super().__setstate__(state)
        if not had_differentiable:  # torch's __setstate__ adds it; Muon has no differentiable mode
            self.defaults.pop("differentiable", None)
        self.__dict__.update(attrs)
        fresh = {"nonfinite": "raise", "distributed": True, "check_names": True, "skipped_steps": 0,
                 "process_group": None}
        for key, value in fresh.items():
            self.__dict__.setdefault(key, value)
        for key, value in MUON_DEFAULTS.items():  # pickles of older versions lack newer options
            self.defaults.setdefault(key, value)
        for group in self.param_groups:
            self._complete_group(group)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["sb_muon"] = {"version": STATE_VERSION, "skipped_steps": self.skipped_steps}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class, or of torch.optim.Muon (its momentum has the same EMA form).

        torch casts floating-point state to the parameter's dtype on load; our state is fp32 on
        purpose (momentum and master weights of bf16 params), so the saved dtypes are restored after.
        Group keys missing from the saved groups take this optimizer's defaults.
        """
        saved_state = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params, strict=True):
            for key, value in saved_state.get(saved_id, {}).items():
                if isinstance(value, torch.Tensor) and value.is_floating_point() and key != "step":
                    self.state[p][key] = value.to(device=p.device, copy=True)
        for group in self.param_groups:
            self._complete_group(group)
        extra = state_dict.get("sb_muon", {})
        self.skipped_steps = int(extra.get("skipped_steps", 0))

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(group):
                if key in ("params", "param_names"):
                    continue
                value = group[key]
                if key == "compute_dtype" and value is None and group.get("use_muon", True):
                    devices = sorted({str(p.device) for p in group["params"]})
                    value = "auto: " + ", ".join(f"{d} -> {compute_choice(d)}" for d in devices)
                lines.append(f"    {key}: {value}")
        return "\n".join(lines) + "\n)"

    # ----------------------------------------------------------------- step
    def _grads_are_finite(self) -> bool:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return True
        flags = torch.stack([g.isfinite().all().to(grads[0].device) for g in grads])
        if bool(flags.all()):  # the one host sync of the check
            return True
        if self.nonfinite == "raise":
            bad = []
            for group in self.param_groups:
                names = group.get("param_names") or [None] * len(group["params"])
                for i, (n, p) in enumerate(zip(names, group["params"], strict=True)):
                    if p.grad is not None and not bool(p.grad.isfinite().all()):
                        bad.append(describe(n, i, p))
            raise FloatingPointError(
                "non-finite gradient (NaN or inf) in " + ", ".join(bad) + "; no parameter was changed. "
                "Lower the learning rate or clip gradients, or pass nonfinite='skip' to skip such steps.")
        return False

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.nonfinite != "ignore" and not self._grads_are_finite():
            self.skipped_steps += 1
            return loss
        self._muon_step([g for g in self.param_groups if g.get("use_muon", True)])
        self._other_step([g for g in self.param_groups if not g.get("use_muon", True)])
        return loss

    def _other_step(self, groups: list[dict[str, Any]]) -> None:
        """Hook for optimizers that also own non-Muon groups (see MuonAdamW)."""

    def _momentum_direction(
        self, group: dict[str, Any], p: torch.Tensor, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Update the momentum buffer of p (only its `active` slices) and return the direction to
        orthogonalize (an idle slice's direction is not used: :meth:`_apply` leaves that slice alone)."""
        state = self.state[p]
        grad = p.grad
        if "momentum_buffer" not in state:
            buf_dtype = torch.float32 if p.dtype in _LOW_PRECISION else p.dtype
            state["momentum_buffer"] = torch.zeros_like(p, dtype=buf_dtype)
            if group["master_weights"] and p.dtype in _LOW_PRECISION:
                state["master_weight"] = p.detach().float()
        buf = state["momentum_buffer"]
        g = grad.to(buf.dtype)
        mu = group["momentum"]
        if active is None:
            buf.lerp_(g, 1.0 - mu)
        else:
            buf.copy_(torch.where(active, buf.lerp(g, 1.0 - mu), buf))
        return g.lerp(buf, mu) if group["nesterov"] else buf

    def _orthogonalize(
        self, group: dict[str, Any], direction: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        matrices = _as_matrices(direction, group["stacked"])
        out = orthogonalize(matrices, group["ns_steps"], group["method"], dtype=group["compute_dtype"],
                            eps=group["eps"], use_triton=group["use_triton"], power_iter_generator=generator)
        return out.view_as(direction)

    def _muon_step(self, groups: list[dict[str, Any]]) -> None:
        index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        work = [(group, p) for group in groups for p in group["params"] if p.grad is not None]
        if not work:
            return
        actives = [active_slices(p.grad, group["stacked"]) if group.get("skip_idle_slices", False) else None
                   for group, p in work]
        directions = [self._momentum_direction(group, p, a)
                      for (group, p), a in zip(work, actives, strict=True)]
        # made on every rank (host-only work), so that each parameter's step count advances everywhere
        generators = [power_iter_generator(group, self.state[p], index[p], p.device) for group, p in work]
        world, rank = world_and_rank(self.process_group) if self.distributed else (1, 0)
        if world == 1:
            updates = [self._orthogonalize(group, d, gen)
                       for (group, _), d, gen in zip(work, directions, generators, strict=True)]
        else:
            costs = []
            for (group, p), d in zip(work, directions, strict=True):
                rows, cols = _matrix_dims(p, group["stacked"])
                m, n = min(rows, cols), max(rows, cols)
                costs.append(d.numel() / (rows * cols) * (4 * m * m * n + 2 * m ** 3) * group["ns_steps"] + 1)
            owners = assign_owners(costs, world)
            mine = {i: self._orthogonalize(work[i][0], directions[i], generators[i])
                    for i in range(len(work)) if owners[i] == rank}
            updates = share_results(mine, directions, owners, self.process_group)
        for (group, p), update, active in zip(work, updates, actives, strict=True):
            self._apply(group, p, update, active)

    def _apply(
        self, group: dict[str, Any], p: torch.Tensor, update: torch.Tensor, active: torch.Tensor | None = None
    ) -> None:
        """Weight decay and the step; with an `active` mask, idle slices keep their values bit for bit."""
        rows, cols = _matrix_dims(p, group["stacked"])
        step_size = group["lr"] * lr_scale_factor(group["lr_scale"], rows, cols)
        decay = group["lr"] * group["weight_decay"] * getattr(p, "wd_mul", 1.0)
        master = self.state[p].get("master_weight")
        target = master if master is not None else p
        if active is None:
            if decay != 0.0:
                target.mul_(1.0 - decay)
            target.add_(update.to(target.dtype), alpha=-step_size)
        else:
            stepped = target.mul(1.0 - decay) if decay != 0.0 else target.clone()
            stepped.add_(update.to(target.dtype), alpha=-step_size)
            target.copy_(torch.where(active, stepped, target))
        if master is not None:
            p.copy_(master)
