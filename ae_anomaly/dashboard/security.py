"""The dashboard's request guard: trusted hosts, optional authentication, CSRF, body limit.

One ASGI middleware (:class:`SecurityMiddleware`) wraps the whole app, so a route added
later (``/metrics``, another form) is covered without doing anything:

1. the ``Host`` header must name a trusted host (DNS-rebinding defence), else 400;
2. when credentials are configured, every path except :data:`UNAUTHENTICATED_PATHS` needs
   HTTP basic or a bearer token, else 401;
3. a request body larger than ``max_body_bytes`` is refused with 413;
4. every unsafe method (POST, PUT, PATCH, DELETE) needs an ``Origin`` (or, failing that, a
   ``Referer``) of this same site and a CSRF token, else 403. The token is the HMAC of a
   random per-browser nonce, kept in a ``SameSite=Strict`` cookie, under a per-process
   secret (signed double-submit cookie): pages put it in a hidden ``csrf_token`` field;
   scripts may send it as an ``X-CSRF-Token`` header;
5. every response gets the security headers (CSP, ``X-Frame-Options: DENY``, ``nosniff``).

Credentials come only from the environment and are compared with
:func:`hmac.compare_digest`; nothing here logs them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import ipaddress
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ae_anomaly.errors import ConfigError

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ENV_TOKEN = "AE_ANOMALY_DASHBOARD_TOKEN"
ENV_USER = "AE_ANOMALY_DASHBOARD_USER"
ENV_PASSWORD = "AE_ANOMALY_DASHBOARD_PASSWORD"
ENV_USER_HEADER = "AE_ANOMALY_DASHBOARD_USER_HEADER"
ENV_TRUSTED_HOSTS = "AE_ANOMALY_DASHBOARD_TRUSTED_HOSTS"
ENV_SECRET = "AE_ANOMALY_DASHBOARD_SECRET"

# Reachable without credentials (a health check, a Prometheus scrape), still host-checked.
UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/metrics"})
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_COOKIE = "ae_anomaly_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
MAX_BODY_BYTES = 64 * 1024
# Plotly needs inline styles (it creates <style> elements and style attributes); scripts
# come only from this site: the pages have no inline script (charts.py).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


@dataclass
class DashboardSecurity:
    """What the dashboard requires of a request.

    Attributes:
        trusted_hosts: host names (or IP addresses) the ``Host`` header may name, without
            port; ``*.example.com`` matches subdomains, ``*`` turns the check off.
        token: a bearer token that authenticates, or None.
        user: the HTTP basic user name, or None (then ``password`` is None too).
        password: the HTTP basic password.
        user_header: a request header that carries the user's name (set by an
            authenticating proxy, e.g. ``X-Forwarded-User``); recorded as the author of
            feedback. Only trust it when the proxy is the only way in.
        secret: the key that signs CSRF tokens (random per process unless given).
        max_body_bytes: the largest request body accepted.
    """

    trusted_hosts: list[str] = field(default_factory=lambda: list(LOCAL_HOSTS))
    token: str | None = None
    user: str | None = None
    password: str | None = None
    user_header: str | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    max_body_bytes: int = MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise ConfigError(f"set both {ENV_USER} and {ENV_PASSWORD} for HTTP basic "
                              f"authentication, or neither")
        self.trusted_hosts = [h.strip().lower().strip("[]") for h in self.trusted_hosts
                              if h.strip()]

    def __repr__(self) -> str:  # never show credentials
        return (f"DashboardSecurity(trusted_hosts={self.trusted_hosts!r}, "
                f"auth={self.auth_methods() or 'none'})")

    @classmethod
    def from_env(cls, bind_host: str = "127.0.0.1", trusted_hosts: Iterable[str] = (),
                 environ: MutableMapping[str, str] | None = None) -> DashboardSecurity:
        """Settings from the environment, the bind address and extra trusted hosts.

        Trusted hosts: localhost, the bind address (unless it is a wildcard such as
        ``0.0.0.0``), ``trusted_hosts`` and the comma-separated ``ENV_TRUSTED_HOSTS``.
        Empty variables count as unset.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(name) or None

        hosts = [*LOCAL_HOSTS]
        if bind_host and not _is_wildcard(bind_host):
            hosts.append(bind_host)
        hosts += list(trusted_hosts)
        hosts += (get(ENV_TRUSTED_HOSTS) or "").split(",")
        secret = get(ENV_SECRET)
        return cls(trusted_hosts=list(dict.fromkeys(h for h in hosts if h.strip())),
                   token=get(ENV_TOKEN), user=get(ENV_USER), password=get(ENV_PASSWORD),
                   user_header=get(ENV_USER_HEADER),
                   secret=(hashlib.sha256(secret.encode()).digest() if secret
                           else secrets.token_bytes(32)))

    # ------------------------------------------------------------------ checks
    def auth_methods(self) -> list[str]:
        """The configured authentication methods (empty: no authentication)."""
        return [m for m, on in (("basic", self.user is not None),
                                ("bearer", self.token is not None)) if on]

    def bind_warning(self, bind_host: str) -> str | None:
        """A warning when binding beyond this machine without authentication, else None."""
        if self.auth_methods() or _is_loopback(bind_host):
            return None
        return (f"WARNING: the dashboard listens on {bind_host}, beyond this machine, "
                f"without authentication: anyone who can reach the port can read events and "
                f"mark them. Set {ENV_TOKEN} or {ENV_USER}/{ENV_PASSWORD}, or put it behind "
                f"an authenticating proxy (docs/dashboard.md, Security).")

    def host_allowed(self, host_header: str) -> bool:
        """Whether a ``Host`` header (``name[:port]``) names a trusted host."""
        name = _host_name(host_header)
        if not name:
            return False
        for pattern in self.trusted_hosts:
            if pattern == "*" or name == pattern:
                return True
            if pattern.startswith("*.") and name.endswith(pattern[1:]):
                return True
        return False

    def authenticate(self, authorization: str | None) -> tuple[bool, str | None]:
        """Check an ``Authorization`` header; returns (ok, user name for basic auth)."""
        if not self.auth_methods():
            return True, None
        scheme, _, value = (authorization or "").partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.token is not None and value:
            return hmac.compare_digest(value.encode(), self.token.encode()), None
        if scheme == "basic" and self.user is not None and self.password is not None:
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False, None
            user, sep, password = decoded.partition(":")
            # both compared, always: no early exit that times which one was wrong
            ok_user = hmac.compare_digest(user.encode(), self.user.encode())
            ok_password = hmac.compare_digest(password.encode(), self.password.encode())
            return bool(sep) and ok_user and ok_password, user
        return False, None

    def csrf_token(self, nonce: str) -> str:
        """The CSRF token that goes with a browser's nonce (its cookie)."""
        return hmac.new(self.secret, nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, nonce: str | None, token: str | None) -> bool:
        """Whether ``token`` was issued by this process for this nonce."""
        if not nonce or not token:
            return False
        return hmac.compare_digest(self.csrf_token(nonce).encode(), token.encode())


def _is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("0.0.0.0", "::", "")


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(netloc: str) -> str:
    """``name`` of ``name[:port]`` or ``[v6]:port``, lower case; '' when malformed."""
    try:
        return (urlsplit("//" + netloc.strip()).hostname or "").lower()
    except ValueError:
        return ""


def _netloc(netloc: str, scheme: str) -> str:
    """``host:port`` with the scheme's default port made explicit, lower case."""
    try:
        parts = urlsplit("//" + netloc.strip())
        port = parts.port or (443 if scheme in ("https", "wss") else 80)
        return f"{(parts.hostname or '').lower()}:{port}"
    except ValueError:
        return ""


def error_page(status: int, title: str, detail: str = "") -> bytes:
    """A small self-contained HTML error page (no data from the database on it)."""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{status} {html.escape(title)} · ae-anomaly</title></head>"
            f'<body style="font:14px system-ui,sans-serif;margin:40px">'
            f"<h1>{status} {html.escape(title)}</h1><p>{html.escape(detail)}</p>"
            f'<p><a href="/">events</a></p></body></html>').encode()


class SecurityMiddleware:
    """Applies :class:`DashboardSecurity` to every HTTP request (see the module docstring).

    Sets ``scope["state"]["csrf_token"]`` (for the pages' forms) and, when the request
    authenticated or a trusted proxy named the user, ``scope["state"]["user"]``.
    """

    def __init__(self, app: ASGIApp, security: DashboardSecurity) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sec = self.security
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        cookie_nonce = _cookie(headers.get("cookie", ""), CSRF_COOKIE)
        new_nonce = None if cookie_nonce else secrets.token_urlsafe(24)
        nonce = cookie_nonce or new_nonce
        secure = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = [(k, v) for k, v in message.get("headers", [])
                       if k.lower() not in {h for h, _ in SECURITY_HEADERS}]
                out += list(SECURITY_HEADERS)
                if new_nonce is not None:
                    out.append((b"set-cookie", (
                        f"{CSRF_COOKIE}={new_nonce}; Path=/; HttpOnly; SameSite=Strict"
                        f"{'; Secure' if secure else ''}").encode()))
                message = {**message, "headers": out}
            await send(message)

        async def refuse(status: int, title: str, detail: str,
                         extra: list[tuple[bytes, bytes]] | None = None) -> None:
            body = error_page(status, title, detail)
            await send_with_headers({"type": "http.response.start", "status": status,
                                     "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                                 (b"content-length", str(len(body)).encode()),
                                                 (b"cache-control", b"no-store"),
                                                 *(extra or [])]})
            await send_with_headers({"type": "http.response.body", "body": body})

        host = headers.get("host", "")
        if not sec.host_allowed(host):
            log.warning("refused a request for host %r (not a trusted host)", host[:100])
            await refuse(400, "Bad Request", "This host name is not served here (add it "
                         "with --trusted-host if it should be).")
            return
        path = scope.get("path", "")
        state = scope.setdefault("state", {})
        state["csrf_token"] = sec.csrf_token(nonce or "")
        if path not in UNAUTHENTICATED_PATHS:
            ok, user = sec.authenticate(headers.get("authorization"))
            if not ok:
                challenge = (b'Basic realm="ae-anomaly", charset="UTF-8"'
                             if sec.user is not None else b'Bearer realm="ae-anomaly"')
                await refuse(401, "Unauthorized", "This dashboard needs credentials.",
                             [(b"www-authenticate", challenge)])
                return
            if sec.user_header and headers.get(sec.user_header.lower()):
                user = headers[sec.user_header.lower()].strip()[:128]
            if user:
                state["user"] = user
        length = headers.get("content-length")
        if length is not None and not length.isdigit():
            await refuse(400, "Bad Request", "Invalid Content-Length header.")
            return
        if length is not None and int(length) > sec.max_body_bytes:
            await refuse(413, "Content Too Large", f"Request bodies are limited to "
                         f"{sec.max_body_bytes} bytes.")
            return
        if scope.get("method", "GET") not in UNSAFE_METHODS:
            await self.app(scope, receive, send_with_headers)
            return
        # An unsafe method: read the (bounded) body first, then check origin and token.
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > sec.max_body_bytes:
                await refuse(413, "Content Too Large", f"Request bodies are limited to "
                             f"{sec.max_body_bytes} bytes.")
                return
        if not _same_origin(headers, scope.get("scheme", "http")):
            log.warning("refused a %s to %s from origin %r", scope.get("method"), path,
                        (headers.get("origin") or headers.get("referer") or "")[:200])
            await refuse(403, "Forbidden", "Cross-site request refused: the Origin (or "
                         "Referer) header does not match this site.")
            return
        token = headers.get(CSRF_HEADER)
        if token is None and headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"):
            try:
                token = (parse_qs(body.decode("utf-8", errors="strict")).get(CSRF_FIELD)
                         or [None])[-1]
            except UnicodeDecodeError:
                await refuse(400, "Bad Request", "The form is not valid UTF-8.")
                return
        if not sec.csrf_valid(cookie_nonce, token):
            await refuse(403, "Forbidden", "Missing or invalid CSRF token: reload the page "
                         "and try again.")
            return

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)


def _cookie(header: str, name: str) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # a malformed Cookie header: as if there were none
        return None
    morsel = jar.get(name)
    value = morsel.value if morsel is not None else ""
    return value if 16 <= len(value) <= 128 else None


def _same_origin(headers: dict[str, str], scheme: str) -> bool:
    """The request's ``Origin`` (or ``Referer``) names the host it was sent to."""
    source = headers.get("origin")
    if not source or source == "null":
        source = headers.get("referer")
    if not source:
        return False
    try:
        parts = urlsplit(source)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    # Compare host and port; the scheme may differ behind a TLS-terminating proxy.
    return (_netloc(parts.netloc, parts.scheme)
            == _netloc(headers.get("host", ""), parts.scheme))
