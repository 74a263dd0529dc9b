"""aider, unchanged, edits a file through the gateway in one real turn.

It runs as its docs say for an OpenAI-compatible server (`--model openai/<name>`, OPENAI_API_BASE
and OPENAI_API_KEY), offline (no update check, analytics or model-metadata download), in a
temporary directory without git. The scripted upstream answers in aider's `whole` edit format;
the test asserts that the file changed to what the answer said.
"""

from __future__ import annotations

import json
import os
import subprocess

from tests.agents.clis import aider_bin
from tests.conftest import make_config
from tests.support import MASTER, agent_key

MARKER = "EDITED-BY-ROUTER-2b7e"
FLAGS = [
    "--yes-always",
    "--no-git",
    "--no-check-update",
    "--no-show-release-notes",
    "--analytics-disable",
    "--no-show-model-warnings",
    "--no-detect-urls",
    "--no-pretty",
    "--no-fancy-input",
    "--no-stream",
    "--edit-format",
    "whole",
    "--map-tokens",
    "0",
]
METADATA = {
    "max_input_tokens": 128_000,
    "max_output_tokens": 16_384,
    "input_cost_per_token": 0,
    "output_cost_per_token": 0,
    "litellm_provider": "openai",
    "mode": "chat",
}


def test_aider_edits_a_file_through_the_gateway(upstream, start_gateway, tmp_path):
    aider = aider_bin()
    gw = start_gateway(make_config(upstream.base_url, auth={"require_keys": True, "master_key": MASTER}))
    answer = f'hello.py\n```python\nprint("{MARKER}")\n```\n'
    for name in ("cheap", "coder", "big"):
        upstream.behave(name, reply=answer)
    work = tmp_path / "work"
    work.mkdir()
    (work / "hello.py").write_text('print("hello")\n')
    # the gateway's model described to aider (as its docs say for unknown models): no download
    meta = tmp_path / "model-metadata.json"
    meta.write_text(json.dumps({"openai/router": METADATA}))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "OPENAI_API_BASE": gw.url + "/v1",
        "OPENAI_API_KEY": agent_key(gw),
        "AIDER_ANALYTICS": "false",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # litellm's bundled prices: no download
    }
    model = ["--model", "openai/router", "--model-metadata-file", str(meta)]
    cmd = [aider, *model, *FLAGS, "--message", "Make it print the marker.", "hello.py"]
    done = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "githubusercontent" not in done.stdout + done.stderr  # it stayed offline
    assert (work / "hello.py").read_text() == f'print("{MARKER}")\n'
    sent = upstream.calls()
    assert len(sent) == 1 and "Make it print the marker." in str(sent[0]["messages"])
    assert 'print("hello")' in str(sent[0]["messages"])  # the file went with the request
