"""Entry of `streamlit run apps/router-explorer` (Streamlit runs a folder's streamlit_app.py)."""

from router_explorer.app import main

main(__file__)
