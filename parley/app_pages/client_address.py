"""Who the client is, behind a proxy: `X-Forwarded-For` is believed only from the proxies
`PARLEY_TRUSTED_PROXIES` names (uvicorn's `ProxyHeadersMiddleware`, which reads the
header from the right and stops at the first address it does not trust).

`server.py` puts it outermost in `st.App`'s middleware, so the page's WebSocket (whose
address the sign-in throttle counts by) and the routes see the same client. The server
underneath (uvicorn) already believes a proxy on 127.0.0.1 by default; an operator who
wants no header believed from there sets `FORWARDED_ALLOW_IPS` for it too.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from parley.core.config import Settings


def trusted_proxy_headers(settings: Settings) -> Middleware:
    return Middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxies))


__all__ = ["trusted_proxy_headers"]
