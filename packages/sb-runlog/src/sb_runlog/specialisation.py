"""Domain specialisation of a layer's routing: the normalised mutual information between data domain and
chosen expert (docs/log-format.md §5, ``nmi``), from a domains × experts table of assignment counts.

NMI = I(D; X) / min(H(D), H(X)), with D the domain of an assignment and X its expert, both drawn from the
table's joint distribution p(d, x) = count / total. It is 1 when one of the two determines the other (every
expert serves one domain, or every domain one expert) and 0 when they are independent. It is None when
fewer than two domains have assignments (nothing to tell apart), and 0 when they do but every assignment
went to one expert (the routing carries no domain information).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _entropy(masses: Sequence[float], total: float) -> float:
    return -sum(m / total * math.log(m / total) for m in masses if m > 0)


def domain_expert_nmi(counts: Sequence[Sequence[float]]) -> float | None:
    """NMI of ``counts[d][x]`` (assignments of domain ``d`` to expert ``x``); see the module docstring."""
    rows = [float(sum(r)) for r in counts]
    if sum(1 for r in rows if r > 0) < 2:
        return None
    total = sum(rows)
    cols = [float(sum(col)) for col in zip(*counts, strict=True)]
    h_domain, h_expert = _entropy(rows, total), _entropy(cols, total)
    if min(h_domain, h_expert) <= 0.0:
        return 0.0
    mutual = sum(
        c / total * math.log(c * total / (rows[d] * cols[x]))
        for d, row in enumerate(counts)
        for x, c in enumerate(row)
        if c > 0
    )
    return min(1.0, max(0.0, mutual / min(h_domain, h_expert)))
