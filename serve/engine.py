"""The replica's vLLM async engine: tokenize, check the context window, generate or stream.

`AsyncLLM` runs the engine core in a child process (it needs multiprocessing; inside a Ray
actor vLLM spawns it) and batches every request in flight on the replica together
(continuous batching): concurrent HTTP requests share forward passes.

With one device per engine (tensor_parallel_size 1) the model runs inside that engine-core
process (VLLM_ENABLE_V1_MULTIPROCESSING=0 selects vLLM's in-process executor) instead of in a
third process: on CPU vLLM otherwise spawns a worker process and pins it to cores of its own
choosing. Measured here on 2 busy cores (tiny model): the engine started in 25-40 s instead of
65-96 s, and `vllm serve` itself run this way gave 1.25-1.9x the tokens/s of its default in
bench/serve.py. The engine runs as many threads as Ray gives the replica CPUs (Ray sets
OMP_NUM_THREADS), so replicas sharing a node do not fight over the same cores.

Prompts are tokenized here with the model's tokenizer and handed to the engine as token ids, so
the context-window check counts exactly the tokens the engine will see.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from rlhf.config.tree import Config
from serve.openai_api import ApiError


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def _finish(reason) -> str:
    return {"stop": "stop", "length": "length", None: "stop"}.get(reason, str(reason))


def _engine_down(exc: Exception) -> ApiError:
    return ApiError(503, f"the engine cannot take requests right now ({type(exc).__name__}); retry shortly",
                    type="server_error", code="engine_unavailable")


def keep_serve_logging() -> None:
    """Import vLLM without letting it reconfigure logging. vLLM's first import runs
    logging.config.dictConfig, which closes every handler already set up, Ray Serve's buffered
    access-log handler included; that handler then keeps every request's log record in memory
    (2.7 KiB a request, measured with bench/serve_soak.py) and the replica's log file stops. vLLM
    logs through a stream handler of its own instead (Ray writes it to the worker's log)."""
    if "vllm" in sys.modules or os.environ.get("VLLM_CONFIGURE_LOGGING") is not None:
        return
    os.environ["VLLM_CONFIGURE_LOGGING"] = "0"
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"))
    vllm_log = logging.getLogger("vllm")
    vllm_log.addHandler(handler)
    vllm_log.setLevel(logging.INFO)
    vllm_log.propagate = False


class QAEngine:
    """One AsyncLLM plus its tokenizer. Public: encode_*, sampling, generate, stream, health."""

    def __init__(self, model_path: str, cfg: Config):
        keep_serve_logging()
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(cfg.rollout.kv_cache_gib))))
        if cfg.rollout.tensor_parallel_size == 1:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # read by the engine-core process
        from transformers import AutoConfig, AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        model_max = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
        self.max_model_len = min(cfg.serve.max_model_len, model_max or cfg.serve.max_model_len)
        started = time.perf_counter()
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(
            model=model_path,
            dtype=cfg.model.dtype,
            enforce_eager=cfg.rollout.enforce_eager,
            max_model_len=self.max_model_len,
            tensor_parallel_size=cfg.rollout.tensor_parallel_size,
            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
            seed=cfg.train.seed,
        ), usage_context=UsageContext.OPENAI_API_SERVER)  # the batching defaults of `vllm serve`
        self.start_seconds = time.perf_counter() - started
        self.active = 0  # requests generating now; a swapped-out engine drains to 0 before it stops
        self.version = ""  # the registry's name for these weights ("" outside a registry)

    # ------------------------------------------------------------------ prompts

    def encode_chat(self, messages: list[dict]) -> list[int]:
        from rlhf.data.prompts import with_system_prompt

        messages = with_system_prompt(messages, self.cfg.model.system_prompt)
        if getattr(self.tokenizer, "chat_template", None):
            try:
                ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            except Exception as exc:  # a template that rejects these roles or this order (jinja raises)
                raise ApiError(400, f"messages cannot be rendered with this model's chat template: {exc}",
                               param="messages", code="invalid_value") from None
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return self.encode_text(text)

    def encode_question(self, question: str) -> list[int]:
        from rlhf.data.prompts import render_prompt

        m = self.cfg.model
        return self.encode_text(render_prompt(self.tokenizer, question, m.system_prompt, m.chat_template))

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    # ------------------------------------------------------------------ sampling

    def sampling(self, req, n_prompt: int, param: str, temperature: float | None = None):
        """SamplingParams for a request, after checking max_tokens and the context window."""
        from vllm import SamplingParams

        s = self.cfg.serve
        asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
        if asked is not None and not 1 <= asked <= s.max_tokens_limit:
            raise ApiError(400, f"max_tokens must be between 1 and {s.max_tokens_limit}, got {asked}",
                           param="max_tokens", code="invalid_value")
        room = self.max_model_len - n_prompt
        if room < 1:
            raise ApiError(400, f"the prompt is {n_prompt} tokens; this model's context window is "
                                f"{self.max_model_len} tokens", param=param, code="context_length_exceeded")
        if asked is not None and asked > room:
            raise ApiError(400, f"the prompt ({n_prompt} tokens) plus max_tokens ({asked}) is more than this "
                                f"model's context window of {self.max_model_len} tokens",
                           param="max_tokens", code="context_length_exceeded")
        max_tokens = asked if asked is not None else min(s.default_max_tokens, room)
        if req.min_tokens > max_tokens:
            raise ApiError(400, f"min_tokens ({req.min_tokens}) is more than max_tokens ({max_tokens})",
                           param="min_tokens", code="invalid_value")
        temp = req.temperature if req.temperature is not None else (1.0 if temperature is None else temperature)
        try:
            return SamplingParams(
                max_tokens=max_tokens, temperature=temp, top_p=1.0 if req.top_p is None else req.top_p,
                stop=req.stop, seed=req.seed, presence_penalty=req.presence_penalty or 0.0,
                frequency_penalty=req.frequency_penalty or 0.0, ignore_eos=req.ignore_eos,
                min_tokens=req.min_tokens)
        except ValueError as exc:
            raise ApiError(400, f"invalid sampling parameters: {exc}", code="invalid_value") from None

    # ------------------------------------------------------------------ generation

    async def generate(self, ids: list[int], params, request_id: str) -> Completion:
        """The whole answer at once (the engine sends only the final output)."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.FINAL_ONLY
        final = None
        self.active += 1
        try:
            async for out in self.llm.generate(TokensPrompt(prompt_token_ids=ids), params, request_id=request_id):
                final = out
        except Exception as exc:  # the engine died or refused: 503, and the health check notices
            raise _engine_down(exc) from exc
        finally:
            self.active -= 1
        sample = final.outputs[0]
        return Completion(sample.text, _finish(sample.finish_reason), len(ids), len(sample.token_ids))

    async def stream(self, ids: list[int], params, request_id: str) -> AsyncIterator[tuple[str, str | None, int]]:
        """Yields (new text, finish reason or None, completion tokens so far). Closing the iterator
        (a client that went away) aborts the request in the engine."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.DELTA
        produced = 0
        self.active += 1
        try:
            async for out in self.llm.generate(TokensPrompt(prompt_token_ids=ids), params, request_id=request_id):
                sample = out.outputs[0]
                produced += len(sample.token_ids)
                yield sample.text, (_finish(sample.finish_reason) if out.finished else None), produced
        except Exception as exc:  # cancellation (a client gone) is a BaseException and passes through
            raise _engine_down(exc) from exc
        finally:
            self.active -= 1

    async def check_health(self) -> None:
        await self.llm.check_health()

    def shutdown(self) -> None:
        self.llm.shutdown()

    async def drain_and_shutdown(self, grace_s: float = 5.0, timeout_s: float = 120.0) -> None:
        """Stop once the requests already on this engine have finished (a swapped-out engine).
        `grace_s` first: a request that took this engine just before the swap may still be in
        its input guard, not yet generating."""
        import asyncio

        await asyncio.sleep(grace_s)
        deadline = time.monotonic() + timeout_s
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        self.shutdown()
