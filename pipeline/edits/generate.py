"""Stage ``generate`` (EDITS step 8): Dual Prototype Guidance with an SD img2img actor pool.

One row per cluster: its prototype latent (the array itself, so generation needs no shared
file system between nodes), its text prototype (prompt) and its
own seed (``image_seed(edits.seed, class_id, cluster)``). Images come back to the driver
and go through ``DistilledSetWriter`` (idempotent per key: a re-run generates only what is
missing). Each manifest entry names its cluster, the members behind the image prototype,
the caption ids (image paths) behind the text prototype, the prompt and the seed.
The generator is the fine-tuned pipeline when ``edits.finetune.enabled``, else ``models.sd``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from actors.sd import SDGenerator, load_latent
from pipeline.core.actor_stage import ActorStage
from pipeline.core.grids import paint_grid
from pipeline.core.seeds import image_seed
from pipeline.core.write import DistilledSetWriter, atomic_save_image, remove
from pipeline.edits.prototype import all_clusters, latent_file, load_texts
from pipeline.edits.state import EditsRun, StageState

# what the distilled set depends on (see pipeline/edits/state.py)
DEPENDS_ON = ("stage:prototype", "input:generator", "models.dtype", "models.channels_last", "models.compile",
              "input:device", "input:model_batch:generate",
              "edits.strength", "edits.guidance_scale", "edits.negative_prompt", "edits.num_inference_steps",
              "edits.scheduler", "edits.seed", "data.image_size", "output.image_format",
              "edits.contact_sheet")


def generate_settings(run: EditsRun) -> dict[str, Any]:
    e = run.cfg.edits
    return {"strength": e.strength, "guidance_scale": e.guidance_scale, "negative_prompt": e.negative_prompt,
            "num_inference_steps": e.num_inference_steps, "image_size": run.cfg.data.image_size}


def build_rows(run: EditsRun, clusters: list[dict[str, Any]],
               texts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The generation request of every cluster: key, class, prototype latent, prompt, seed."""
    rows = []
    for cl in clusters:
        rows.append({"key": cl["key"], "class_id": cl["class_id"], "label": int(cl["label"]),
                     "cluster": int(cl["cluster"]),
                     "latent": load_latent(str(latent_file(run, cl["key"]))).numpy(),
                     "prompt": texts[cl["key"]]["text"],
                     "seed": image_seed(run.cfg.edits.seed, cl["class_id"], int(cl["cluster"]))})
    return rows


def contact_sheet(entries: list[dict[str, Any]], root: Path, out: Path, names: dict[str, str],
                  cell: int = 64, label_width: int = 160) -> Path:
    """A PNG grid: one row per class (its name on the left), its images left to right."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for e in sorted(entries, key=lambda x: (x["label"], x["key"])):
        by_class.setdefault(e["class_id"], []).append(e)
    sheet = paint_grid([[root / e["file"] for e in items] for items in by_class.values()], cell,
                       label_width=label_width, labels=[names.get(cid, cid)[:26] for cid in by_class])
    out.parent.mkdir(parents=True, exist_ok=True)

    atomic_save_image(out, sheet)
    return out


def generate_stage(run: EditsRun) -> ActorStage:
    """The SD img2img pool: ``SDGenerator`` over ``build_rows`` (latent, prompt, seed per cluster; no
    decode)."""
    cfg = run.cfg
    ctor = {"model_ref": run.generator_ref(), "settings": generate_settings(run), "zoo_dir": run.zoo_dir,
            "dtype": cfg.models.dtype, "channels_last": cfg.models.channels_last,
            "compile": cfg.models.compile,
            "faults": run.faults(), "micro_batch": cfg.ray.micro_batch_sizes.get("generate")}
    return ActorStage("generate", SDGenerator, ctor)


def run_stage(run: EditsRun, state: StageState, force: bool) -> dict[str, Any]:
    cfg = run.cfg
    state.begin(lambda: remove(run.paths.distilled, run.paths.contact_sheet), force)
    clusters = all_clusters(run)
    texts = load_texts(run)
    model = run.generator_ref()
    settings = {**generate_settings(run), "seed": cfg.edits.seed, "scheduler": cfg.edits.scheduler,
                "ipc": cfg.edits.ipc, "tau": cfg.edits.tau, "fusion": cfg.edits.fusion,
                "k_image": cfg.edits.k_image,
                "k_text": cfg.edits.k_text, "text_prototype": cfg.edits.text_prototype, "generator": model,
                "finetuned": cfg.edits.finetune.enabled,
                "vlm": cfg.models.vlm, "clip": cfg.models.clip, "llm": cfg.models.llm}
    writer = DistilledSetWriter(run.paths.distilled, "edits", settings, image_format=cfg.output.image_format)
    counts: dict[str, int] = {}
    for cl in clusters:
        counts[cl["class_id"]] = counts.get(cl["class_id"], 0) + 1
    writer.set_expected(counts)
    by_key = {cl["key"]: cl for cl in clusters}
    rows = [r for r in build_rows(run, clusters, texts) if not writer.done(r["key"])]
    run.log(f"[edits] generate: {len(clusters) - len(rows)} images done, {len(rows)} to generate with "
            f"{model}")
    if rows:
        ds = generate_stage(run).dataset(cfg, rows)
        row_of = {r["key"]: r for r in rows}
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for key, image in zip(b["key"], b["image"]):
                r, cl = row_of[str(key)], by_key[str(key)]
                writer.add(r["key"], r["class_id"], r["label"], np.asarray(image, dtype=np.uint8), meta={
                    "cluster": r["cluster"], "cluster_size": cl["size"], "members": cl["image_members"],
                    "caption_ids": texts[r["key"]]["caption_ids"], "prototype_text": r["prompt"],
                    "seed": r["seed"],
                }, flush=False)
            writer.flush()
    missing = [cl["key"] for cl in clusters if not writer.done(cl["key"])]
    if missing:
        from pipeline.errors import DataError

        raise DataError(f"generate: {len(missing)} images were not produced (first: {missing[:5]}); re-run "
                        f"to resume")
    writer.finish({"images": len(writer.entries), "classes": len(counts)})
    if cfg.edits.contact_sheet:
        contact_sheet(writer.entries, run.paths.distilled, run.paths.contact_sheet, run.names)
    return {"images": len(writer.entries), "generated_now": len(rows), "generator": model,
            "per_class": counts}
