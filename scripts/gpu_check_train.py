"""gpu_check part "train": timed training steps of the record-1gpu model on synthetic tokens, with MFU.

The step mirrors the trainer's (sb_train.trainer.Trainer.train_step, docs/design/training.md): schedule
values of one step written into the model and optimizer groups, the trainer's device plan
(sb_train.device_plan: autocast, compile, attention, experts, Muon dtype), forward + backward of each
micro-batch, one ``MuonAdamW.step()``. It leaves out what a single GPU without
data does not need: the data loader (random tokens instead: the GPU machine has no FineWeb shards), the
gradient all-reduce (one process), router AutoClip and the logging host copies.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from sb_model import GPT
from sb_model.parameter_counts import parameter_counts
from sb_train.config import micro_tokens
from sb_train.config_loading import load_config
from sb_train.device_plan import plan_for
from sb_train.optimizer import build_optimizer
from sb_train.schedules.apply import set_model_schedule, set_optimizer_schedule

# dense bf16 tensor-core peak per device name fragment (vendor data sheets, SXM parts, no sparsity)
PEAK_BF16_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}
REFERENCE_MS_PER_STEP = 471.0  # the reference record: 8xH100, 12,288 tokens per rank per step
REFERENCE_TOKENS_PER_RANK = 12288


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return name, flops
    return name, None


def attention_context(seq_len: int, window: int) -> float:
    """Mean number of keys a causal query sees with a sliding window of ``window`` tokens over one
    sequence of ``seq_len`` tokens (document boundaries ignored: an upper bound)."""
    w = max(1, min(window, seq_len))
    # positions 0..w-1 see pos+1 keys, the rest see w
    total = w * (w + 1) / 2 + (seq_len - w) * w
    return total / seq_len


def step_flops(model: GPT, tokens: int, window_tokens: int) -> dict[str, float]:
    """Training FLOPs of one step of ``tokens`` tokens: 6 x active matmul parameters x tokens (forward 2,
    backward 4) + attention scores and values, 12 x (heads x head_dim) x mean context per token per
    attention layer (QK^T and AV: 2 x 2 forward, twice that backward). Active matmul parameters: attention
    QKVO, the top-k share of the expert weights, routers, dense FFNs and the LM head (the embedding lookups
    are not matmuls). The long window layers use ``window_tokens``, the others half of it."""
    cfg = model.config
    c = parameter_counts(model)
    bank = cfg.bank
    expert_share = bank.topk / bank.num_experts if bank is not None and bank.num_experts else 0.0
    head = cfg.padded_vocab_size * cfg.model_dim
    active = c["attention"] + c["experts"] * expert_share + c["routers"] + c["dense_ffn"] + head
    long_layers = set(cfg.long_layers)
    width = cfg.num_heads * cfg.head_dim
    attn = 0.0
    for i, block in enumerate(model.blocks):
        if block.attn is None:
            continue
        window = window_tokens if i in long_layers else window_tokens // 2
        attn += 12 * width * attention_context(tokens, window) * tokens
    dense = 6 * active * tokens
    return {"active_matmul_params": active, "matmul_flops": dense, "attention_flops": attn,
            "total_flops": dense + attn}


def run(dry_run: bool, steps: int | None = None, warmup: int | None = None, accum: int = 1) -> dict[str, Any]:
    """Warm up (compiles on CUDA), then time ``steps`` optimizer steps of ``accum`` micro-batches each."""
    device = torch.device("cpu" if dry_run or not torch.cuda.is_available() else "cuda")
    preset = "smoke" if dry_run else "record-1gpu"
    cfg = load_config(preset, overrides=[f"run.device={device.type!r}"])
    steps = steps or (3 if dry_run else 30)
    warmup = warmup if warmup is not None else (1 if dry_run else 5)
    micro = micro_tokens(cfg.data, cfg.model.block_size)
    mcfg = cfg.model
    plan = plan_for(device, cfg)
    torch.manual_seed(0)
    model = GPT(plan.model_config(mcfg), device=device)
    opt = build_optimizer(model, cfg.optim, seed=0, compute_dtype=plan.muon_compute_dtype)
    forward = plan.compiled(model)

    # one step's schedule values, with every expert live (the trainer's apply_schedule)
    sched = cfg.schedule
    all_live = max((s for s, _ in sched.expert_activation_schedule), default=0)
    step = max(all_live, sched.num_iterations // 2)
    v = sched.at(step, num_experts=mcfg.bank.num_experts, max_window_tokens=mcfg.max_window_tokens,
                 block_size=mcfg.block_size)
    set_model_schedule(model, v)
    if model.bank is not None:
        model.bank.maybe_init_adapters(model.routing_schedule.active_mask)
    set_optimizer_schedule(opt, v)

    vocab = mcfg.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(1)
    batches = [torch.randint(0, vocab, (micro + 1,), generator=gen) for _ in range(4)]
    batches = [(b[:-1].to(device, torch.int32)[None], b[1:].to(device, torch.int64)[None]) for b in batches]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def one_step(i: int) -> tuple[float, float, float]:
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        for j in range(accum):
            inputs, targets = batches[(i * accum + j) % len(batches)]
            with plan.autocast():
                out = forward(inputs, targets)
            (out.loss / accum).backward()
            loss_sum += out.loss.detach().float()
        sync()
        t1 = time.perf_counter()
        opt.step()
        sync()
        t2 = time.perf_counter()
        return t2 - t0, t1 - t0, float(loss_sum) / accum

    t_warm = time.perf_counter()
    for i in range(warmup):
        one_step(i)
    warm_s = time.perf_counter() - t_warm
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, fb_times, losses = [], [], []
    for i in range(steps):
        total, fb, loss = one_step(warmup + i)
        times.append(total)
        fb_times.append(fb)
        losses.append(loss)
    times.sort()
    fb_times.sort()
    ms = 1e3 * times[len(times) // 2]
    fb_ms = 1e3 * fb_times[len(fb_times) // 2]
    tokens = micro * accum
    window_tokens = v.window_blocks * mcfg.block_size
    flops = step_flops(model, micro, window_tokens)
    flops = {k: val * accum if k != "active_matmul_params" else val for k, val in flops.items()}
    name, peak = peak_flops(device)
    achieved = flops["total_flops"] / (ms / 1e3)
    out: dict[str, Any] = {
        "preset": preset,
        "device": name,
        "data": "synthetic uniform random token ids (no data loader: no FineWeb shards on the GPU machine)",
        "total_params": parameter_counts(model)["total"],
        "micro_tokens": micro,
        "micro_batches_per_step": accum,
        "tokens_per_step": tokens,
        "schedule_step": step,
        "window_tokens_long": window_tokens,
        "active_experts": v.active_experts,
        "device_plan": plan.to_dict(),
        "warmup_steps": warmup,
        "warmup_s": round(warm_s, 2),
        "timed_steps": steps,
        "ms_per_step_median": round(ms, 2),
        "ms_per_step_min": round(1e3 * times[0], 2),
        "ms_per_step_max": round(1e3 * times[-1], 2),
        "fwd_bwd_ms_median": round(fb_ms, 2),
        "optimizer_ms_median": round(ms - fb_ms, 2),
        "tokens_per_s": round(tokens / (ms / 1e3), 1),
        "peak_memory_gib": (round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                            if device.type == "cuda" else None),
        "flops_per_step": flops,
        "achieved_tflops": round(achieved / 1e12, 3),
        "peak_bf16_tflops": peak / 1e12 if peak else None,
        "mfu": round(achieved / peak, 4) if peak else None,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "reference_ms_per_step": REFERENCE_MS_PER_STEP,
        "reference_tokens_per_rank": REFERENCE_TOKENS_PER_RANK,
    }
    if tokens == REFERENCE_TOKENS_PER_RANK:
        out["vs_reference"] = round(ms / REFERENCE_MS_PER_STEP, 3)
    finite = all(x == x and abs(x) != float("inf") for x in losses)
    out["ok"] = finite
    if not finite:
        out["error"] = f"non-finite training loss: {losses}"
    return out
