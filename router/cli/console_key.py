"""The console's key on a gateway started with none: `moe-router serve` on a loopback address.

The console (`/ui`) and the admin API (`/admin/*`) answer only the master key. So that the README's
first command gives a console a new user can open, a gateway bound to loopback with no master key
configured makes one: random, written once to `data/master-key` (mode 0600, the same data folder
as the default SQLite ledger) and reused on later starts: created with O_EXCL|O_NOFOLLOW, and an
existing file that is a link or not mode 0600 is refused (router/private_files.py). Only the file's path is printed, never
the key. Without `auth.require_keys`, `/metrics` stays open as it was without a master key
(`auth.public_metrics`); with it, `/metrics` now needs this key instead of any API key.

A gateway bound to any other address never makes one: the operator sets `auth.master_key` (or
`MOE_ROUTER_MASTER_KEY`), and until then the console and admin API refuse everyone.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import SecretStr

from router.config import RouterConfig
from router.gateway.browsers import is_loopback
from router.private_files import UnsafeFile, create_private, private_dir, read_private

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
    """The key in `path`, or a new one written there. The file must be ours alone: made with
    O_EXCL|O_NOFOLLOW and mode 0600 in a 0700 folder; an existing one that is a link or not 0600 is
    refused (router.private_files.UnsafeFile), never reused or written through."""
    private_dir(path.parent)
    for _ in range(2):  # a second try when another worker created the file in between
        try:
            key = read_private(path).strip()
        except FileNotFoundError:
            key = ""
        if key:
            return key
        if not path.exists() and not path.is_symlink():
            key = "mk-" + secrets.token_urlsafe(32)
            if create_private(path, key + "\n"):
                return key
    raise UnsafeFile(f"{path} exists but holds no key: delete it (a new key is made on the next start)")
