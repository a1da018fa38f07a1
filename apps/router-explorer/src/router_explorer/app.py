"""The Streamlit script: settings, optional ingest, sidebar (page and run), then one page's `render`.

Only the chosen page runs on each rerun, so one slow page never delays another. Deep links use query
parameters: `?page=routing&run=RUN&layer=3&step=1200&step_to=1500` opens the routing page on that layer
with the step range highlighted (the health page links its findings this way).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import streamlit as st

from . import data
from .config import ENV_DB, ENV_RUNS, ConfigError, Settings, parse_settings, script_args
from .context import FOCUS_KEY, Context, Focus
from .pages import domains, health, losses, routing, runs, sql, sweep, tokens

PAGES: dict[str, Callable[[Context], None]] = {
    "Runs": runs.render,
    "Losses": losses.render,
    "Routing": routing.render,
    "Health": health.render,
    "Domains": domains.render,
    "Sweep": sweep.render,
    "SQL": sql.render,
    "Tokens": tokens.render,
}
LOGGER = logging.getLogger("router_explorer")
FRIENDLY_ERROR = ("This page could not be drawn. The details are in the server log (the terminal that "
                  "runs the explorer); other pages still work.")
PAGE_KEY = "page"
RUN_KEY = "run"

HOW_TO_START = f"""
Start the explorer on a database or on run directories:

```bash
streamlit run apps/router-explorer -- --db runs.duckdb          # an sb-analysis database
streamlit run apps/router-explorer -- --runs runs/ --db runs.duckdb   # ingest run directories first
```

or set `{ENV_DB}` / `{ENV_RUNS}` (run directories separated by `:`).
"""


def main(script: str | Path | None = None) -> None:
    """Render the app; `script` is the entry file (its arguments are read only under `streamlit run`)."""
    started = time.perf_counter()
    st.set_page_config(page_title="SwitchBank router explorer", page_icon="🔀", layout="wide")
    try:
        settings = parse_settings(script_args(sys.argv, script))
    except ConfigError as err:
        st.error(str(err))
        st.markdown(HOW_TO_START)
        st.stop()
    summary = _ingest(settings) if settings.ingests else None
    try:
        version = data.db_version(settings.db)
    except Exception as err:  # missing, unreadable or not a database (e.g. a truncated file)
        if not isinstance(err, FileNotFoundError):
            LOGGER.exception("cannot open %s", settings.db)
        st.title("SwitchBank router explorer")
        st.error(str(err))
        for path, reason in summary.failures if summary is not None else ():
            st.error(f"ingest of {path} failed: {reason}")
        st.markdown(HOW_TO_START)
        st.stop()
    run_table = data.runs(version)
    run_ids = run_table["run_id"].to_list()
    _init_from_query_params(run_ids)
    page, run_id = _sidebar(settings, version, run_ids)
    if summary is not None:
        _ingest_panel(settings, summary)
    _follow_panel(settings, version)
    st.query_params.update({"page": page.lower(), **({"run": run_id} if run_id else {})})
    if not run_ids:
        st.title("SwitchBank router explorer")
        st.info(f"The database {settings.db} holds no runs yet. " + HOW_TO_START)
        return
    try:
        PAGES[page](Context(settings, version, run_table, run_id))
    except Exception:  # client.showErrorDetails is "none": a friendly line here, the traceback in the log
        LOGGER.exception("page %s failed", page)
        st.error(FRIENDLY_ERROR)
    st.sidebar.caption(f"page script ran in {time.perf_counter() - started:.2f} s")


def _ingest(settings: Settings) -> data.IngestSummary | None:
    """The start-up ingest of --runs; an error is shown and the existing database (if any) still read."""
    try:
        return data.ingest_once(str(settings.db), tuple(str(r) for r in settings.runs))
    except Exception as err:
        LOGGER.exception("start-up ingest failed")
        st.error(f"ingest of {', '.join(map(str, settings.runs))} into {settings.db} failed: "
                 f"{' '.join(str(err).split())}")
        return None


def _ingest_panel(settings: Settings, summary: data.IngestSummary) -> None:
    with st.sidebar.expander("Ingest", expanded=bool(summary.failures)):
        st.caption(
            f"{summary.runs} run(s) from {', '.join(str(r) for r in settings.runs)}: "
            f"+{summary.new_rows:,} rows in {summary.seconds:.1f} s"
        )
        for path, reason in summary.failures:
            st.error(f"{path}: {reason}")
        if summary.row_errors:
            st.warning(f"{summary.row_errors} row(s) rejected; see `SELECT * FROM ingest_errors` (SQL page)")
        if st.button("Re-ingest run directories", help="Load what the runs appended since (incremental)"):
            data.ingest_once.clear()
            st.rerun()


FOLLOW_EVERY_S = (5, 10, 30, 60, 300)


def _follow_panel(settings: Settings, version: data.DbVersion) -> None:
    """'Follow running runs': re-ingest the run directories (if any) and redraw when the database changed."""
    with st.sidebar:
        if not st.toggle("Follow running runs", key="follow", help="Every few seconds: ingest what the run "
                         "directories appended (with --runs) and redraw the page when the database changed"):
            return
        every = st.select_slider("Check every", FOLLOW_EVERY_S, value=10, key="follow_every",
                                 format_func=lambda s: f"{s} s")
        _poll(settings, version, every)


def _poll(settings: Settings, version: data.DbVersion, every: int) -> None:
    @st.fragment(run_every=every)
    def check() -> None:
        try:
            changed = data.refreshed_version(settings.db, settings.runs, version)
        except Exception as err:  # an ingest failure must not break the page being read
            st.caption(f"follow: {err}")
            return
        if changed is not None:
            st.rerun(scope="app")
        st.caption(f"following: checked {time.strftime('%H:%M:%S')}")

    check()


def _init_from_query_params(run_ids: list[str]) -> None:
    """Once per session: take page, run and a focus (layer, steps) from the URL."""
    if st.session_state.get("_query_params_read"):
        return
    st.session_state["_query_params_read"] = True
    params = st.query_params
    by_lower = {name.lower(): name for name in PAGES}
    page = by_lower.get(str(params.get("page", "")).lower())
    if page:
        st.session_state[PAGE_KEY] = page
    run = params.get("run")
    if run in run_ids:
        st.session_state[RUN_KEY] = run
    if "layer" in params or "step" in params:
        try:
            layer = int(params["layer"]) if "layer" in params else None
            step = int(params["step"]) if "step" in params else None
            step_to = int(params["step_to"]) if "step_to" in params else step
        except ValueError:
            return
        st.session_state[FOCUS_KEY] = Focus(layer, step, step_to)


def _sidebar(settings: Settings, version: data.DbVersion, run_ids: list[str]) -> tuple[str, str | None]:
    with st.sidebar:
        st.header("Router explorer")
        st.caption(f"database `{settings.db}` ({settings.db_from}), {len(run_ids)} run(s)")
        page = st.radio("Page", list(PAGES), key=PAGE_KEY)
        run_id = None
        if run_ids:
            if st.session_state.get(RUN_KEY) not in run_ids:
                st.session_state[RUN_KEY] = run_ids[-1]
            run_id = st.selectbox("Run", run_ids, key=RUN_KEY, help="The run that Routing, Health and "
                                  "Domains show; pick several on the Runs and Losses pages")
    return str(page), run_id
