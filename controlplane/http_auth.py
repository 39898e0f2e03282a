"""The operator token on the control plane's HTTP side: the JSON API and the web UI.

With a token configured (``tdn controlplane --operator-token-file``), the same token that guards
the Operator gRPC service guards ``/api/*`` and the UI page: the topology, plan, exclusions and
explain answers say where each site's traffic goes and at what price, which is the operator's
business. ``/healthz`` (probes) and ``/metrics`` (Prometheus) stay open, as is usual for an
internal scrape target, and so do the UI's static assets (the same files ship in every copy
of TDN).

Machines send ``Authorization: Bearer <token>``. A browser cannot put a header on the page or
on an ``EventSource``, so ``/login`` takes the token once in a form and sets a session cookie
(HttpOnly, SameSite=Strict) whose value is an HMAC of the token: it proves knowledge of the token
without being the token, and changing the token ends every session. Comparisons take constant
time; neither the token nor the cookie is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from collections.abc import Awaitable, Callable

from aiohttp import web

from tdn.controlplane.operator_auth import bearer_credential

COOKIE = "tdn_session"
LOGIN_PATH = "/login"
# Reachable without the token: liveness probes, Prometheus, the login form and static files.
OPEN_PATHS = frozenset({"/healthz", "/metrics", LOGIN_PATH})
OPEN_PREFIXES = ("/static/",)
_SESSION_CONTEXT = b"tdn ui session v1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>TDN: sign in</title>
<style>body{{font:15px system-ui,sans-serif;margin:4rem auto;max-width:22rem}}
input{{width:100%;padding:.4rem;margin:.4rem 0;box-sizing:border-box}}
.error{{color:#b00020}}</style></head>
<body><h1>TDN control plane</h1>
<p>This control plane needs its operator token (the file given to
<code>--operator-token-file</code>).</p>
{error}
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label>Operator token <input type="password" name="token" autocomplete="current-password"
autofocus></label>
<input type="submit" value="Sign in"></form></body></html>
"""


def session_value(token: str) -> str:
    """The cookie that proves knowledge of ``token`` without carrying it."""
    return hmac.new(token.encode(), _SESSION_CONTEXT, hashlib.sha256).hexdigest()


def _safe_next(value: str) -> str:
    # Only a local path: a login form must never redirect to another site.
    return value if value.startswith("/") and not value.startswith("//") else "/"


class TokenGate:
    """aiohttp middleware and login form for one operator token ("" turns the gate off)."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._session = session_value(token).encode() if token else b""

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def install(self, app: web.Application) -> None:
        if not self.enabled:
            return
        app.middlewares.append(self.middleware)
        app.router.add_get(LOGIN_PATH, self._login_form)
        app.router.add_post(LOGIN_PATH, self._login)

    def authorised(self, request: web.Request) -> bool:
        if hmac.compare_digest(bearer_credential(request.headers.get("Authorization", "")),
                               self._token):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._session)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or self.authorised(request):
            return await handler(request)
        if path.startswith("/api/"):
            return web.json_response(
                {"error": {"message": "the control plane's API needs its operator token: "
                                      "'Authorization: Bearer <token>'",
                           "type": "unauthenticated"}},
                status=401, headers={"WWW-Authenticate": 'Bearer realm="tdn"'})
        raise web.HTTPSeeOther(f"{LOGIN_PATH}?next={path}")

    def _page(self, next_path: str, error: str = "", status: int = 200) -> web.Response:
        body = _FORM.format(next=html.escape(_safe_next(next_path)),
                            error=f'<p class="error">{html.escape(error)}</p>' if error else "")
        return web.Response(text=body, content_type="text/html", status=status,
                            headers={"Cache-Control": "no-store"})

    async def _login_form(self, request: web.Request) -> web.Response:
        return self._page(request.query.get("next", "/"))

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token, next_path = str(form.get("token", "")), _safe_next(str(form.get("next", "/")))
        if not hmac.compare_digest(token.encode(), self._token):
            return self._page(next_path, "That is not this control plane's operator token.",
                              status=401)
        response = web.HTTPSeeOther(next_path)
        response.set_cookie(COOKIE, self._session.decode(), httponly=True, samesite="Strict",
                            path="/")
        raise response
