"""router-explorer: a Streamlit + plotly app over an sb-analysis database."""

__version__ = "0.1.0"
