"""Stage ``prototype`` (EDITS steps 6-7): an image prototype and a text prototype per cluster.

- Image prototype: the ``k_image`` LSA-selected members are decoded at
  ``edits.vae_resolution``, encoded by a VAE actor pool (``latent_dist.mode() *
  scaling_factor``) and averaged per cluster in the driver (``average_latents``, step 6)
  as they stream back; a cluster's ``latents/<key>.pt`` is written when its last member arrives.
- Text prototype (``edits.text_prototype: llm``): the ``k_text`` members' captions go to the LLM (actor pool
for the
  transformers / openai backends, ``ray.data.llm`` for vLLM) with our summary instruction;
  the answer is cleaned and capped at ``edits.max_tokens`` tokens of the generator's CLIP
  tokenizer, and falls back to the nearest caption when the LLM returns nothing usable.
  ``class_prompt`` is the paper's ablation without text prototypes: ``edits.class_prompt``
  for every cluster, no LLM.
  Each batch's texts are appended to ``texts.journal.jsonl`` (one fsync'd append), and ``texts.json``
  is written once at the end; ``load_texts`` reads both, so a killed run loses no finished batch.

The two halves have their own settings hash: changing the LLM keeps the latents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actors.captioner import load_count_tokenizer
from actors.llm import LLMActor, summarize_with_vllm
from actors.vae import VaeEncoder
from pipeline.core.actor_stage import ActorStage
from pipeline.core.batching import batch_blocks
from pipeline.core.grouping import complete_groups
from pipeline.core.journal import append_records, read_journal
from pipeline.core.pools import role_plan
from pipeline.core.seeds import stage_seed
from pipeline.core.write import atomic_torch_save, atomic_write_json, component_name, remove
from pipeline.edits import prompts
from pipeline.edits.state import EditsRun, StageState

# what each half depends on (see pipeline/edits/state.py); each half has its own state
DEPENDS_ON = {
    "image": ("stage:cluster", "input:prototype_vae", "edits.vae_source", "edits.vae_resolution",
              "models.dtype",
              "models.channels_last", "input:device", "input:model_batch:vae", "edits.resize_mode",
              "edits.vae_resample"),
    "text": ("stage:cluster", "input:class_names", "models.llm", "input:weights:llm", "models.llm_backend",
             "input:llm_endpoint",
             "input:vllm:llm", "models.dtype", "input:device", "input:model_batch:llm",
             "edits.llm_pad_tokens",
             "edits.summary_prompt", "edits.max_tokens", "edits.llm_temperature", "edits.seed",
             "edits.require_class_name", "input:sd_tokenizer", "input:text_source"),
}


def average_latents(latents: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """The image prototype: the element-wise mean of the members' latents ``[C, h, w]``."""
    arr = np.asarray(latents, dtype=np.float64)
    if arr.ndim != 4 or len(arr) == 0:
        raise ValueError(f"need latents [K, C, h, w] with K >= 1, got shape {arr.shape}")
    return arr.mean(axis=0).astype(np.float32)


def decode_kwargs(e: Any) -> dict[str, Any]:
    """How member images are decoded for the VAE: ``edits.vae_resolution``, ``resize_mode``,
    ``vae_resample``."""
    return {"size": e.vae_resolution, "mode": e.resize_mode, "resample": e.vae_resample}


def latent_file(run: EditsRun, key: str) -> Path:
    return run.paths.latents / f"{component_name(key)}.pt"


def all_clusters(run: EditsRun) -> list[dict[str, Any]]:
    """Every cluster of the run, in label order, with its class id and label."""
    # start-up: threadpoolctl (not loaded when this module is imported)
    from pipeline.edits.buffer import load_clusters

    out = []
    for c, info in load_clusters(run)["classes"].items():
        for cl in info["clusters"]:
            out.append({**cl, "class_id": c, "label": info["label"]})
    return sorted(out, key=lambda x: (x["label"], x["cluster"]))


def _vae_ref(run: EditsRun) -> tuple[str, str | None]:
    """``models.vae``, or with ``vae_source=sd`` the generator's own VAE (the fine-tuned one when enabled)."""

    m, e = run.cfg.models, run.cfg.edits
    return (run.generator_ref(), "vae") if e.vae_source == "sd" else (m.vae, None)


def vae_stage(run: EditsRun) -> ActorStage:
    """The VAE pool: decode tasks at ``edits.feature_image_size`` -> ``VaeEncoder`` (rows: member path,
    cluster key)."""
    cfg = run.cfg
    ref, sub = _vae_ref(run)
    ctor = {"model_ref": ref, "zoo_dir": run.zoo_dir, "subfolder": sub, "dtype": cfg.models.dtype,
            "channels_last": cfg.models.channels_last, "faults": run.faults(),
            "micro_batch": cfg.ray.micro_batch_sizes.get("vae")}
    return ActorStage("vae", VaeEncoder, ctor, decode=decode_kwargs(cfg.edits))


def image_prototypes(run: EditsRun, clusters: list[dict[str, Any]]) -> int:
    """Write ``latents/<key>.pt`` for every cluster that lacks one; returns how many were made."""
    cfg = run.cfg
    todo = [cl for cl in clusters if not latent_file(run, cl["key"]).exists()]
    if not todo:
        return 0
    expected = {cl["key"]: len(cl["image_members"]) for cl in todo}
    info = {cl["key"]: cl for cl in todo}
    rows = [{"path": p, "key": cl["key"]} for cl in todo for p in cl["image_members"]]
    ds = vae_stage(run).dataset(cfg, rows)
    made = 0
    run.paths.latents.mkdir(parents=True, exist_ok=True)
    batches = ds.iter_batches(batch_size=None, batch_format="numpy")
    for key, members in complete_groups(batches, "key", expected,
                                        lambda b, i: (str(b["path"][i]), np.asarray(b["latent"][i])),
                                        lambda path, err: run.skips.add(path, err, "prototype")):
        if not members:
            from pipeline.errors import DataError

            raise DataError(f"prototype: no member image of cluster {key} could be encoded")
        atomic_torch_save(latent_file(run, key), {
            "latent": torch.from_numpy(average_latents([lat for _, lat in members])), "key": key,
            "class_id": info[key]["class_id"], "members": [p for p, _ in members]})
        made += 1
    return made


def load_texts(run: EditsRun) -> dict[str, dict[str, Any]]:
    """key -> text prototype: ``texts.json`` plus the batches a killed run appended to its journal."""
    try:
        texts = json.loads(run.paths.texts.read_text())
    except (OSError, json.JSONDecodeError):
        texts = {}
    for rec in read_journal(run.paths.texts_journal):
        texts[rec["key"]] = rec["value"]
    return texts


def _save_texts(run: EditsRun, texts: dict[str, dict[str, Any]]) -> None:
    """``texts.json`` with every prototype, then the journal (now folded into it) removed."""
    atomic_write_json(run.paths.texts, dict(sorted(texts.items())))
    remove(run.paths.texts_journal)


def text_rows(run: EditsRun, clusters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One LLM request per cluster: our instruction over its ``k_text`` captions (quoted as data)."""
    e = run.cfg.edits
    rows = []
    for cl in clusters:
        name = run.names[cl["class_id"]]
        msgs = prompts.summary_messages(name, cl["text_captions"], e.max_tokens, e.summary_prompt)
        rows.append({"key": cl["key"], "class_id": cl["class_id"], "class_name": name,
                     "system": msgs[0]["content"], "user": msgs[1]["content"],
                     "fallback": (cl["text_captions"][0] if cl["text_captions"]
                                  else prompts.primary_name(name)),
                     "seed": stage_seed(e.seed, f"llm:{cl['key']}")})
    return rows


def class_prompt_texts(run: EditsRun, todo: list[dict[str, Any]], texts: dict[str, dict[str, Any]]) -> int:
    """The ablation without text prototypes: every cluster's prompt is ``edits.class_prompt`` (no
    captions)."""
    for cl in todo:
        texts[cl["key"]] = {"text": prompts.class_prompt(run.names[cl["class_id"]],
                                                         run.cfg.edits.class_prompt),
                            "raw": "", "class_id": cl["class_id"], "caption_ids": [],
                            "backend": "class_prompt", "model": None}
    _save_texts(run, texts)
    return len(todo)


def llm_stage(run: EditsRun) -> ActorStage:
    """The LLM pool (transformers or openai backend): ``LLMActor`` over ``text_rows`` (no decode)."""
    cfg, e, m = run.cfg, run.cfg.edits, run.cfg.models
    ctor = {"backend": m.llm_backend, "model_ref": m.llm, "zoo_dir": run.zoo_dir, "dtype": m.dtype,
            "url": m.llm_url, "api_key_env": e.llm_api_key_env, "timeout_s": e.llm_timeout_s,
            "max_tokens": e.max_tokens, "temperature": e.llm_temperature,
            "require_class_name": e.require_class_name, "count_tokenizer_ref": run.generator_ref(),
            "count_tokenizer_subfolder": "tokenizer", "faults": run.faults(),
            "micro_batch": cfg.ray.micro_batch_sizes.get("llm"), "pad_to": e.llm_pad_tokens}
    # openai: an HTTP client, no model in the actor, little CPU
    remote = ({"num_cpus": min(cfg.ray.actor_num_cpus, 0.25),
               "num_gpus": None} if m.llm_backend == "openai" else {})
    return ActorStage("llm", LLMActor, ctor, threads=e.llm_torch_threads, remote=remote)


def text_prototypes(run: EditsRun, clusters: list[dict[str, Any]]) -> int:
    """Fill ``texts.json`` for every cluster without a text prototype; returns how many were made."""
    import ray.data

    cfg, e, m = run.cfg, run.cfg.edits, run.cfg.models
    texts = load_texts(run)
    todo = [cl for cl in clusters if cl["key"] not in texts]
    if not todo:
        if run.paths.texts_journal.exists():  # a run killed after its last batch: fold the journal
            _save_texts(run, texts)
        return 0
    if e.text_prototype == "class_prompt":
        return class_prompt_texts(run, todo, texts)
    rows = text_rows(run, todo)
    by_key = {cl["key"]: cl for cl in todo}
    bs = int(cfg.ray.batch_sizes.get("llm", 8))
    count_tok = None
    if m.llm_backend == "vllm":
        ds = ray.data.from_items(rows, override_num_blocks=batch_blocks(len(rows), bs))
        ds = summarize_with_vllm(ds, m.llm, e.max_tokens, e.llm_temperature, batch_size=bs,
                                 concurrency=role_plan(cfg, "llm").size,
                                 engine_kwargs=m.vllm_engine_kwargs, processor_kwargs=m.vllm_processor_kwargs,
                                 zoo_dir=run.zoo_dir)
        count_tok = load_count_tokenizer(run.generator_ref(), run.zoo_dir, "tokenizer", role="sd")
    else:
        ds = llm_stage(run).dataset(cfg, rows)
    made = 0
    run.paths.texts_journal.parent.mkdir(parents=True, exist_ok=True)
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        batch: list[dict[str, Any]] = []
        for i in range(len(b["key"])):
            k, raw = str(b["key"][i]), str(b["raw"][i])
            if count_tok is not None or "text" not in b:
                text = prompts.clean_generated(raw, str(b["class_name"][i]), e.max_tokens, count_tok,
                                               fallback=str(b["fallback"][i]),
                                               require_class_name=e.require_class_name)
            else:
                text = str(b["text"][i])
            cl = by_key[k]
            texts[k] = {"text": text, "raw": raw, "class_id": cl["class_id"],
                        "caption_ids": cl["text_members"], "backend": m.llm_backend, "model": m.llm}
            batch.append({"key": k, "value": texts[k]})
            made += 1
        append_records(run.paths.texts_journal, batch)  # durable per batch, costs the batch, not every text
    _save_texts(run, texts)
    return made


def run_stage(run: EditsRun, state: StageState, force: bool) -> dict[str, Any]:
    state.begin(lambda: None, force)
    clusters = all_clusters(run)
    img_state = StageState(run.paths.art, "prototype.image", state.key["image"])
    img_state.begin(lambda: remove(run.paths.latents), force)
    made_img = image_prototypes(run, clusters)
    img_state.finish({"made": made_img})
    txt_state = StageState(run.paths.art, "prototype.text", state.key["text"])
    txt_state.begin(lambda: remove(run.paths.texts, run.paths.texts_journal), force)
    made_txt = text_prototypes(run, clusters)
    txt_state.finish({"made": made_txt})
    texts = load_texts(run)
    fallbacks = sum(1 for cl in clusters if texts[cl["key"]]["text"] == (cl["text_captions"] or [""])[0])
    return {"clusters": len(clusters), "latents_now": made_img, "texts_now": made_txt,
            "texts_equal_to_a_caption": fallbacks}
