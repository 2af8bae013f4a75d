"""Stage ``embed`` (EDITS step 2): CLIP image and caption features, one parquet file per class.

Images stream through decode tasks into a CLIP actor pool; the actors drop the pixels and
return ``path, class_id, label, caption, img_feat, txt_feat``. The driver groups rows by
class and writes ``features/<class>.parquet`` as soon as a class is complete, so a crash
loses at most the classes in flight and a re-run embeds only the missing classes.
Features are stored raw (the cluster stage normalises them only with ``edits.feature_normalize``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from actors.clip_embedder import ClipEmbedder
from pipeline.core.actor_stage import ActorStage
from pipeline.core.grouping import complete_groups
from pipeline.core.read import read_parquet
from pipeline.core.write import component_name, remove, write_parquet
from pipeline.edits.caption import caption_key, load_captions
from pipeline.edits.state import EditsRun, StageState

# what the features depend on (see pipeline/edits/state.py)
DEPENDS_ON = ("stage:caption", "models.clip", "input:weights:clip", "models.dtype", "input:device",
              "input:model_batch:embed",
              "edits.feature_image_size", "edits.clip_image_feature", "edits.resize_mode",
              "edits.feature_resample")


def features_file(run: EditsRun, class_id: str) -> Path:
    return run.paths.features / f"{component_name(class_id)}.parquet"


def load_features(run: EditsRun, class_id: str) -> dict[str, np.ndarray]:
    """One class's rows: path, label, caption, img ``[N, D]``, txt ``[N, D]`` (in path order)."""
    return read_parquet(features_file(run, class_id))


def decode_kwargs(e: Any) -> dict[str, Any]:
    """How images are decoded for CLIP: ``edits.feature_image_size``, ``resize_mode``,
    ``feature_resample``."""
    return {"size": e.feature_image_size, "mode": e.resize_mode, "resample": e.feature_resample}


def _write_class(run: EditsRun, class_id: str, rows: list[dict[str, Any]]) -> None:
    rows = sorted(rows, key=lambda r: r["path"])
    write_parquet(features_file(run, class_id), {
        "path": [r["path"] for r in rows], "class_id": [class_id] * len(rows),
        "label": np.array([r["label"] for r in rows], dtype=np.int64),
        "caption": [r["caption"] for r in rows],
        "img": np.stack([r["img"] for r in rows]).astype(np.float32),
        "txt": np.stack([r["txt"] for r in rows]).astype(np.float32),
    })


def embed_stage(run: EditsRun) -> ActorStage:
    """The CLIP pool: decode tasks at ``edits.feature_image_size`` -> ``ClipEmbedder`` (rows carry the
    caption)."""
    cfg = run.cfg
    ctor = {"model_ref": cfg.models.clip, "zoo_dir": run.zoo_dir, "dtype": cfg.models.dtype,
            "faults": run.faults(),
            "image_feature": cfg.edits.clip_image_feature,
            "micro_batch": cfg.ray.micro_batch_sizes.get("embed")}
    return ActorStage("embed", ClipEmbedder, ctor, decode=decode_kwargs(cfg.edits), default_batch=32)


def run_stage(run: EditsRun, state: StageState, force: bool) -> dict[str, Any]:
    cfg = run.cfg
    state.begin(lambda: remove(run.paths.features), force)
    captions = load_captions(run, caption_key(run))
    todo = [r for r in run.index.records if r.path in captions
            and not features_file(run, r.class_id).exists()]
    expected: dict[str, int] = {}
    for r in todo:
        expected[r.class_id] = expected.get(r.class_id, 0) + 1
    done_before = sum(1 for c in run.index.classes if features_file(run, c).exists())
    run.log(f"[edits] embed: {done_before} classes cached, {len(expected)} to embed ({len(todo)} images)")
    if todo:
        rows = [{"path": r.path, "class_id": r.class_id, "label": r.label,
                 "caption": captions[r.path]} for r in todo]
        ds = embed_stage(run).dataset(cfg, rows)

        def item(b: dict[str, np.ndarray], i: int) -> dict[str, Any]:
            return {"path": str(b["path"][i]), "label": int(b["label"][i]), "caption": str(b["caption"][i]),
                    "img": np.asarray(b["img_feat"][i]), "txt": np.asarray(b["txt_feat"][i])}

        batches = ds.iter_batches(batch_size=None, batch_format="numpy")
        for c, rows_c in complete_groups(batches, "class_id", expected, item,
                                         lambda path, err: run.skips.add(path, err, "embed")):
            if rows_c:  # a class complete (or short after errored blocks): write it, free the memory
                _write_class(run, c, rows_c)
    missing = [c for c in run.index.classes if not features_file(run, c).exists()]
    if missing:
        from pipeline.errors import DataError

        raise DataError(f"embed: no features for classes {missing[:10]} (all their images failed)")
    dims = read_parquet(features_file(run, run.index.classes[0]))["img"].shape[1]
    return {"classes": len(run.index.classes), "embedded_now": len(todo), "dim": int(dims)}
