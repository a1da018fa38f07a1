"""A sweep of sb-train sweep: loss curves per variant (mean and a band over seeds) and compare's judgement."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from sb_runlog import read_sweep_manifest

from .. import data, figures
from ..context import Context

VALUES = {"val_loss": "val loss", "loss": "train loss"}


def render(ctx: Context) -> None:
    st.title("Sweep")
    folders = data.sweep_folders(ctx.version, tuple(str(r) for r in ctx.settings.runs))
    if not folders:
        st.info("No sweep found: sweeps are written by `sb-train sweep` to <runs>/sweeps/<id>/sweep.json "
                "(docs/log-format.md §11), next to their run folders. Start the explorer with "
                "`-- --runs <runs>` or ingest the sweep's runs.")
        return
    by_name = {f"{f.name}  ({f})": f for f in folders}
    cols = st.columns([4, 2, 2, 1])
    picked = by_name[str(cols[0].selectbox("Sweep", list(by_name), key="sweep_pick"))]
    manifest = read_sweep_manifest(picked)
    variants = [str(v["name"]) for v in manifest["variants"]]
    baseline = str(cols[1].selectbox("Baseline", variants, key="sweep_baseline"))
    band = str(cols[2].radio("Band", list(figures.SWEEP_BANDS), format_func=figures.SWEEP_BANDS.get,
                             key="sweep_band"))
    value = str(cols[3].radio("Loss", list(VALUES), format_func=VALUES.get, key="sweep_value"))
    run_variant = tuple((str(r["run_id"]), str(r["variant"]), int(r["seed"])) for r in manifest["runs"])
    curves = data.sweep_curves(ctx.version, run_variant, value)
    if curves.is_empty():
        st.info(f"None of the {len(run_variant)} runs of sweep {picked.name} is in the database yet.")
    else:
        bands = figures.sweep_band_frame(curves, value)
        st.plotly_chart(figures.sweep_figure(bands, variants, band, VALUES[value]), width="stretch",
                        key="sweep_chart")
    result = data.sweep_comparison(ctx.version, str(picked), baseline, 0.01)
    st.subheader("Final val loss per variant, and paired differences to the baseline")
    st.caption(f"mean ± 95% CI (Student t) over seeds; differences are variant − {baseline} paired by seed; "
               "significant: paired t-test p < 0.01 (`sb-analysis compare --sweep` prints the same)")
    st.dataframe(result.table, hide_index=True, width="stretch", key="sweep_table")
    for note in result.notes:
        st.warning(note)
    st.caption(f"{Path(picked) / 'sweep.json'}: preset {manifest.get('preset')!r}, seeds {manifest['seeds']}")
