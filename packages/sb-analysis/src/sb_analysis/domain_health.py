"""The domain-specialisation line of `sb-analysis health`: each layer's NMI at the run's last measurement.

The score is the `domain_specialization` view's (docs/log-format.md §5): 0 = every expert serves the domains
alike, 1 = each expert serves a single domain. Runs without domains.csv get no line.
"""

from __future__ import annotations

from typing import Any

import duckdb

# reading of the highest per-layer NMI: (upper bound, word)
READINGS = ((0.05, "none to speak of"), (0.2, "weak"), (0.5, "moderate"), (float("inf"), "strong"))


def reading(nmi: float) -> str:
    """A word for a specialisation score."""
    return next(word for bound, word in READINGS if nmi < bound)


def specialisation_finding(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any] | None:
    """One `info` finding with every layer's NMI at the last step of domains.csv, or None without one."""
    rows = con.execute(
        "SELECT step, layer, specialization FROM domain_specialization WHERE run_id = ? AND step = "
        "(SELECT max(step) FROM domain_load WHERE run_id = ?) ORDER BY layer",
        [run_id, run_id],
    ).fetchall()
    if not rows:
        return None
    step = int(rows[0][0])
    scored = [(int(layer), float(v)) for _, layer, v in rows if v is not None]
    if not scored:
        text = f"domain specialisation at step {step:,}: fewer than two domains were measured (no score)"
        best = None
    else:
        per_layer = ", ".join(f"L{layer} {v:.2f}" for layer, v in scored)
        top_layer, best = max(scored, key=lambda lv: lv[1])
        text = (
            f"domain specialisation at step {step:,} (NMI of domain and expert; 0 = every expert serves the "
            f"domains alike, 1 = each expert serves one domain): {per_layer}; {reading(best)} "
            f"(highest {best:.2f} in layer {top_layer})"
        )
    return {
        "run_id": run_id,
        "severity": "info",
        "rule": "domain_specialisation",
        "layer": None,
        "step_from": step,
        "step_to": step,
        "value": best,
        "threshold": None,
        "message": text,
    }
