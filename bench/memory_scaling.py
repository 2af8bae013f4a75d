#!/usr/bin/env python
"""Peak memory of the EDITS front half (read, caption, embed, buffer, cluster) on N and 8N images.

Each size runs in a fresh process (its own local Ray) on synthetic images (the embedded digits,
each copy with its own seeded noise) with the tiny zoo models. The child samples the resident
memory of the driver and of every Ray process it started (workers, actors, raylet) every
0.2 s. Streaming means the peaks stay flat as the dataset grows 8x; the last line is

    ratio: <max(driver peak 8N / N, worker peak 8N / N)>     (target <= 1.3)

    python bench/memory_scaling.py                 # N = 400 (and 3,200)
    python bench/memory_scaling.py --images 1000   # N = 1,000 (and 8,000)
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
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FRONT_HALF = ("caption", "embed", "cluster")


def make_synthetic_dataset(root: str | Path, n_images: int, n_classes: int = 10, size: int = 32,
                           seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: digits of class ``c``, each copy shifted and noised with its own seed."""
    from PIL import Image

    from pipeline.core.digits import digits_arrays

    images, labels = digits_arrays(size)
    root = Path(root)
    per_class = [n_images // n_classes + (1 if c < n_images % n_classes else 0) for c in range(n_classes)]
    for c in range(n_classes):
        pool = images[labels == c % 10]
        d = root / f"c{c:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class[c]):
            rng = np.random.default_rng([seed, c, i])
            img = np.roll(pool[i % len(pool)].astype(np.int16), tuple(rng.integers(-2, 3, size=2)),
                          axis=(0, 1))
            img = np.clip(img + rng.integers(-24, 25, size=img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:06d}.png")
    return root


def front_half_config(data_root: str | Path, out_dir: str | Path, **overrides: Any):
    """A tiny-model EDITS config for the front half (the demo's models, 2 local CPUs)."""
    from pipeline.config import config_from_dict

    raw: dict[str, Any] = {
        "method": "edits", "name": "memscale",
        "data": {"root": str(data_root), "image_size": 32},
        "models": {"vlm": "zoo:vlm", "clip": "zoo:clip", "vae": "zoo:vae", "sd": "zoo:sd", "llm": "zoo:llm",
                   "dtype": "float32"},
        "edits": {"ipc": 2, "caption_image_size": 32, "caption_max_tokens": 16, "feature_image_size": 32,
                  "kmeans_nredo": 2},
        "ray": {"num_cpus": 2, "actor_num_cpus": 0.5, "object_store_memory_mb": 256,
                "pool_sizes": {"caption": 1, "embed": 1}, "batch_sizes": {"caption": 32, "embed": 64}},
        "output": {"dir": str(out_dir)},
    }
    for key, value in overrides.items():
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return config_from_dict(raw)


def run_front_half(cfg, log=print, stages: tuple[str, ...] = FRONT_HALF) -> dict[str, Any]:
    """caption -> embed -> cluster with the EDITS stage runners, skipping stages already done."""
    from pipeline.core.faults import configure_data_context
    from pipeline.core.ray_setup import ray_session
    from pipeline.edits import buffer, caption, embed
    from pipeline.edits.run import prepare_run, run_stage_keys
    from pipeline.edits.state import StageState

    runners = {"caption": caption.run_stage, "embed": embed.run_stage, "cluster": buffer.run_stage}
    run = prepare_run(cfg, log)
    keys = run_stage_keys(run)
    info: dict[str, Any] = {}
    with ray_session(cfg.ray):
        configure_data_context(cfg.ray)
        for name in stages:
            state = StageState(run.paths.art, name, keys[name])
            if state.status() == "done":
                info[name] = {"reused": True, **((state.read() or {}).get("info") or {})}
                continue
            info[name] = runners[name](run, state, False)
            state.finish(info[name])
            run.skips.write()
    return info


class RssSampler(threading.Thread):
    """Peak RSS of this process and of each descendant (Ray's processes), sampled periodically."""

    def __init__(self, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        import psutil

        self.me = psutil.Process()
        self.interval_s = interval_s
        self.peak_by_pid: dict[int, tuple[str, int]] = {}
        self.peak_children_total = 0
        self.peak_self = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        import psutil

        total = 0
        self.peak_self = max(self.peak_self, self.me.memory_info().rss)
        for p in self.me.children(recursive=True):
            try:
                rss = p.memory_info().rss
                name = p.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            old = self.peak_by_pid.get(p.pid, (name, 0))
            self.peak_by_pid[p.pid] = (name if name else old[0], max(old[1], rss))
        self.peak_children_total = max(self.peak_children_total, total)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        self.sample()

    def worker_peak(self) -> int:
        """The largest peak of one Ray worker/actor process (``ray::...``)."""
        peaks = [rss for name, rss in self.peak_by_pid.values() if name.startswith("ray::")]
        return max(peaks) if peaks else 0


def child(images: int, classes: int, workdir: Path) -> dict[str, Any]:
    """One measured run (in its own process): dataset, front half, peaks."""
    data = make_synthetic_dataset(workdir / "data", images, classes)
    cfg = front_half_config(data, workdir / "out")
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    info = run_front_half(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    wall = time.perf_counter() - t0
    sampler.stop()
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"images": images, "classes": classes, "wall_s": wall, "driver_peak_mb": driver_peak / 2**20,
            "worker_peak_mb": sampler.worker_peak() / 2**20,
            "ray_total_peak_mb": sampler.peak_children_total / 2**20,
            "captioned": info["caption"]["captioned"], "clusters": info["cluster"]["clusters"]}


def measure(images: int, classes: int, keep: str | None = None, timeout_s: float = 1800) -> dict[str, Any]:
    """Run ``child`` in a fresh interpreter and return its JSON."""
    work = Path(tempfile.mkdtemp(prefix=f"memscale{images}_", dir=keep))
    try:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--images", str(images),
               "--classes", str(classes), "--workdir", str(work)]
        env = {**os.environ, "SEMDISTILL_PROGRESS": "0", "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=str(REPO),
                           check=False)
        if r.returncode != 0:
            raise RuntimeError(f"memory_scaling child for {images} images failed "
                               f"({r.returncode}):\n{r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def compare(small: dict[str, Any], large: dict[str, Any]) -> dict[str, float]:
    return {"driver": large["driver_peak_mb"] / small["driver_peak_mb"],
            "worker": large["worker_peak_mb"] / max(small["worker_peak_mb"], 1e-9),
            "ray_total": large["ray_total_peak_mb"] / max(small["ray_total_peak_mb"], 1e-9)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="peak RSS of the EDITS front half on N and 8N images")
    p.add_argument("--images", type=int, default=400, help="N (the large run has 8N)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--factor", type=int, default=8)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.images, args.classes, Path(args.workdir))))
        return 0
    from actors.zoo import build_zoo

    build_zoo(roles=("tokenizer", "clip", "vlm", "vae", "sd", "llm"), log=lambda _m: None)
    rows = []
    for n in (args.images, args.images * args.factor):
        print(f"running the front half on {n} images ...", flush=True)
        rows.append(measure(n, args.classes))
    small, large = rows
    print()
    print(f"{'images':>8} {'wall s':>8} {'driver peak MB':>15} {'worker peak MB':>15} {'all Ray MB':>11} "
          f"{'img/s':>7}")
    for r in rows:
        print(f"{r['images']:>8} {r['wall_s']:>8.1f} {r['driver_peak_mb']:>15.1f} "
              f"{r['worker_peak_mb']:>15.1f} {r['ray_total_peak_mb']:>11.1f} "
              f"{r['images'] / r['wall_s']:>7.1f}")
    ratios = compare(small, large)
    print(f"peak ratio {args.factor}N / N: driver {ratios['driver']:.3f}, largest worker "
          f"{ratios['worker']:.3f}, all Ray processes {ratios['ray_total']:.3f} (target <= 1.3)")
    print(f"ratio: {max(ratios['driver'], ratios['worker']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
