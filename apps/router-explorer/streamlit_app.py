"""Entry of `streamlit run apps/router-explorer`: the explorer behind the Host/Origin guard.

Streamlit finds `app` (a `streamlit.starlette.App`) and serves it with uvicorn; the options (loopback
address, allowed hosts, no error details, no usage statistics, viewer toolbar) come from
.streamlit/config.toml next to this file. See router_explorer/serving.py.
"""

from starlette.middleware import Middleware
from streamlit.starlette import App

from router_explorer.config import register_launcher
from router_explorer.serving import PAGE_SCRIPT, HostGuard, announce, log_script_error

register_launcher(__file__)
app = App(
    PAGE_SCRIPT, middleware=[Middleware(HostGuard)], lifespan=announce, on_script_error=log_script_error
)
