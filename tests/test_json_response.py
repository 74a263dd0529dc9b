"""The orjson response class: Starlette's bytes for what Starlette can write, and no 500 for the rest."""

from __future__ import annotations

import json

import numpy as np
from starlette.responses import JSONResponse as StarletteJSON

from router.gateway.json_response import JSONResponse, dumps

BODY = {
    "id": "chatcmpl-1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": 'héllo — 你好 "q" \\ \n'}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "cost": 0.000125, "ok": True, "none": None},
}


def test_same_bytes_content_type_status_and_headers_as_starlette():
    ours = JSONResponse(BODY, status_code=201, headers={"x-moe-router-model": "cheap"})
    theirs = StarletteJSON(BODY, status_code=201, headers={"x-moe-router-model": "cheap"})
    assert ours.body == theirs.body
    assert ours.status_code == 201 and ours.raw_headers == theirs.raw_headers


def test_numpy_values_sets_and_what_orjson_refuses_still_serialize():
    out = json.loads(dumps({"p": np.float32(0.25), "v": np.arange(3), "n": np.int64(7), "s": {1}, 2: "k"}))
    assert out == {"p": 0.25, "v": [0, 1, 2], "n": 7, "s": [1], "2": "k"}
    # a lone surrogate (an upstream's "\ud800" escape) and a 70-bit int: orjson refuses, json writes
    assert json.loads(dumps({"t": "a\ud800", "big": 2**70})) == {"t": "a\ud800", "big": 2**70}
