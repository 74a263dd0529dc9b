"""Quiet model libraries: no progress bars, no advisory warnings, no per-call INFO lines.

`serve` and the SDK call `quiet_libraries()` before any model library is imported: tqdm reads
`TQDM_DISABLE` when it is imported (transformers' GGUF loader uses plain tqdm, with no switch of
its own), so the environment must say so first. Values the user set are kept.
"""

from __future__ import annotations

import logging
import os
import sys

# libraries that log every HTTP call or model load at INFO: WARNING unless debugging
CHATTY = (
    "httpx",
    "httpcore",
    "urllib3",
    "litellm",
    "LiteLLM",
    "LiteLLM Router",
    "LiteLLM Proxy",
    "openai",
    "sentence_transformers",
    "transformers",
    "huggingface_hub",
    "filelock",
    "accelerate",
    "alembic",
)


def quiet_libraries(debug: bool = False) -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if debug else "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
    if "transformers" in sys.modules:  # imported already: its own switch still works
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
