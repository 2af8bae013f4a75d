#!/usr/bin/env python
"""The EDITS cluster stage's k-means, all classes, through its Ray scheduler vs a serial scikit-learn loop.

EDITS clusters every class's fused features separately with k = IPC. The stage calls the authors'
``sklearn.cluster.KMeans(n_clusters=ipc, random_state=seed, n_init=10)`` itself (einsteinxia/EDITS
``distillation/gen_prototype.py`` @ 9983f5a), one thread per call, through
``pipeline.edits.buffer.cluster_classes`` (Ray tasks of ``ray.cluster_classes_per_task`` classes, as many
tasks as the cores hold) calling ``kmeans_class``. The reference is the authors' loop: the same call, class
after class, with BLAS/OpenMP on the same cores. Both fit the same data with the same seed, so the
objectives agree and the ratio is what the stage's scheduling buys (or costs: Ray's task overhead) at
ImageNet scale. Features are synthetic CLIP-like unit vectors around k hidden centres, 768-d.

Both sides run on the same classes in alternating rounds (sklearn, then ours) so machine load
hits both alike; the ratio is the median of the rounds' ratios. Ray start-up is timed apart.
The default is ImageNet-1K (1,000 classes x 1,300 x 768); ``--classes 40`` is quick, and its
totals are also extrapolated to 1,000 classes. ``--json-out`` also records the stage's core-seconds per
class (``costs.cluster``) for ``semdistill plan``.

    python bench/kmeans.py --classes 40
    python bench/kmeans.py                      # 1,000 classes (ImageNet-1K)

Prints per-round times, totals, both objectives (the sum over classes of squared distances to the
nearest centroid) and ends with ``ratio: <sklearn loop / stage>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def class_features(class_index: int, n: int, dim: int, k: int, seed: int, spread: float = 0.35) -> np.ndarray:
    """``n`` unit vectors around ``k`` random centres (float32), reproducible per class."""
    rng = np.random.default_rng([seed, class_index])
    centres = rng.standard_normal((k, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    assign = rng.integers(0, k, size=n)
    x = centres[assign] + spread * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim) * 4
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances to the nearest centroid (what both methods minimise), float64."""
    x64, c64 = x.astype(np.float64), np.asarray(centroids, np.float64)
    d = (x64 * x64).sum(1)[:, None] - 2 * x64 @ c64.T + (c64 * c64).sum(1)[None, :]
    return float(np.maximum(d.min(1), 0).sum())


def sklearn_round(xs: list[np.ndarray], k: int, n_init: int, seed: int, threads: int) -> list[np.ndarray]:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        return [KMeans(n_clusters=k, n_init=n_init, max_iter=300, tol=1e-4,
                       random_state=seed).fit(x.astype(np.float64))
                .cluster_centers_.astype(np.float32) for x in xs]


def ours_round(ids: list[int], xs: list[np.ndarray], settings, ray_cfg) -> list[np.ndarray]:
    from pipeline.edits.buffer import cluster_classes, kmeans_class

    items = ((i, (f"class{i:04d}", x)) for i, x in zip(ids, xs))
    got = dict(cluster_classes(items, settings, ray_cfg, fn=kmeans_class))
    return [got[i][0] for i in ids]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=1000, help="classes (default 1000, ImageNet-1K's)")
    p.add_argument("--per-class", type=int, default=1300, help="features per class (ImageNet: ~1,300)")
    p.add_argument("--dim", type=int, default=768, help="feature size (CLIP ViT-L/14: 768)")
    p.add_argument("--k", type=int, default=10, help="clusters per class (= IPC)")
    p.add_argument("--n-init", type=int, default=10, help="sklearn n_init of both (edits.kmeans_nredo)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--cpus", type=int, default=0,
                   help="cores for both sides (default: all of this machine's)")
    p.add_argument("--per-task", type=int, default=8, help="ray.cluster_classes_per_task")
    p.add_argument("--round", type=int, default=0,
                   help="classes per alternating round (default: 2 tasks per core)")
    p.add_argument("--json-out", default=None, help="also write the result (and a 'cluster' cost for plan)")
    args = p.parse_args(argv)

    import ray

    from pipeline.config import EditsConfig, RayConfig
    from pipeline.core.ray_setup import init_ray
    from pipeline.edits.buffer import ClusterSettings

    cpus = args.cpus or (os.cpu_count() or 1)
    per_round = args.round or 2 * args.per_task * cpus
    ray_cfg = RayConfig(num_cpus=cpus, actor_num_cpus=1, cluster_classes_per_task=args.per_task,
                        object_store_memory_mb=1024)
    settings = ClusterSettings.from_edits(EditsConfig(ipc=args.k, kmeans_nredo=args.n_init, seed=args.seed))
    print(f"k-means (sklearn KMeans), cluster stage vs a serial loop: {args.classes} classes x "
          f"{args.per_class} x {args.dim}, k={args.k}, {args.n_init} starts; {cpus} cores for each side; "
          f"{per_round} classes a round; load average {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    started = init_ray(ray_cfg)
    # warm the workers
    ours_round([0], [class_features(0, 64, args.dim, args.k, args.seed)], settings, ray_cfg)
    startup = time.perf_counter() - t0
    sec = {"sklearn": 0.0, "ours": 0.0}
    obj = {"sklearn": 0.0, "ours": 0.0}
    ratios = []
    try:
        for r0 in range(0, args.classes, per_round):
            ids = list(range(r0, min(args.classes, r0 + per_round)))
            xs = [class_features(i, args.per_class, args.dim, args.k, args.seed) for i in ids]
            t = time.perf_counter()
            ref = sklearn_round(xs, args.k, args.n_init, args.seed, cpus)
            ts = time.perf_counter() - t
            t = time.perf_counter()
            ours = ours_round(ids, xs, settings, ray_cfg)
            to = time.perf_counter() - t
            sec["sklearn"] += ts
            sec["ours"] += to
            obj["sklearn"] += sum(inertia(x, c) for x, c in zip(xs, ref))
            obj["ours"] += sum(inertia(x, c) for x, c in zip(xs, ours))
            ratios.append(ts / to)
            print(f"classes {ids[0]:>4}-{ids[-1]:<4} sklearn {ts:7.2f} s  ours {to:7.2f} s  ratio "
                  f"{ts / to:6.2f}  load {os.getloadavg()[0]:.2f}")
    finally:
        if started:
            ray.shutdown()
    scale = 1000 / args.classes
    print()
    print(f"{'method':<8} {'total s':>9} {'s/class':>8} {'1000 classes':>13} {'objective':>14}")
    for m, t in sec.items():
        print(f"{m:<8} {t:>9.2f} {t / args.classes:>8.4f} {t * scale / 60:>9.2f} min {obj[m]:>14.6f}")
    print(f"objective ours / sklearn: {obj['ours'] / obj['sklearn']:.9f} (the same call and seed: 1)")
    print(f"Ray start-up + worker warm-up: {startup:.2f} s (not in the totals)")
    ratio = statistics.median(ratios)
    res = {"classes": args.classes, "per_class": args.per_class, "dim": args.dim, "k": args.k,
           "n_init": args.n_init, "cpus": cpus, "seconds": sec, "objective": obj, "round_ratios": ratios,
           "ratio": ratio, "startup_s": startup}
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        res.update({"device": f"{cpus} CPU cores", "costs": {"cluster": sec["ours"] / args.classes * cpus},
                    "note": f"bench/kmeans.py {args.per_class}x{args.dim} k={args.k}, "
                            "core-seconds per class"})
        out.write_text(json.dumps(res, indent=2))
    print(f"sklearn KMeans(n_init={args.n_init}) {sec['sklearn']:.2f} s vs ours {sec['ours']:.2f} s "
          f"(totals ratio {sec['sklearn'] / sec['ours']:.2f}); median of {len(ratios)} rounds below")
    print(f"ratio: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
