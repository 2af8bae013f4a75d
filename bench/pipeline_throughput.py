#!/usr/bin/env python
"""Ray Data pipeline vs a plain serial Python loop: same stages, same images, same tiny models.

Two workloads, each run both ways:
  * EDITS per-image stages: decode -> VLM caption (``actors.captioner.Captioner``) -> decode
    -> CLIP image + caption features (``actors.clip_embedder.ClipEmbedder``);
  * DIVER recovery: distilled images -> ``actors.dit.DiTRecoverActor`` (VAE encode, inheritance,
    guided DDIM, decode).
The serial loop instantiates the same actor classes once in this process and calls them batch by
batch; the Ray run uses actor pools (``ray.data.ActorPoolStrategy``) with fractional CPUs, as the
pipeline does. Both timings include loading the models once. Prints images/s side by side and
ends with ``ratio: <Ray images/s / serial images/s>`` over both workloads (total images / total time).

    python bench/pipeline_throughput.py                  # 192 images for EDITS, 48 for DIVER
    python bench/pipeline_throughput.py --images 64 --recover-images 16 --pool 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

SIZE = 32  # the demo's image size (captioner, CLIP and DiT zoo models all work at 32 px)


def edits_rows(root: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    from pipeline.core.read import scan_image_folder

    index = scan_image_folder(root)
    names = {c: f"digit {c[-1]}" for c in index.classes}
    return index.rows(), names


def captioner_kwargs(names: dict[str, str], zoo_dir: str | None) -> dict[str, Any]:
    return {"model_ref": "zoo:vlm", "class_names": names, "zoo_dir": zoo_dir, "dtype": "float32",
            "style": "auto", "max_tokens": 16, "instruction": None, "prefix": "a photo of {class_name},",
            "require_class_name": True, "count_tokenizer_ref": "zoo:clip", "faults": None}


def embedder_kwargs(zoo_dir: str | None) -> dict[str, Any]:
    return {"model_ref": "zoo:clip", "zoo_dir": zoo_dir, "dtype": "float32"}


def recover_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` distilled-like images: digits with noise, [0, 1] float HWC, a DiT class and a seed each."""
    from pipeline.core.digits import digits_arrays
    from pipeline.core.seeds import image_seed

    images, labels = digits_arrays(SIZE)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = images[i % len(images)].astype(np.float32) / 255.0
        img = np.clip(img + rng.normal(0, 0.15, img.shape), 0, 1).astype(np.float32)
        c = str(int(labels[i % len(labels)]))
        rows.append({"key": f"c{c}_i{i:03d}", "class_id": c, "dit_class": int(c), "seed": image_seed(seed, c, i),
                     "image": img})
    return rows


def recover_kwargs(zoo_dir: str | None) -> dict[str, Any]:
    from actors.loading import resolve_ref
    from pipeline.diver.guidance import RecoverSettings

    return {"model_ref": resolve_ref("dit", "zoo:dit", zoo_dir), "settings": RecoverSettings().as_dict(),
            "resolution": SIZE, "dtype": "float32"}


def chunks(rows: list[dict[str, Any]], n: int):
    for i in range(0, len(rows), n):
        part = rows[i:i + n]
        yield {k: np.asarray([r[k] for r in part], dtype=object if isinstance(part[0][k], str) else None)
               for k in part[0]}


# ------------------------------------------------------------------ serial loop


def serial_edits(rows, names, zoo_dir, batch: int) -> int:
    from actors.captioner import Captioner
    from actors.clip_embedder import ClipEmbedder
    from pipeline.core.read import decode_batch

    cap = Captioner(**captioner_kwargs(names, zoo_dir))
    emb = ClipEmbedder(**embedder_kwargs(zoo_dir))
    done = 0
    for b in chunks(rows, batch):
        out = cap(decode_batch(b, SIZE))
        feats = emb(decode_batch(out, SIZE))
        done += len(feats["img_feat"])
    return done


def serial_recover(rows, zoo_dir, batch: int) -> int:
    from actors.dit import DiTRecoverActor

    actor = DiTRecoverActor(**recover_kwargs(zoo_dir))
    done = 0
    for b in chunks(rows, batch):
        b["image"] = np.stack(list(b["image"])).astype(np.float32)
        done += len(actor(b)["recovered"])
    return done


# ------------------------------------------------------------------ Ray Data pipeline


def ray_edits(rows, names, zoo_dir, batch: int, pool: int, actor_cpus: float) -> int:
    import ray

    from actors.captioner import Captioner
    from actors.clip_embedder import ClipEmbedder
    from pipeline.core.read import decode_batch

    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // batch))
    ds = ds.map_batches(decode_batch, fn_kwargs={"size": SIZE}, batch_size=batch, num_cpus=0.25)
    ds = ds.map_batches(Captioner, fn_constructor_kwargs=captioner_kwargs(names, zoo_dir), batch_size=batch,
                        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=actor_cpus)
    ds = ds.map_batches(decode_batch, fn_kwargs={"size": SIZE}, batch_size=batch, num_cpus=0.25)
    ds = ds.map_batches(ClipEmbedder, fn_constructor_kwargs=embedder_kwargs(zoo_dir), batch_size=batch,
                        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=actor_cpus)
    return sum(len(b["img_feat"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))


def ray_recover(rows, zoo_dir, batch: int, pool: int, actor_cpus: float) -> int:
    import ray

    from actors.dit import DiTRecoverActor

    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // batch))
    ds = ds.map_batches(DiTRecoverActor, fn_constructor_kwargs=recover_kwargs(zoo_dir), batch_size=batch,
                        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=actor_cpus)
    return sum(len(b["recovered"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))


def timed(fn, *args) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = fn(*args)
    return n, time.perf_counter() - t0


def run(images: int, recover_images: int, batch: int, pool: int, actor_cpus: float, workdir: Path,
        log=print) -> dict[str, Any]:
    import ray
    from memory_scaling import make_synthetic_dataset

    from actors.zoo import build_zoo
    from pipeline.config import RayConfig
    from pipeline.core.ray_setup import init_ray

    zoo_dir = os.environ.get("SEMDISTILL_ZOO_DIR")
    build_zoo(roles=("tokenizer", "clip", "vlm", "dit"), log=lambda _m: None)
    rows, names = edits_rows(make_synthetic_dataset(workdir / "data", images, n_classes=10, size=SIZE))
    rec = recover_rows(recover_images)
    started = init_ray(RayConfig(num_cpus=os.cpu_count() or 2, object_store_memory_mb=512))
    res: dict[str, Any] = {}
    try:
        log(f"EDITS caption+embed on {len(rows)} images, batch {batch} ...")
        res["edits_serial"] = timed(serial_edits, rows, names, zoo_dir, batch)
        log(f"  serial: {res['edits_serial'][1]:.1f} s")
        res["edits_ray"] = timed(ray_edits, rows, names, zoo_dir, batch, pool, actor_cpus)
        log(f"  Ray: {res['edits_ray'][1]:.1f} s")
        log(f"DIVER recovery on {len(rec)} images, batch {max(1, batch // 4)} ...")
        rb = max(1, batch // 4)
        res["diver_serial"] = timed(serial_recover, rec, zoo_dir, rb)
        res["diver_ray"] = timed(ray_recover, rec, zoo_dir, rb, pool, actor_cpus)
    finally:
        if started:
            ray.shutdown()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Ray Data pipeline vs serial loop, same tiny models and images")
    p.add_argument("--images", type=int, default=192, help="images for the EDITS caption+embed stages")
    p.add_argument("--recover-images", type=int, default=48, help="images for DIVER recovery")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--pool", type=int, default=2, help="actors per stage in the Ray run")
    p.add_argument("--actor-cpus", type=float, default=None,
                   help="CPUs per actor (default: both pools fit beside the decode tasks)")
    args = p.parse_args(argv)
    if args.actor_cpus is None:  # two pools (caption, embed) must leave room for decode tasks, or Ray stalls
        args.actor_cpus = min(0.5, max(0.05, ((os.cpu_count() or 2) - 0.5) / (2 * args.pool)))
    os.environ.setdefault("SEMDISTILL_PROGRESS", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="throughput_"))
    try:
        res = run(args.images, args.recover_images, args.batch, args.pool, args.actor_cpus, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"{'workload':<26} {'images':>7} {'serial s':>9} {'serial img/s':>13} {'Ray s':>8} {'Ray img/s':>10} "
          f"{'Ray/serial':>11}")
    tot = {"n": 0, "s": 0.0, "r": 0.0}
    for name, label in (("edits", "EDITS caption + embed"), ("diver", "DIVER recovery")):
        (n_s, t_s), (n_r, t_r) = res[f"{name}_serial"], res[f"{name}_ray"]
        assert n_s == n_r, f"{name}: serial made {n_s} outputs, Ray {n_r}"
        print(f"{label:<26} {n_s:>7} {t_s:>9.1f} {n_s / t_s:>13.2f} {t_r:>8.1f} {n_r / t_r:>10.2f} "
              f"{(n_r / t_r) / (n_s / t_s):>11.2f}")
        tot["n"] += n_s
        tot["s"] += t_s
        tot["r"] += t_r
    print(f"{'both':<26} {tot['n']:>7} {tot['s']:>9.1f} {tot['n'] / tot['s']:>13.2f} {tot['r']:>8.1f} "
          f"{tot['n'] / tot['r']:>10.2f} {tot['s'] / tot['r']:>11.2f}")
    print(f"({os.cpu_count()} CPUs; Ray: {args.pool} actors per stage at {args.actor_cpus} CPU; times include "
          "loading the models once)")
    print(f"ratio: {tot['s'] / tot['r']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
