"""Newton–Schulz coefficient schedules.

Each iteration of the odd quintic Newton–Schulz map applies

    X <- a X + b (X Xᵀ) X + c (X Xᵀ)² X

to a matrix whose singular values lie in (0, 1]. On each singular value σ it acts as the
scalar polynomial p(σ) = a σ + b σ³ + c σ⁵; composing the iterations pushes every σ towards
1, which turns X into (an approximation of) its polar factor U Vᵀ.

A *schedule* is the list of (a, b, c) triples, one per iteration. A fixed triple repeats the
same polynomial; a per-iteration schedule uses a different, tuned polynomial at each step.
"""

from __future__ import annotations

from collections.abc import Sequence

Triple = tuple[float, float, float]

# Keller Jordan's quintic, repeated every iteration (torch.optim.Muon and the original Muon).
QUINTIC: Triple = (3.4445, -4.7750, 2.0315)

# Per-iteration 5-step schedule used by the dense GPT-2-medium speedrun baseline
# (docs/design/optimizer.md, Muon (reference path)).
# Converges tightly for σ/σ_max >= 1e-2: output band about [0.98, 1.03].
TUNED5: tuple[Triple, ...] = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)

# Polar Express (Amsel, Persson, Musco, Gower 2025): per-iteration minimax-optimal quintics with a
# 2% safety margin; the input is normalised by 1.02 * ||X||_F. Lifts tiny singular values fastest.
POLAR_EXPRESS: tuple[Triple, ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 1.02

# The reference SwitchBank record's "TurboMuon" triples, keyed by the (rows, cols) of the wide
# orientation (rows <= cols). Shapes not listed use TURBO_DEFAULT (docs/design/optimizer.md, TurboMuon).
TURBO_BY_SHAPE: dict[tuple[int, int], Triple] = {
    (2048, 2048): (3.3, -4.6, 2.0),
    (4096, 4096): (3.37, -4.9, 2.31),
    (3072, 2048): (2.9, -3.8, 1.86),
    (4096, 2048): (2.78, -3.49, 1.70),
}
TURBO_DEFAULT: Triple = (3.44, -4.78, 2.03)


def turbo_triple(rows: int, cols: int) -> Triple:
    """The TurboMuon triple for a matrix shape, looked up in either orientation."""
    return TURBO_BY_SHAPE.get((rows, cols), TURBO_BY_SHAPE.get((cols, rows), TURBO_DEFAULT))


def schedule_for(steps: int, schedule: Triple | Sequence[Triple]) -> list[Triple]:
    """Expand a fixed triple or a per-iteration list into exactly `steps` triples.

    A per-iteration list shorter than `steps` repeats its last triple (the one tuned for
    already-converged singular values); a longer one is truncated.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if len(schedule) == 3 and all(isinstance(v, (int, float)) for v in schedule):
        return [tuple(float(v) for v in schedule)] * steps  # type: ignore[list-item]
    triples = [tuple(float(v) for v in t) for t in schedule]  # type: ignore[union-attr]
    if not triples or any(len(t) != 3 for t in triples):
        raise ValueError("a coefficient schedule is a non-empty sequence of (a, b, c) triples")
    if steps <= len(triples):
        return triples[:steps]  # type: ignore[return-value]
    return triples + [triples[-1]] * (steps - len(triples))  # type: ignore[return-value]
