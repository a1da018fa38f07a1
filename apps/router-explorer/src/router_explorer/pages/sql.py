"""Any read-only SQL over the sb-analysis tables and views, shown as a table."""

from __future__ import annotations

import duckdb
import streamlit as st

from .. import data
from ..context import Context

DEFAULT_QUERY = """SELECT run_id, preset, state, last_step, final_val_loss, best_val_loss, health_score_final
FROM run_summary
ORDER BY best_val_loss"""
QUERY_KEY = "sql_query"


def render(ctx: Context) -> None:
    st.title("SQL")
    st.caption("Read-only DuckDB SQL over the sb-analysis database (tables and views listed below; "
               "see packages/sb-analysis/README.md).")
    with st.form("sql_form"):
        query = st.text_area("Query", DEFAULT_QUERY, height=140, key=QUERY_KEY)
        st.form_submit_button("Run")
    query = query.strip().rstrip(";")
    if query:
        try:
            result = data.run_sql(ctx.version, query)
        except (duckdb.Error, ValueError) as err:
            st.error(f"The query failed: {err}")
        else:
            rows = f"first {result.frame.height:,} rows shown (there are more)" if result.truncated \
                else f"{result.frame.height:,} row(s)"
            st.caption(f"{rows} in {result.seconds * 1000:.0f} ms")
            st.dataframe(result.frame, hide_index=True, width="stretch", key="sql_result")
    with st.expander("Tables and views"):
        st.dataframe(data.tables(ctx.version), hide_index=True, width="stretch")
