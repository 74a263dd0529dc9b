"""Files only the gateway's user may read: the console's master key and the SQLite ledger (prompts).

Folders are made 0700 and files 0600 whatever the umask; a key file is created with
`O_CREAT | O_EXCL | O_NOFOLLOW`, so a file or link someone put there first is never written
through, and an existing one is used only when it is a regular file of mode 0600 (anything else
is refused with what to do, not silently reused or repaired: a 0644 key file may already have
been read).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


class UnsafeFile(Exception):
    """A file the gateway would keep a secret in is not private; the message says how to fix it."""


def private_dir(path: Path) -> None:
    """Make `path` (and missing parents) with mode 0700; an existing folder is left as it is."""
    if path.is_dir():
        return
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)  # mkdir's mode is masked by the umask


def create_private(path: Path, text: str) -> bool:
    """Write `text` to a new file `path` of mode 0600; False when `path` already exists (as a
    file, a link or anything else: nothing is written then)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, PRIVATE_FILE)
        f.write(text)
    return True


def read_private(path: Path) -> str:
    """The text of `path`, which must be a regular file (not a link) of mode 0600 owned by us."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeFile(
                f"{path} is a symbolic link: refusing to read a secret through it; remove it"
            ) from None
        raise
    with os.fdopen(fd) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{path} is not a regular file; remove it")
        mode = stat.S_IMODE(st.st_mode)
        if mode != PRIVATE_FILE:
            raise UnsafeFile(
                f"{path} has mode {mode:04o}, so others may have read the key in it: delete it (a new key is "
                f"made on the next start) or, if only you could read it, `chmod 600 {path}`"
            )
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise UnsafeFile(f"{path} belongs to another user; remove it")
        return f.read()


def private_database(path: Path) -> None:
    """Before SQLite opens `path`: its folder made 0700 when new, the file created 0600 when new and
    narrowed to 0600 when it exists (SQLite makes its -wal and -shm files with the database's mode)."""
    private_dir(path.parent)
    created = create_private(path, "")
    if not created and path.is_file() and not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, PRIVATE_FILE)
