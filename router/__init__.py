"""moe-router: an OpenAI-compatible gateway that routes each request to the model that answers it
well for the least money and time. `from router import Router` for the in-process SDK."""

from router.config import RouterConfig, load_config
from router.sdk import Router, RouterResponse

__all__ = ["Router", "RouterConfig", "RouterResponse", "load_config"]
