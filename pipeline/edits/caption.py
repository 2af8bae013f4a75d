"""Stage ``caption`` (EDITS step 1): a VLM actor pool captions every real image, once.

Images stream from the read tasks into the captioner actors (``map_batches`` with an
``ActorPoolStrategy``); only ``path, caption, error`` come back to the driver, which appends
them to the cache every ``edits.caption_flush_rows`` rows. The cache is parquet parts keyed
by (image path, captioner-settings hash incl. the class name), so a re-run, a crash
restart or ``--from-stage`` never captions an image twice with the same settings.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from actors.captioner import Captioner
from pipeline.core.actor_stage import ActorStage
from pipeline.core.image_index import ImageIndex
from pipeline.core.keys import settings_hash
from pipeline.core.read import read_parquet
from pipeline.core.skips import check_class_counts
from pipeline.core.write import write_parquet
from pipeline.edits import prompts
from pipeline.edits.state import EditsRun, StageState, stage_keys

# what a caption depends on (see pipeline/edits/state.py); the CLIP model only through the tokenizer that
# caps a caption at edits.caption_max_tokens, so switching CLIP checkpoints that share one keeps the captions
DEPENDS_ON = ("input:fingerprint", "input:data_root", "input:class_names",
              "models.vlm", "input:weights:vlm", "models.vlm_backend", "input:vllm:vlm", "models.dtype",
              "input:device",
              "input:model_batch:caption", "input:clip_tokenizer", "edits.caption_style",
              "edits.caption_prompt",
              "edits.caption_prefix", "edits.caption_max_tokens", "edits.require_class_name",
              "edits.caption_image_size")
# which images there are is not part of a cached caption's key (rows are keyed by path and class name)
NOT_IN_ROW_KEY = ("input:fingerprint", "input:data_root", "input:class_names")


def cache_settings_hash(key: dict[str, Any]) -> str:
    """The captioner part of the stage key (which images and the name table excluded: ``NOT_IN_ROW_KEY``)."""
    return settings_hash({k: v for k, v in key.items() if k not in NOT_IN_ROW_KEY})


def row_key(settings: str, class_name: str) -> str:
    return settings_hash([settings, class_name])


class CaptionCache:
    """Captions keyed by (path, key) in ``folder/part-*.parquet``; ``flush`` appends one part."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.rows: dict[tuple[str, str], str] = {}
        self.pending: list[tuple[str, str, str]] = []
        for part in sorted(self.folder.glob("part-*.parquet")):
            cols = read_parquet(part)
            for p, k, c in zip(cols["path"], cols["key"], cols["caption"]):
                self.rows[(str(p), str(k))] = str(c)

    def get(self, path: str, key: str) -> str | None:
        return self.rows.get((path, key))

    def put(self, path: str, key: str, caption: str) -> None:
        self.rows[(path, key)] = caption
        self.pending.append((path, key, caption))

    def flush(self) -> int:
        if not self.pending:
            return 0
        n = len(self.pending)
        paths, keys, caps = (list(x) for x in zip(*self.pending))
        write_parquet(self.folder / f"part-{time.time_ns()}-{os.getpid()}.parquet",
                      {"path": paths, "key": keys, "caption": caps})
        self.pending = []
        return n

    def __len__(self) -> int:
        return len(self.rows)


def caption_key(run: EditsRun) -> dict[str, Any]:
    """The caption stage's settings key (it has no upstream stage, so its own declaration is enough)."""
    return stage_keys(run, {"caption": DEPENDS_ON})["caption"]


def load_captions(run: EditsRun, key: dict[str, Any]) -> dict[str, str]:
    """path -> caption for every image of the run that has one (skipped images have none)."""
    cache = CaptionCache(run.paths.captions)
    h = cache_settings_hash(key)
    keys = {c: row_key(h, run.names[c]) for c in run.index.classes}
    out = {}
    for r in run.index.records:
        cap = cache.get(r.path, keys[r.class_id])
        if cap is not None:
            out[r.path] = cap
    return out


def caption_stage(run: EditsRun) -> ActorStage:
    """The captioner pool (transformers backend): decode tasks at ``edits.caption_image_size`` ->
    ``Captioner``."""
    cfg, e = run.cfg, run.cfg.edits
    ctor = {"model_ref": cfg.models.vlm, "class_names": run.names, "zoo_dir": run.zoo_dir,
            "dtype": cfg.models.dtype,
            "style": e.caption_style, "max_tokens": e.caption_max_tokens, "instruction": e.caption_prompt,
            "prefix": e.caption_prefix, "require_class_name": e.require_class_name,
            "count_tokenizer_ref": cfg.models.clip, "faults": run.faults(),
            "micro_batch": cfg.ray.micro_batch_sizes.get("caption")}
    return ActorStage("caption", Captioner, ctor, decode={"size": e.caption_image_size})


def _caption_dataset(run: EditsRun, todo: list[Any]) -> Any:
    """The Ray Dataset of captions for ``todo`` records (decode tasks -> captioner actors)."""
    cfg, e = run.cfg, run.cfg.edits
    sub = ImageIndex(run.index.root, run.index.classes, todo)
    if cfg.models.vlm_backend == "vllm":
        from actors.captioner import vllm_caption_dataset
        from pipeline.core.pools import role_plan
        from pipeline.core.read import image_dataset

        bs = int(cfg.ray.batch_sizes.get("caption", 8))
        return vllm_caption_dataset(image_dataset(sub, e.caption_image_size, batch_size=bs), cfg.models.vlm,
                                    run.names, e.caption_max_tokens, e.caption_prompt,
                                    batch_size=bs, concurrency=role_plan(cfg, "caption").size,
                                    engine_kwargs=cfg.models.vllm_engine_kwargs,
                                    processor_kwargs=cfg.models.vllm_processor_kwargs, zoo_dir=run.zoo_dir,
                                    style=e.caption_style)
    return caption_stage(run).dataset(cfg, sub.rows())


def run_stage(run: EditsRun, state: StageState, force: bool) -> dict[str, Any]:
    cfg, e = run.cfg, run.cfg.edits
    state.begin(lambda: None, force)  # the cache is never cleared: keys make stale entries unreachable
    cache = CaptionCache(run.paths.captions)
    h = cache_settings_hash(state.key)
    keys = {c: row_key(h, run.names[c]) for c in run.index.classes}
    todo = [r for r in run.index.records if cache.get(r.path, keys[r.class_id]) is None]
    cached = len(run.index.records) - len(todo)
    run.log(f"[edits] caption: {cached} cached, {len(todo)} to caption")
    count_tok = None
    if cfg.models.vlm_backend == "vllm":
        from actors.captioner import load_count_tokenizer

        count_tok = load_count_tokenizer(cfg.models.clip, run.zoo_dir)
    made = 0
    if todo:
        ds = _caption_dataset(run, todo)
        since_flush = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for p, c, cap, err in zip(batch["path"], batch["class_id"], batch["caption"], batch["error"]):
                if err:
                    run.skips.add(str(p), str(err), "caption")
                    continue
                cap = str(cap)
                if count_tok is not None:  # vLLM output is raw: clean it here
                    name = run.names[str(c)]
                    cap = prompts.clean_generated(cap, name, e.caption_max_tokens, count_tok,
                                                  fallback=prompts.primary_name(name),
                                                  require_class_name=e.require_class_name)
                cache.put(str(p), keys[str(c)], cap)
                since_flush += 1
                made += 1
            if since_flush >= e.caption_flush_rows:
                cache.flush()
                run.skips.write()
                since_flush = 0
        cache.flush()
        run.skips.write()
    captions = load_captions(run, state.key)
    counts = {c: 0 for c in run.index.classes}
    for r in run.index.records:
        if r.path in captions:
            counts[r.class_id] += 1
    run.skips.check(len(run.index.records), cfg.data.max_skipped_fraction)
    check_class_counts(counts, e.ipc, e.small_class_policy)
    lengths = [len(c.split()) for c in captions.values()]
    return {"images": len(run.index.records), "captioned": len(captions), "captioned_now": made,
            "cached": cached, "skipped": len(run.index.records) - len(captions),
            "mean_words": float(np.mean(lengths)) if lengths else 0.0, "per_class": counts}
