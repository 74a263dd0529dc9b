"""Browsers cannot spend: what the edge refuses from a web page the operator happens to visit.

A page on any site can make the operator's browser send requests to the gateway: a `no-cors`
`fetch` with a `text/plain` body needs no CORS preflight, and its answer is unreadable but its cost
is real. And a page whose hostname the attacker re-points at 127.0.0.1 (DNS rebinding) reaches a
loopback gateway as if it were the same origin, answers included. So, before authentication:

1. A gateway bound to a loopback address answers only requests whose `Host` names it
   (`localhost`, `127.0.0.1`, `[::1]`, the bind address and `server.allowed_hosts`): any other
   name is a rebinding attempt or a misdirected request, 421 `host_not_allowed`.
2. A request from a browser (it carries `Origin` or `Sec-Fetch-*` headers; curl, SDKs and servers
   send neither) that changes state (`POST`, `PUT`, `PATCH`, `DELETE`) must be same-origin
   (`Sec-Fetch-Site: same-origin` or `none`; without it, an `Origin` equal to the `Host`) or come
   from an origin in `server.cors_origins`: else 403 `cross_site_request`.
3. Its body must be declared JSON (`application/json` or `+json`), which a cross-origin page
   cannot send without a CORS preflight the gateway answers only for `server.cors_origins`:
   else 415 `json_content_type_required`. Clients that are not browsers keep sending any type
   (`curl -d` sends a form type): the edge reads their POST bodies as JSON.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from router.errors import Forbidden, RouterError

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAME_ORIGIN = frozenset({b"same-origin", b"none"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_json_type(headers: dict[bytes, bytes]) -> bool:
    ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return ctype == b"application/json" or ctype.endswith(b"+json")


def _has_body(headers: dict[bytes, bytes]) -> bool:
    return headers.get(b"content-length", b"0").strip() not in (b"0", b"") or b"transfer-encoding" in headers


def hostname(host: bytes) -> str:
    """`Host` without its port, lower-cased: `[::1]:8080` -> `::1`, `LocalHost:80` -> `localhost`."""
    h = host.decode("latin-1").strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    name, sep, port = h.rpartition(":")
    return name if sep and port.isdigit() and ":" not in name else h


class BrowserGuard:
    def __init__(
        self, *, bind_host: str, cors_origins: Iterable[str] = (), allowed_hosts: Iterable[str] = ()
    ):
        self.origins = frozenset(o.strip().rstrip("/").lower() for o in cors_origins)
        self.any_origin = "*" in self.origins
        self.hosts = (
            LOOPBACK_NAMES | {bind_host.strip("[]").lower()} | {h.lower() for h in allowed_hosts}
            if is_loopback(bind_host)
            else None
        )

    def refusal(self, method: str, headers: dict[bytes, bytes]) -> RouterError | None:
        """The error to answer with, or None when the request may go on."""
        if self.hosts is not None and hostname(headers.get(b"host", b"")) not in self.hosts:
            return RouterError(
                "this gateway is bound to a loopback address and answers only requests for localhost "
                "(a page whose name resolves here is refused: DNS rebinding); add the name to "
                "server.allowed_hosts to allow it",
                status=421,
                code="host_not_allowed",
            )
        if method not in UNSAFE_METHODS:
            return None
        origin = headers.get(b"origin")
        if origin is None and not any(k.startswith(b"sec-fetch-") for k in headers):
            return None  # not a browser
        if not self._allowed(origin) and self._cross_site(origin, headers):
            return Forbidden(
                "cross-site requests cannot use this gateway: a web page may call it only from its own "
                "origin or one listed in server.cors_origins",
                code="cross_site_request",
            )
        if _has_body(headers) and not is_json_type(headers):
            return RouterError(
                "a request from a browser must send its body as application/json",
                status=415,
                code="json_content_type_required",
            )
        return None

    def _allowed(self, origin: bytes | None) -> bool:
        if origin is None:
            return False
        return self.any_origin or origin.decode("latin-1").strip().rstrip("/").lower() in self.origins

    @staticmethod
    def _cross_site(origin: bytes | None, headers: dict[bytes, bytes]) -> bool:
        site = headers.get(b"sec-fetch-site")
        if site is not None:
            return site.strip().lower() not in SAME_ORIGIN
        if origin is None:  # Sec-Fetch-* without Sec-Fetch-Site: no sign of another site
            return False
        own = headers.get(b"host", b"").decode("latin-1").strip().lower()
        return origin.decode("latin-1").strip().lower().partition("://")[2].rstrip("/") != own
