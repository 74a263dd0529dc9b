"""The coding-agent CLIs the tests drive, pinned, installed once into a cache directory.

`MOE_ROUTER_AGENT_CLIS` names the directory (default ~/.cache/moe-router/agent-clis); `.ci/run`
installs them there. Without npm (or with no network to install from) the tests skip, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PINNED = ("@anthropic-ai/claude-code@2.1.197", "@openai/codex@0.171.0")


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "moe-router" / "agent-clis"
    return Path(os.environ.get("MOE_ROUTER_AGENT_CLIS", default))


def install(prefix: Path) -> subprocess.CompletedProcess:
    """`npm install` the pinned CLIs under `prefix` (what .ci/run does)."""
    prefix.mkdir(parents=True, exist_ok=True)
    cmd = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), *PINNED]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def agent_bin(name: str) -> str:
    """The path of the `claude` or `codex` executable, installing the pinned CLIs if needed."""
    prefix = cache_dir()
    path = prefix / "node_modules" / ".bin" / name
    if not path.exists():
        if shutil.which("npm") is None:
            pytest.skip(f"npm is not installed: cannot install {', '.join(PINNED)}")
        done = install(prefix)
        if done.returncode != 0 or not path.exists():
            pytest.skip(f"npm install of the agent CLIs failed: {done.stderr.strip()[-300:]}")
    return str(path)


# aider pins many packages, so it lives in a virtual environment of its own (`.ci/run` makes it)
AIDER = "aider-chat==0.86.2"


def aider_bin() -> str:
    """The `aider` executable of that environment (`MOE_ROUTER_AIDER`, default
    ~/.cache/moe-router/aider); the test skips, saying so, where it is not installed."""
    default = Path.home() / ".cache" / "moe-router" / "aider"
    path = Path(os.environ.get("MOE_ROUTER_AIDER", default)) / "bin" / "aider"
    if not path.exists():
        pytest.skip(f"{AIDER} is not installed at {path.parent.parent} (.ci/run installs it)")
    return str(path)
