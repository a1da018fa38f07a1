"""One read-only SQL statement over the sb-analysis tables and views, shown as a table.

Queries go through sb-analysis's SQL sandbox (no file, URL, extension or setting can be reached; only
reading statements run) with the app's limits (data.LIMITS: memory, threads, time, rows).
"""

from __future__ import annotations

import duckdb
import streamlit as st

from sb_analysis import QueryTimeout, RefusedStatement

from .. import data
from ..context import Context

DEFAULT_QUERY = """SELECT run_id, preset, state, last_step, final_val_loss, best_val_loss, health_score_final
FROM run_summary
ORDER BY best_val_loss"""
QUERY_KEY = "sql_query"


def render(ctx: Context) -> None:
    st.title("SQL")
    st.caption("One read-only DuckDB statement (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN, PRAGMA table_info) "
               f"over the sb-analysis database; at most {data.SQL_ROW_LIMIT:,} rows and "
               f"{data.LIMITS.timeout_s:g} s per query (tables and views below; see "
               "packages/sb-analysis/README.md).")
    with st.form("sql_form"):
        query = st.text_area("Query", DEFAULT_QUERY, height=140, key=QUERY_KEY)
        st.form_submit_button("Run")
    query = query.strip()
    if query:
        try:
            result = data.run_sql(ctx.version, query)
        except RefusedStatement as err:
            st.error(f"Not run: {err}")
        except QueryTimeout as err:
            st.error(f"Stopped: {err}")
        except (duckdb.Error, ValueError) as err:
            st.error(f"The query failed: {' '.join(str(err).split())}")
        else:
            rows = f"first {result.frame.height:,} rows shown (there are more)" if result.truncated \
                else f"{result.frame.height:,} row(s)"
            st.caption(f"{rows} in {result.seconds * 1000:.0f} ms")
            st.dataframe(result.frame, hide_index=True, width="stretch", key="sql_result")
    with st.expander("Tables and views"):
        st.dataframe(data.tables(ctx.version), hide_index=True, width="stretch")
