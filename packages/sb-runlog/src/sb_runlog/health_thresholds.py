"""Router-health thresholds (docs/log-format.md §7), shared by the trainer's console and the analysis readers.

``E`` is the number of experts. A layer is collapsed when its busiest expert takes at least
:data:`COLLAPSE_MAX_FRAC` of the assignments or at most :data:`COLLAPSE_ACTIVE_MAX` experts are active.
"""

from __future__ import annotations

import math

COLLAPSE_MAX_FRAC = 0.90
COLLAPSE_ACTIVE_MAX = 1
IMBALANCE_MAX_FRAC = 0.35  # sustained max_frac above this: imbalanced
SEVERE_IMBALANCE_MAX_FRAC = 0.50  # max_frac above this: severely imbalanced
PEAKY_TOP1_P = 0.8  # top1_p_mean above this: the router is too confident
DIFFUSE_TOP1_P_TIMES_E = 1.2  # top1_p_mean below 1.2 / E: the router is too diffuse
LOW_ENTROPY_FRAC_OF_LN_E = 0.2  # entropy_mean below 0.2 * ln E: over-confident
HIGH_ENTROPY_FRAC_OF_LN_E = 0.95  # entropy_mean above 0.95 * ln E late in training: under-specialised
CLIPPED_STEP_FRAC_MAX = 0.10  # router gradient clipped in more than this fraction of steps
DEMAND_SERVED_GAP_MAX = 0.05  # demanded minus served share above this: capacity too tight
DROP_FRAC_MAX = 0.02  # fraction of assignments dropped by capacity above this
ACTIVE_LOW_STEP_FRAC_MAX = 0.10  # steps with active_min <= 2 above this fraction: collapse onset
LOW_HEALTH_SCORE = 0.5  # composite health score below this

# weights of the composite health penalty (docs/log-format.md §7): imp_cv2/A, load_cv2/A, load entropy gap,
# importance entropy gap, usage gap
HEALTH_PENALTY_WEIGHTS: dict[str, float] = {
    "imp_cv2": 0.8,
    "load_cv2": 0.9,
    "load_entropy_gap": 0.5,
    "imp_entropy_gap": 0.2,
    "usage_gap": 1.25,
}


def is_collapsed(max_frac: float | None, active: float | None) -> bool:
    """The collapse rule on a layer's (or the worst layer's) busiest-expert share and active experts."""
    return (max_frac is not None and max_frac >= COLLAPSE_MAX_FRAC) or (
        active is not None and active <= COLLAPSE_ACTIVE_MAX
    )


def diffuse_top1_p(num_experts: int) -> float:
    """The top1_p_mean below which a router of ``num_experts`` experts is too diffuse."""
    return DIFFUSE_TOP1_P_TIMES_E / num_experts


def entropy_bounds(num_experts: int) -> tuple[float, float]:
    """(low, high) bounds of a healthy entropy_mean in nats for ``num_experts`` experts."""
    ln_e = math.log(num_experts)
    return LOW_ENTROPY_FRAC_OF_LN_E * ln_e, HIGH_ENTROPY_FRAC_OF_LN_E * ln_e
