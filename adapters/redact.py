"""Secrets never reach the gateway's log: upstream messages are scrubbed before anyone sees them.

An upstream's 401 body often quotes the credential it refused ("Incorrect API key provided:
Bearer sk-..."); exception text can hold a URL with a password. So every message an adapter
builds from upstream text goes through `redact` with the adapter's configured secret values
(`secret_values` of its params), and `BackendError` scrubs token-shaped strings (`Bearer ...`,
`sk-...`) from every message whatever adapter made it. `RedactingFilter` does the same for
whatever else logs (a library's own logger): `moe-router serve` puts it on the log's handlers with
every configured secret.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "[redacted]"
MIN_SECRET_CHARS = 6  # shorter values would mask ordinary words
# header and parameter names whose values are credentials
_SECRET_NAME = re.compile(r"key|secret|token|password|passwd|credential|authorization|auth", re.IGNORECASE)
_HEADERS = frozenset({"headers", "default_headers", "extra_headers"})
# token-shaped strings: `Bearer <token>`, OpenAI/Anthropic-style `sk-...` keys, userinfo in URLs
_TOKENS = re.compile(
    r"(?P<bearer>\bbearer\s+)[^\s\"',;]{4,}"
    r"|\bsk-[A-Za-z0-9_\-]{6,}"
    r"|(?P<scheme>\b[a-z][a-z0-9+.\-]{1,20}://[^\s/:@\"']*:)[^\s/@\"']+(?=@)",
    re.IGNORECASE,
)


def _mask(m: re.Match) -> str:
    return (m.group("bearer") or m.group("scheme") or "") + MASK


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every value of `secrets` and every token-shaped string replaced by a mask."""
    for s in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True):
        text = text.replace(s, MASK)
    return _TOKENS.sub(_mask, text)


def secret_values(params: Mapping[str, Any]) -> frozenset[str]:
    """The credential values in (resolved) backend params: strings under secret-like names
    (`api_key`, `aws_secret_access_key`, `token`, ...), and every header value."""
    out: set[str] = set()
    stack: list[tuple[str, Any, bool]] = [(k, v, k in _HEADERS) for k, v in params.items()]
    while stack:
        name, value, secret = stack.pop()
        if isinstance(value, Mapping):
            stack.extend((str(k), v, secret or str(k) in _HEADERS) for k, v in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((name, v, secret) for v in value)
        elif isinstance(value, str) and (secret or _SECRET_NAME.search(name)):
            out.add(value)
            if value.lower().startswith("bearer "):
                out.add(value[7:].strip())
    return frozenset(v for v in out if len(v) >= MIN_SECRET_CHARS)


class RedactingFilter(logging.Filter):
    """A handler filter that masks `secrets` and token-shaped strings in every record's message."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = frozenset(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            clean_exc = redact(text, self.secrets)
            if clean_exc != text:  # the traceback quotes a secret: log it scrubbed, as text
                record.msg = f"{record.msg}\n{clean_exc}"
                record.exc_info, record.exc_text = None, None
        return True


def install(secrets: Iterable[str], logger: logging.Logger | None = None) -> RedactingFilter:
    """Put one `RedactingFilter` on every handler of `logger` (the root logger by default)."""
    target = logger or logging.getLogger()
    f = RedactingFilter(secrets)
    for h in target.handlers:
        for old in [x for x in h.filters if isinstance(x, RedactingFilter)]:
            h.removeFilter(old)
        h.addFilter(f)
    return f
