"""The console's key on a gateway started with none: `moe-router serve` on a loopback address.

The console (`/ui`) and the admin API (`/admin/*`) answer only the master key. So that the README's
first command gives a console a new user can open, a gateway bound to loopback with no master key
configured makes one: random, written once to `data/master-key` (mode 0600, the same data folder
as the default SQLite ledger) and reused on later starts. Only the file's path is printed, never
the key. Without `auth.require_keys`, `/metrics` stays open as it was without a master key
(`auth.public_metrics`); with it, `/metrics` now needs this key instead of any API key.

A gateway bound to any other address never makes one: the operator sets `auth.master_key` (or
`MOE_ROUTER_MASTER_KEY`), and until then the console and admin API refuse everyone.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from router.config import RouterConfig
from router.gateway.browsers import is_loopback

KEY_FILE = Path("data") / "master-key"


def console_access(cfg: RouterConfig, host: str, key_file: Path = KEY_FILE) -> str:
    """Give `cfg` a master key when it has none and `host` is loopback; say how to log in."""
    if cfg.auth.master() is not None:
        return "log in with the master key"
    if not is_loopback(host):
        return "off: set MOE_ROUTER_MASTER_KEY (or auth.master_key) to open it"
    key = read_or_make(key_file)
    cfg.auth.master_key = SecretStr(key)
    if not cfg.auth.require_keys:
        cfg.auth.public_metrics = True  # open, as it was without a master key
    return f"log in with the key in {key_file} (made for this loopback gateway; MOE_ROUTER_MASTER_KEY sets your own)"


def read_or_make(path: Path) -> str:
    try:
        key = path.read_text().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "mk-" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key
