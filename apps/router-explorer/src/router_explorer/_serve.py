"""What the `router-explorer` command hands to `streamlit run` (the installed twin of streamlit_app.py).

Streamlit finds `app` and serves it with the Host/Origin guard; the options come from the command's flags
and from .streamlit/config.toml next to this file. See serving.py.
"""

from starlette.middleware import Middleware
from streamlit.starlette import App

from router_explorer.config import register_launcher
from router_explorer.serving import PAGE_SCRIPT, HostGuard, announce, log_script_error

register_launcher(__file__)
app = App(
    PAGE_SCRIPT, middleware=[Middleware(HostGuard)], lifespan=announce, on_script_error=log_script_error
)
