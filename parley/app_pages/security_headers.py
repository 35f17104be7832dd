"""Security headers on every response Parley serves: the line that holds when rendering fails.

`parley/app_pages/rendering.py` keeps images, HTML, math and diagrams out of what Streamlit
renders from a message, but it models another program's parser: if the two ever read a
text differently, an `<img>` may still reach the page. The Content-Security-Policy makes
the browser refuse, whatever the page holds, to load anything from anywhere but Parley:

- images, fonts, media, frames and connections come from Parley itself (`'self'`;
  in CSP 3 that includes its own WebSocket), plus the `data:` and `blob:` URLs that
  Streamlit's frontend makes itself (the logo and icons it inlines, images it draws,
  downloads);
- scripts come from Parley's origin only, with the one inline script of Streamlit's
  `index.html` allowed by its hash (read from the installed Streamlit, so an upgrade
  keeps the page working) and WebAssembly compilation (protobuf.js probes it for 64-bit
  integers) — no `eval`;
- styles may be inline: Streamlit's components style themselves at run time (emotion),
  and a style can fetch nothing the image and font rules do not allow;
- no plugin objects, no `<base>` elsewhere, and no other site may frame Parley
  (`frame-ancestors 'none'`, against clickjacking). There is no `form-action`: the
  sign-out form's redirects end at the identity provider's own sign-out page, and
  browsers hold a form to `form-action` through its redirects.

Besides: `X-Content-Type-Options: nosniff` (a file is only ever what its type says) and
`Referrer-Policy: same-origin` (a link followed out of an answer does not tell the other
site where it came from; Parley's own requests keep their `Referer`, which the sign-in
routes check when a browser sends no `Sec-Fetch-Site`). `server.py` adds this middleware
to `st.App`, outside Streamlit's own, so it covers the page, Streamlit's assets and
endpoints and Parley's routes alike.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from streamlit import file_util

_INLINE_SCRIPT = re.compile(r"<script(?P<attrs>[^>]*)>(?P<body>.*?)</script>", re.DOTALL)


def _inline_script_hashes(index_html: str) -> list[str]:
    """CSP sources (`'sha256-…'`) for the inline scripts of an HTML page."""
    return [
        "'sha256-{}'".format(
            base64.b64encode(hashlib.sha256(m["body"].encode("utf-8")).digest()).decode("ascii")
        )
        for m in _INLINE_SCRIPT.finditer(index_html)
        if "src=" not in m["attrs"]
    ]


def content_security_policy(index_html: str) -> str:
    """The policy for a Streamlit app whose page is `index_html`."""
    scripts = " ".join(["'self'", "'wasm-unsafe-eval'", *_inline_script_hashes(index_html)])
    directives = {
        "default-src": "'self'",
        "script-src": scripts,
        "style-src": "'self' 'unsafe-inline'",
        "img-src": "'self' data: blob:",
        "font-src": "'self' data:",
        "media-src": "'self' data: blob:",
        "connect-src": "'self'",
        "worker-src": "'self' blob:",
        "frame-src": "'self'",
        "frame-ancestors": "'none'",
        "object-src": "'none'",
        "base-uri": "'self'",
    }
    return "; ".join(f"{name} {sources}" for name, sources in directives.items())


def security_headers() -> dict[str, str]:
    """The headers for every response, for the installed Streamlit's page."""
    index_html = (Path(file_util.get_static_dir()) / "index.html").read_text(encoding="utf-8")
    return {
        "Content-Security-Policy": content_security_policy(index_html),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }


class SecurityHeaders:
    """ASGI middleware that sets `headers` (default: `security_headers()`) on every HTTP
    response, replacing any of the same name. A plain ASGI wrapper rather than
    `BaseHTTPMiddleware`, so streamed and file responses pass through untouched."""

    def __init__(self, app: ASGIApp, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.headers = security_headers() if headers is None else dict(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=list(message.get("headers", [])))
                for name, value in self.headers.items():
                    headers[name] = value
                message["headers"] = headers.raw
            await send(message)

        await self.app(scope, receive, send_with_headers)


__all__ = ["SecurityHeaders", "content_security_policy", "security_headers"]
