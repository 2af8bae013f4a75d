"""VLM captioner (EDITS step 1): one caption per real image, naming the exact class.

Backends:
- ``transformers`` (default): any ``AutoModelForImageTextToText`` model with an
  ``AutoProcessor`` (LLaVA-1.5, BLIP, ...). ``caption_style`` ``instruct`` sends our
  instruction through the processor's chat template (decoder-only VLMs: the prompt tokens
  are cut from the output); ``prefix`` lets a captioning model (BLIP) continue
  ``a photo of <class name>,``; ``auto`` picks instruct when a chat template exists.
- ``vllm``: the same messages through ``ray.data.llm`` (``build_processor`` with a
  ``vLLMEngineProcessorConfig``: the chat-template stage, then the engine with the image); see
  ``vllm_caption_dataset``.

Captions are cleaned to one line under ``max_tokens`` tokens of the CLIP tokenizer that
will embed them, and get the class name prepended when the model dropped it
(``edits.require_class_name``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from actors.gpu_defaults import with_sdpa
from actors.loading import load_pretrained, pick_device, pick_dtype, resolve_ref, set_torch_threads
from pipeline.core.faults import FaultInjector
from pipeline.edits import prompts
from pipeline.errors import ConfigError


def load_count_tokenizer(ref: str | None, zoo_dir: str | None = None, subfolder: str | None = None,
                         role: str = "clip") -> Any:
    """The tokenizer used to count a text's tokens (CLIP's: 77 incl. BOS/EOS); None when ``ref`` is None."""
    if not ref:
        return None
    # heavy: transformers (not loaded when this module is imported)
    from transformers import AutoTokenizer

    kw = {"subfolder": subfolder} if subfolder else {}
    tok = load_pretrained(role, ref, AutoTokenizer.from_pretrained, zoo_dir, **kw)
    tok.model_max_length = 1_000_000  # only counts tokens: no "sequence longer than 77" warnings
    return tok


def resolve_style(style: str, processor: Any) -> str:
    if style != "auto":
        return style
    tmpl = getattr(processor, "chat_template", None) or getattr(getattr(processor, "tokenizer", None),
                                                                 "chat_template", None)
    return "instruct" if tmpl else "prefix"


class Captioner:
    """Ray Data actor: ``path, class_id, image, error`` -> ``path, class_id, caption, error``."""

    def __init__(self, model_ref: str, class_names: dict[str, str], zoo_dir: str | None = None,
                 dtype: str = "auto", style: str = "auto", max_tokens: int = 77,
                 instruction: str | None = None, prefix: str = prompts.CAPTION_PREFIX,
                 require_class_name: bool = True, count_tokenizer_ref: str | None = None,
                 faults: dict | None = None, device: str | None = None, micro_batch: int | None = None,
                 torch_threads: int | None = None) -> None:
        # heavy: transformers (not loaded when this module is imported)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        set_torch_threads(torch_threads)

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.processor = load_pretrained("vlm", model_ref, AutoProcessor.from_pretrained, zoo_dir)
        self.model = load_pretrained("vlm", model_ref, with_sdpa(AutoModelForImageTextToText.from_pretrained),
                                     zoo_dir, dtype=self.dtype).to(self.device).eval()
        self.style = resolve_style(style, self.processor)
        tok = getattr(self.processor, "tokenizer", None)
        if self.style == "instruct" and tok is not None:
            tok.padding_side = "left"  # decoder-only generation continues from the right edge
        self.names = dict(class_names)
        self.max_tokens = max_tokens
        self.instruction = instruction
        self.prefix = prefix
        self.require_class_name = require_class_name
        self.count_tok = load_count_tokenizer(count_tokenizer_ref, zoo_dir)
        self.faults = FaultInjector.from_kwargs(faults)
        # fixed model batch + fixed prompt padding: a caption does not depend on the Ray batch
        self.micro_batch = micro_batch
        self.pad_to = self._prompt_length_bound() if micro_batch else None

    def _prompt_length_bound(self) -> int | None:
        """Tokens of the longest prompt over all classes (image tokens included), or None without a tokenizer.

        Every prompt is padded to this length, so a row's pad count depends only on the class
        list, never on which rows share its micro-batch.
        """
        tok = getattr(self.processor, "tokenizer", None)
        if tok is None:
            return None
        texts = self._prompts(sorted(set(self.names.values())) or ["x"])
        text_len = max(len(ids) for ids in tok(texts)["input_ids"])
        probe = self.processor(images=[Image.new("RGB", (32, 32))], text=texts[:1], return_tensors="pt")
        image_extra = int(probe["input_ids"].shape[1]) - len(tok(texts[:1])["input_ids"][0])
        return text_len + max(0, image_extra)

    def _prompts(self, names: list[str]) -> list[str]:
        if self.style == "prefix":
            return [prompts.caption_prefix(n, self.prefix) for n in names]
        out = []
        for n in names:
            text = prompts.caption_instruction(n, self.max_tokens, self.instruction)
            out.append(self.processor.apply_chat_template(caption_messages(text), add_generation_prompt=True))
        return out

    @torch.no_grad()
    def caption_images(self, images: list[Image.Image], names: list[str]) -> list[str]:
        """Raw captions (before cleaning) for PIL images of the named classes."""
        texts = self._prompts(names)
        pad = {"padding": "max_length", "max_length": self.pad_to} if self.pad_to else {"padding": True}
        inputs = self.processor(images=images, text=texts, return_tensors="pt", **pad)
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items()}
        out = self.model.generate(**inputs, max_new_tokens=self.max_tokens, do_sample=False)
        if self.style == "instruct":
            n_in = inputs["input_ids"].shape[1]
            if out.shape[1] > n_in and torch.equal(out[:, :n_in].cpu(), inputs["input_ids"].cpu()):
                out = out[:, n_in:]  # decoder-only: the prompt is echoed
            return self.processor.batch_decode(out, skip_special_tokens=True)
        decoded = self.processor.batch_decode(out, skip_special_tokens=True)
        return [d if d.lower().startswith(t.lower()[: max(1, len(t) - 1)]) else f"{t} {d}"
                for d, t in zip(decoded, texts)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = np.asarray(batch.get("error", [""] * len(batch["path"])), dtype=object)
        ok = [i for i, e in enumerate(errors) if not e]
        captions = np.array([""] * len(errors), dtype=object)
        if ok:
            images = [Image.fromarray(np.asarray(batch["image"][i], dtype=np.uint8)) for i in ok]
            names = [self.names.get(str(batch["class_id"][i]), str(batch["class_id"][i])) for i in ok]
            from pipeline.core.batching import run_fixed

            raw = run_fixed(self.caption_images, [images, names], self.micro_batch)
            for i, r, n in zip(ok, raw, names):
                captions[i] = prompts.clean_generated(r, n, self.max_tokens, self.count_tok,
                                                      fallback=prompts.primary_name(n),
                                                      require_class_name=self.require_class_name)
        self.faults.maybe_fail(batch["path"])
        return {"path": np.asarray(batch["path"], dtype=object),
                "class_id": np.asarray(batch["class_id"], dtype=object), "caption": captions, "error": errors}


def caption_messages(text: str) -> list[dict[str, Any]]:
    """The instruct-style chat: one user turn, the image then the instruction (both backends send this)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def vllm_caption_request(row: dict[str, Any], class_names: dict[str, str], max_tokens: int = 77,
                         instruction: str | None = None) -> dict[str, Any]:
    """One decoded-image row -> a ``ray.data.llm`` request: chat ``messages``, the image, greedy sampling.

    ``messages`` are the transformers backend's (``caption_messages`` of ``prompts.caption_instruction``),
    rendered by the model's chat template in the chat-template stage, so both backends prompt the model
    with the same text; the image goes to the engine as ``multimodal_data`` (a PIL image, as the
    transformers backend hands its processor), and vLLM's multimodal processor expands the template's
    image placeholder (LLaVA's ``<image>``) into the image's tokens.
    A row that failed to decode still goes through, with a blank image, so its error comes back.
    """
    name = class_names.get(str(row["class_id"]), str(row["class_id"]))
    text = prompts.caption_instruction(name, max_tokens, instruction)
    pixels = np.full((8, 8, 3), 255, np.uint8) if row["error"] else np.asarray(row["image"], dtype=np.uint8)
    return {"path": row["path"], "class_id": row["class_id"], "error": row["error"],
            "messages": caption_messages(text), "multimodal_data": {"image": Image.fromarray(pixels)},
            "sampling_params": {"temperature": 0.0, "max_tokens": max_tokens}}


def vllm_caption_row(row: dict[str, Any]) -> dict[str, Any]:
    """A ``ray.data.llm`` output row -> the captioner's row: ``path, class_id, caption (raw), error``."""
    return {"path": row["path"], "class_id": row["class_id"], "error": row["error"],
            "caption": row.get("generated_text") or ""}


def vllm_caption_dataset(ds: Any, model_ref: str, class_names: dict[str, str], max_tokens: int = 77,
                         instruction: str | None = None, batch_size: int = 16, concurrency: int = 1,
                         engine_kwargs: dict | None = None, processor_kwargs: dict | None = None,
                         zoo_dir: str | None = None, style: str = "auto") -> Any:
    """Caption a decoded-image dataset with vLLM through ``ray.data.llm`` (needs the ``vllm`` extra).

    Output rows: ``path, class_id, caption (raw), error``; the caller cleans captions.
    ``model_ref``: a hub id, a local folder or ``zoo:<role>`` (resolved here: vLLM is given the folder).
    ``style``: vLLM always captions through the model's chat template, i.e. ``instruct``
    (``auto`` is taken as that); ``prefix`` is a transformers-backend style and is refused.
    ``processor_kwargs``: extra ``vLLMEngineProcessorConfig`` fields (see ``summarize_with_vllm``).

    Stages: chat template (the model's, over ``vllm_caption_request``'s messages) -> the vLLM engine with
    the text prompt and the image (vLLM tokenizes and runs the model's multimodal processor). Ray Data
    LLM's own prepare-multimodal stage is not used: in Ray 2.60 it imports
    ``vllm.entrypoints.chat_utils``, which vLLM 0.32 moved (to ``vllm.renderers.chat_utils``).
    """
    if style == "prefix":
        raise ConfigError("edits.caption_style=prefix works only with models.vlm_backend=transformers: vLLM "
                          "captions through the model's chat template (set edits.caption_style to auto or "
                          "instruct)")
    try:
        import vllm  # noqa: F401
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    except ImportError as err:
        raise ConfigError(
            f"models.vlm_backend=vllm needs vLLM installed (pip install 'semdistill[vllm]'): {err}") from None
    config = vLLMEngineProcessorConfig(
        model_source=resolve_ref("vlm", model_ref, zoo_dir), batch_size=batch_size, concurrency=concurrency,
        engine_kwargs={"max_model_len": 4096, **(engine_kwargs or {})},
        chat_template_stage=True, tokenize_stage=False, **(processor_kwargs or {}),
    )

    def pre(row: dict[str, Any]) -> dict[str, Any]:
        return vllm_caption_request(row, class_names, max_tokens, instruction)

    processor = build_processor(config, preprocess=pre, postprocess=vllm_caption_row)
    return processor(ds)
