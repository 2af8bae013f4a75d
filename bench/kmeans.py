#!/usr/bin/env python
"""FAISS k-means vs scikit-learn ``KMeans(n_init=10)`` (what the EDITS authors used), per class.

EDITS clusters every class's fused features separately with k = IPC. This times both on the
same synthetic CLIP-like features (unit vectors around k hidden centres, 768-d), class by
class, streaming: one class is in memory at a time. The default is the issue's size, ImageNet-1K
(1,000 classes x 1,300 x 768), which takes a long time with scikit-learn on a laptop; use
``--classes 20`` for a quick run (totals are then also extrapolated to 1,000 classes).

    python bench/kmeans.py --classes 20
    python bench/kmeans.py                      # 1,000 classes (the issue's size)

Prints per-class times, totals, the clustering objective of both (same data, so the speed
comparison is fair only if the objectives match) and ends with ``ratio: <sklearn / faiss>``.
"""

from __future__ import annotations

import argparse
import json
import os
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
    """Sum of squared distances to the nearest centroid (what both methods minimise)."""
    d = (x * x).sum(1)[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]
    return float(np.maximum(d.min(1), 0).sum())


def faiss_kmeans(x: np.ndarray, k: int, niter: int, nredo: int, seed: int, gpu: bool) -> np.ndarray:
    """The pipeline's own k-means (``pipeline.edits.buffer.kmeans``: FAISS on all points)."""
    try:
        from pipeline.edits.buffer import kmeans as project_kmeans
    except ImportError:  # pragma: no cover - standalone copy of the script
        project_kmeans = None
    if project_kmeans is not None:
        return project_kmeans(x, k, niter=niter, nredo=nredo, seed=seed, gpu=gpu)[0]
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=seed, gpu=gpu, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1_000_000)
    km.train(x)
    return km.centroids


def sklearn_kmeans(x: np.ndarray, k: int, n_init: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x).cluster_centers_.astype(np.float32)


def faiss_gpus() -> int:
    try:
        import faiss

        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception:
        return 0


def run(classes: int, per_class: int, dim: int, k: int, niter: int, nredo: int, n_init: int, seed: int,
        skip_sklearn: bool = False, log=print) -> dict:
    methods = ["faiss-cpu"] + (["faiss-gpu"] if faiss_gpus() else []) + ([] if skip_sklearn else ["sklearn"])
    times = {m: 0.0 for m in methods}
    objective = {m: 0.0 for m in methods}
    for c in range(classes):
        x = class_features(c, per_class, dim, k, seed)
        row = []
        for m in methods:
            t0 = time.perf_counter()
            if m == "sklearn":
                cen = sklearn_kmeans(x, k, n_init, seed)
            else:
                cen = faiss_kmeans(x, k, niter, nredo, seed, gpu=(m == "faiss-gpu"))
            dt = time.perf_counter() - t0
            times[m] += dt
            objective[m] += inertia(x, cen)
            row.append(f"{m} {dt:7.3f}s")
        if c < 5 or c == classes - 1 or (c + 1) % max(1, classes // 10) == 0:
            log(f"class {c + 1:>5}/{classes}: " + "  ".join(row))
    return {"classes": classes, "per_class": per_class, "dim": dim, "k": k, "niter": niter, "nredo": nredo,
            "n_init": n_init, "seconds": times, "objective": objective}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=1000, help="classes (default 1000, the issue's size)")
    p.add_argument("--per-class", type=int, default=1300, help="features per class (ImageNet: ~1,300)")
    p.add_argument("--dim", type=int, default=768, help="feature size (CLIP ViT-L/14: 768)")
    p.add_argument("--k", type=int, default=10, help="clusters per class (= IPC)")
    p.add_argument("--niter", type=int, default=20, help="FAISS iterations (edits.kmeans_niter)")
    p.add_argument("--nredo", type=int, default=10, help="FAISS restarts (edits.kmeans_nredo)")
    p.add_argument("--n-init", type=int, default=10, help="scikit-learn restarts (the reference: 10)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS/OpenMP threads for both (default 1: the pipeline runs one single-core task per class)")
    p.add_argument("--json-out", default=None, help="also write the result (and a 'cluster' cost for plan)")
    args = p.parse_args(argv)

    from threadpoolctl import threadpool_limits

    threads = args.threads if args.threads > 0 else (os.cpu_count() or 1)
    import faiss

    faiss.omp_set_num_threads(threads)
    print(f"k-means per class: {args.classes} classes x {args.per_class} x {args.dim}, k={args.k}; "
          f"FAISS niter={args.niter} nredo={args.nredo}; sklearn KMeans(n_init={args.n_init}); {threads} threads")
    with threadpool_limits(limits=threads):
        res = run(args.classes, args.per_class, args.dim, args.k, args.niter, args.nredo, args.n_init, args.seed)
    sec, obj = res["seconds"], res["objective"]
    faiss_best = min((m for m in sec if m.startswith("faiss")), key=lambda m: sec[m])
    scale = 1000 / args.classes
    print()
    print(f"{'method':<10} {'total s':>10} {'s/class':>9} {'1000 classes':>13} {'objective':>12}")
    for m in sec:
        print(f"{m:<10} {sec[m]:>10.2f} {sec[m] / args.classes:>9.4f} {sec[m] * scale / 60:>10.1f} min "
              f"{obj[m]:>12.2f}")
    print(f"objective sklearn / {faiss_best}: {obj['sklearn'] / obj[faiss_best]:.4f} (1.0 = same clustering quality)")
    ratio = sec["sklearn"] / sec[faiss_best]
    res.update({"faiss_best": faiss_best, "ratio": ratio, "threads": threads})
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        cost = sec[faiss_best] / args.classes * (threads if faiss_best == "faiss-cpu" else 1)
        res.update({"device": f"{threads} CPU threads" if faiss_best == "faiss-cpu" else "GPU",
                    "costs": {"cluster": cost},
                    "note": f"bench/kmeans.py {args.per_class}x{args.dim} k={args.k}, core-seconds per class"})
        out.write_text(json.dumps(res, indent=2))
    print(f"sklearn KMeans(n_init={args.n_init}) {sec['sklearn']:.2f} s vs {faiss_best} {sec[faiss_best]:.2f} s")
    print(f"ratio: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
