"""The script `router-explorer` hands to `streamlit run` (the installed twin of streamlit_app.py)."""

from router_explorer.app import main

main(__file__)
