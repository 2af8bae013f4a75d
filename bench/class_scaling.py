#!/usr/bin/env python
"""EDITS and DIVER on tiny-image ImageFolders with 100 and 1,000 classes: nothing may grow faster than K.

Each size runs in a fresh process (its own local Ray) on ``K`` classes x ``--per-class`` images of
16 px (seeded noisy digits), with the zoo models, fine-tune off, IPC 1 and few inference steps:
EDITS caption -> embed -> cluster -> prototype -> generate, then DIVER (built-in DM, then recovery).
It prints seconds per class for every stage, the driver's peak RSS at both sizes (and after each step,
to show where it grows), then

    ratio: <max over stages of (s/class at 1,000) / (s/class at 100)>   (target <= 1.2; RSS <= 1.3)

A ratio above the target means a stage pays something per class that grows with K (per-class files
listed in a loop, per-class Ray task start-up paid serially, manifests rewritten whole per write,
a driver-side dict of every row).

    python bench/class_scaling.py                         # 100 and 1,000 classes, 1 image each
    python bench/class_scaling.py --small 20 --large 200  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

EDITS_STAGES = ("caption", "embed", "cluster", "prototype", "generate")
DIVER_STAGES = ("stage1", "recover")
SIZE = 16  # px of the generated real images (the models work at 32 px)


def make_folder(root: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """``root/<000..K-1>/<i>.png``: 16 px digits of class ``c % 10``, each shifted and noised with its own
    seed.

    Class ids are numbers, so DIVER maps them to DiT classes directly (zoo:dit has 1,000)."""
    from PIL import Image

    from pipeline.core.digits import digits_arrays

    images, labels = digits_arrays(SIZE)
    for c in range(classes):
        pool = images[labels == c % 10]
        d = root / f"{c:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, c, i])
            img = np.roll(pool[(c // 10 + i) % len(pool)].astype(np.int16),
                          tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
            img = np.clip(img + rng.integers(-24, 25, size=img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:04d}.png")
    return root


def edits_config(data: Path, out: Path):
    from pipeline.config import config_from_dict

    return config_from_dict({
        "method": "edits", "name": "class_scaling",
        "data": {"root": str(data), "image_size": 32},
        "models": {"vlm": "zoo:vlm", "clip": "zoo:clip", "vae": "zoo:vae", "sd": "zoo:sd", "llm": "zoo:llm",
                   "dtype": "float32"},
        "edits": {"ipc": 1, "k_image": 1, "k_text": 1, "caption_image_size": 32, "caption_max_tokens": 8,
                  "feature_image_size": 32, "vae_source": "sd", "vae_resolution": 32,
                  "num_inference_steps": 2, "max_tokens": 12, "kmeans_nredo": 1},
        "ray": {"num_cpus": 2, "actor_num_cpus": 0.5, "object_store_memory_mb": 512,
                "batch_sizes": {"caption": 64, "embed": 64, "vae": 64, "llm": 32, "generate": 32}},
        "output": {"dir": str(out)},
    })


def diver_config(data: Path, out: Path):
    from pipeline.config import config_from_dict

    return config_from_dict({
        "method": "diver", "name": "class_scaling",
        "data": {"root": str(data), "image_size": 32},
        "models": {"dit": "zoo:dit", "dtype": "float32"},
        "diver": {"stage1": {"ipc": 1, "iterations": 2, "batch_real": 2, "net_width": 8, "dsa": False},
                  "resolution": 32, "num_inference_steps": 2, "start_step": 1, "fusion_window": [1, 0],
                  "sigma": "posterior", "torch_threads": 1, "side_by_side": False},
        "ray": {"num_cpus": 2, "actor_num_cpus": 0.5, "pool_sizes": {"recover": 1},
                "batch_sizes": {"recover": 64}},
        "output": {"dir": str(out)},
    })


def child(classes: int, workdir: Path) -> dict[str, Any]:
    """One measured size (in its own process): EDITS, then DIVER; seconds per stage and driver peak RSS."""
    from pipeline.diver.run import run_diver
    from pipeline.edits.run import run_edits

    peaks: dict[str, float] = {}  # the driver's peak RSS (MB) once each stage is done: where it grows

    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def quiet(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        if line.startswith("[edits] ") and ": done" in line:
            peaks[line.split()[1].rstrip(":")] = peak_mb()

    peaks["start"] = peak_mb()
    t0 = time.perf_counter()
    summary = run_edits(edits_config(workdir / "data", workdir / "edits"), log=quiet)
    edits_wall = time.perf_counter() - t0
    peaks["edits"] = peak_mb()
    t1 = time.perf_counter()
    d = run_diver(diver_config(workdir / "data", workdir / "diver"))
    diver_wall = time.perf_counter() - t1
    peaks["diver"] = peak_mb()
    seconds = {s: float(summary["timings"][s]) for s in EDITS_STAGES}
    seconds["edits_setup"] = edits_wall - sum(seconds.values())  # scan, keys, Ray start, contact sheet
    seconds.update({"stage1": float(d["timings"]["stage1_s"]), "recover": float(d["timings"]["recover_s"])})
    images = len(json.loads((workdir / "edits/distilled/manifest.json").read_text())["images"])
    return {"classes": classes, "seconds": seconds, "edits_wall_s": edits_wall, "diver_wall_s": diver_wall,
            "edits_images": images, "diver_images": d["sets"]["ipc1"]["images"],
            "driver_peak_mb": peak_mb(), "driver_peak_after_mb": peaks}


def measure(classes: int, per_class: int, keep: str | None, timeout_s: float) -> dict[str, Any]:
    """Write the ImageFolder here, then run ``child`` in a fresh interpreter and return its JSON."""
    work = Path(tempfile.mkdtemp(prefix=f"classscale{classes}_", dir=keep))
    try:
        make_folder(work / "data", classes, per_class)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--large", str(classes),
               "--workdir", str(work)]
        env = {**os.environ, "SEMDISTILL_PROGRESS": "0", "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s, env=env,
                           cwd=str(REPO))
        if r.returncode != 0:
            raise RuntimeError(f"class_scaling child for {classes} classes failed ({r.returncode}):\n"
                               f"{r.stderr[-4000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def report(small: dict[str, Any], large: dict[str, Any]) -> float:
    """Print the per-class table and return the worst stage ratio."""
    ks, kl = small["classes"], large["classes"]
    print(f"{'stage':<12} {'s/class @' + str(ks):>14} {'s/class @' + str(kl):>14} {'ratio':>7}")
    worst = 0.0
    for stage in (*EDITS_STAGES, "edits_setup", *DIVER_STAGES):
        a, b = small["seconds"][stage] / ks, large["seconds"][stage] / kl
        r = b / a if a > 0 else float("inf")
        if stage != "edits_setup":  # fixed start-up costs, shown for reference
            worst = max(worst, r)
        print(f"{stage:<12} {a:>14.4f} {b:>14.4f} {r:>7.3f}")
    print("driver peak RSS (MB) after each step: " + ", ".join(
        f"{k} {small['driver_peak_after_mb'][k]:.0f}/{large['driver_peak_after_mb'][k]:.0f}"
        for k in small["driver_peak_after_mb"] if k in large["driver_peak_after_mb"]))
    rss = large["driver_peak_mb"] / small["driver_peak_mb"]
    print(f"driver peak RSS: {small['driver_peak_mb']:.0f} MB @{ks}, {large['driver_peak_mb']:.0f} MB @{kl}, "
          f"ratio {rss:.3f} (target <= 1.3)")
    print(f"wall: EDITS {small['edits_wall_s']:.0f} s / {large['edits_wall_s']:.0f} s, "
          f"DIVER {small['diver_wall_s']:.0f} s / {large['diver_wall_s']:.0f} s")
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="EDITS and DIVER seconds per class at K and 10K classes")
    p.add_argument("--small", type=int, default=100, help="classes of the small run (default 100)")
    p.add_argument("--large", type=int, default=1000, help="classes of the large run (default 1000)")
    p.add_argument("--per-class", type=int, default=1, help="real images per class (default 1: IPC 1)")
    p.add_argument("--keep", default=None, help="keep the work folders under this folder")
    p.add_argument("--timeout", type=float, default=1500, help="seconds per size (default 1500)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.large, Path(args.workdir))))
        return 0
    from actors.zoo import build_zoo

    build_zoo(roles=("tokenizer", "clip", "vlm", "vae", "sd", "llm", "dit"), log=lambda _m: None)
    rows = []
    for k in (args.small, args.large):
        print(f"running EDITS and DIVER on {k} classes x {args.per_class} images ...", flush=True)
        rows.append(measure(k, args.per_class, args.keep, args.timeout))
        print(json.dumps(rows[-1]), flush=True)
    worst = report(*rows)
    print(f"ratio: {worst:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
