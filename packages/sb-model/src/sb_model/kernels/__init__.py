"""CPU kernels the bank can use: the expert-parallel FFN on PyTorch's own OpenMP threads.

The interface is two functions; the rest is internal:

* :func:`cpu_parallel_experts_available` — whether the kernel can run in this process (probe it eagerly,
  before ``torch.compile`` traces code that asks);
* :func:`expert_ffn_cpu_parallel` — ``gate * FFN_e(rows * scale_e + bias_e)`` per expert group, forward and
  backward, as ``torch.library`` custom ops.

``omp_team.py`` runs Python tasks inside an OpenMP parallel region of libgomp; ``cpu_parallel_experts.py``
cuts the expert groups into tasks and computes them.
"""

from sb_model.kernels.cpu_parallel_experts import cpu_parallel_experts_available, expert_ffn_cpu_parallel

__all__ = ["cpu_parallel_experts_available", "expert_ffn_cpu_parallel"]
