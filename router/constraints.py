"""What a request demands of a candidate, beyond the policy's predictions.

Turns an incoming request plus the gateway's knowledge (config, availability, model health)
into per-candidate exclusions for `policies.decision.decide`: context window, capabilities,
availability, open circuits, key permissions. The request's own routing controls become a
`Constraints`."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence

import orjson

from policies.decision import SERVICE, Constraints, Exclusion
from router.config import ModelSpec, RoutingSettings
from router.health import ModelStatus
from router.schemas import ChatCompletionRequest, Message, RoutingControls

# A cheap token estimate (about 4 characters per token for English, plus per-message framing).
# Used only to predict cost and check context windows before dispatch; spend is computed from the
# backend's real usage.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prompt_tokens(messages: Sequence[Message]) -> int:
    return sum(estimate_tokens(m.text()) + TOKENS_PER_MESSAGE for m in messages)


# the room for an answer a context window must leave (or all of a smaller max_tokens)
MIN_ANSWER_ROOM = 1024
# what one image adds to the estimate (providers charge ~1,000-1,600 tokens for a typical one)
IMAGE_TOKENS = 1000


def request_tokens(req: ChatCompletionRequest) -> int:
    """The prompt estimate of a whole request: its messages, images and what a backend puts in the
    prompt besides them (tool schemas — an agent's 24 tools are ~15,000 tokens — and an output
    schema)."""
    n = prompt_tokens(req.messages) + IMAGE_TOKENS * image_count(req.messages)
    for extra in (req.tools, req.response_format):
        if extra:
            n += math.ceil(
                _json_bytes(extra if isinstance(extra, list) else extra.model_dump(exclude_none=True))
                / CHARS_PER_TOKEN
            )
    return n


def prompt_bytes(req: ChatCompletionRequest) -> int:
    """An upper bound on the prompt's tokens, images aside: the UTF-8 bytes of everything the
    backend turns into prompt tokens (messages with their JSON framing, tools, output format).

    Byte-level BPE tokenizers (GPT, Llama 3, Qwen, ...) and SentencePiece with byte fallback never
    make more tokens than bytes, so a reservation made with this bound covers the real prompt
    whatever the text is (a chars/4 estimate can be beaten 4x by crafted text)."""
    n = 0
    for m in req.messages:
        d = m.model_dump(exclude_none=True)
        if m.has_image():
            d["content"] = [p for p in d["content"] if p.get("type") != "image_url"]
        n += _json_bytes(d)
    for extra in (req.tools, req.tool_choice, req.response_format):
        if extra is not None:
            n += _json_bytes(extra if isinstance(extra, str | list) else extra.model_dump(exclude_none=True))
    return n


def _json_bytes(obj) -> int:
    """The size of `obj` as compact UTF-8 JSON: orjson's (in C: an agent's 15 MB session costs a
    few ms, where the stdlib took ~70 ms on the event loop); the stdlib's for what orjson refuses
    (a lone surrogate from a Python caller: HTTP bodies with one never get here)."""
    if isinstance(obj, list):
        obj = [x.model_dump(exclude_none=True) if hasattr(x, "model_dump") else x for x in obj]
    try:
        return len(orjson.dumps(obj))
    except TypeError:  # orjson.JSONEncodeError
        return len(
            json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        )


def image_count(messages: Sequence[Message]) -> int:
    return sum(m.images() for m in messages)


def routing_text(messages: Sequence[Message], max_chars: int = 2000, strip: Stripper | None = None) -> str:
    """The text a policy sees: the latest *human* ask.

    Agents put tool results and injected reminders where the person's words would be: the last
    user turn is often a tool result or a `<system-reminder>` block. So: skip `tool` turns, strip
    injected blocks (`strip`, config `routing.strip_patterns`), and take the last user turn with
    text left. When no turn has any, the system prompt plus the last turn stand in.

    A long text keeps its head and its tail: the task statement is often at the end of a pasted
    document ("... summarise the above"), the context at the start.

    Time is linear in the messages' text whatever it holds (`Stripper`).
    """
    stripper = STRIP_DEFAULT if strip is None else strip
    text = ""
    for m in reversed(messages):
        if m.role != "user":
            continue
        text = stripper(m.text(), max_chars)
        if text:
            break
    if not text:
        system = " ".join(m.text() for m in messages if m.role in ("system", "developer"))
        text = stripper(f"{system}\n{messages[-1].text()}".strip(), max_chars)
    return encodable(head_tail(text, max_chars))


def head_tail(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + "\n...\n" + text[-half:]


_LAZY_ANY = ".*?"
_REGEX_SYNTAX = frozenset("\\.^$*+?{}[]|()")


class Stripper:
    """Removes injected blocks from a text in time linear in the text.

    A pattern `OPEN.*?CLOSE` whose two ends are plain text (the default,
    `<system-reminder>.*?</system-reminder>`) is removed by a scan with `str.find`: the regex
    engine would try every `OPEN` against the rest of the text, quadratic when the text repeats
    `OPEN` without `CLOSE` (a 1 MB body held the event loop for minutes). Any other pattern runs
    on a bounded text only: the head and tail (`REGEX_WINDOW` times the routing text's length)
    of what the scans left, which holds everything the routing text keeps."""

    REGEX_WINDOW = 4

    def __init__(self, patterns: Sequence[str]):
        self.tags: list[tuple[str, str]] = []
        self.regexes: list[re.Pattern] = []
        for p in patterns:
            tag = _literal_tag(p)
            if tag is not None:
                self.tags.append(tag)
            else:
                self.regexes.append(re.compile(p, re.DOTALL))

    def __call__(self, text: str, max_chars: int = 2000) -> str:
        for open_, close in self.tags:
            text = _strip_tag(text, open_, close)
        if self.regexes:
            text = head_tail(text, self.REGEX_WINDOW * max_chars)
            for p in self.regexes:
                text = p.sub("", text)
        return text.strip()


def _literal_tag(pattern: str) -> tuple[str, str] | None:
    """(OPEN, CLOSE) when `pattern` is `OPEN.*?CLOSE` with no other regex syntax, else None."""
    open_, sep, close = pattern.partition(_LAZY_ANY)
    if not sep or not open_ or not close or _REGEX_SYNTAX & set(open_ + close):
        return None
    return open_, close


def _strip_tag(text: str, open_: str, close: str) -> str:
    """`re.sub(OPEN.*?CLOSE, "", text, flags=DOTALL)` in one pass: each match starts at the next
    OPEN and ends at the first CLOSE after it; once no CLOSE follows, nothing further matches."""
    parts: list[str] = []
    pos = 0
    while (start := text.find(open_, pos)) >= 0:
        end = text.find(close, start + len(open_))
        if end < 0:
            break
        parts.append(text[pos:start])
        pos = end + len(close)
    if not parts:
        return text
    parts.append(text[pos:])
    return "".join(parts)


def compile_strip(patterns: Sequence[str]) -> Stripper:
    return Stripper(patterns)


STRIP_DEFAULT = compile_strip(RoutingSettings().strip_patterns)


def encodable(text: str) -> str:
    """`text` with lone surrogates replaced: what a tokenizer can take (the HTTP edge already
    refuses them; Python callers of the SDK can still pass them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def required_capabilities(req: ChatCompletionRequest) -> set[str]:
    caps = set()
    if req.tools:
        caps.add("tools")
    if any(m.has_image() for m in req.messages):
        caps.add("vision")
    if req.response_format and req.response_format.type in {"json_object", "json_schema"}:
        caps.add("json")
    return caps


def to_constraints(controls: RoutingControls | None) -> Constraints:
    c = controls or RoutingControls()
    return Constraints(
        max_cost_usd=c.max_cost_usd,
        max_latency_ms=c.max_latency_ms,
        min_quality=c.min_quality,
        allowed_models=frozenset(c.allowed_models) if c.allowed_models is not None else None,
        excluded_models=frozenset(c.excluded_models),
    )


def output_cap(spec: ModelSpec, cap: int, prompt_tokens: int) -> int:
    """`cap` (what the model writes at most for this request) lowered to what its context window
    leaves after the prompt."""
    return max(1, min(cap, spec.context_window - prompt_tokens))


def exclusions(
    specs: Sequence[ModelSpec],
    *,
    unavailable: Mapping[str, str],
    status: Mapping[str, ModelStatus],
    prompt_tokens: int,
    output_tokens: int | None,
    capabilities: set[str],
    key_models: frozenset[str] | None = None,
) -> dict[str, list[Exclusion]]:
    """Per model, the reasons it cannot serve this request (empty list = fine)."""
    out: dict[str, list[Exclusion]] = {}
    for s in specs:
        reasons: list[Exclusion] = []
        if s.name in unavailable:
            reasons.append(
                Exclusion("unavailable", f"{s.name} is unavailable: {unavailable[s.name]}", SERVICE)
            )
        st = status.get(s.name)
        if st is not None and not st.routable:
            reasons.append(Exclusion("circuit_open", f"{s.name} is failing (circuit open)", SERVICE))
        if key_models is not None and s.name not in key_models:
            reasons.append(Exclusion("key_models", f"this API key may not use {s.name}"))
        # a long max_tokens is capped to what the model writes and the window leaves (the cap is
        # reported), not a reason to exclude it: only a prompt that leaves no room for an answer is
        need = prompt_tokens + min(
            output_tokens or 1, MIN_ANSWER_ROOM, s.max_output_tokens or MIN_ANSWER_ROOM
        )
        if need > s.context_window:
            reasons.append(
                Exclusion(
                    "context_window",
                    f"{s.name} context window is {s.context_window} tokens; this request needs ~{need}",
                )
            )
        missing = capabilities - set(s.capabilities)
        if missing:
            reasons.append(Exclusion("capabilities", f"{s.name} lacks {', '.join(sorted(missing))}"))
        out[s.name] = reasons
    return out
