"""Prior clustered buffer (EDITS step 4): per class, GSQ-fused features -> optional LOF -> k-means.

- ``kmeans``: k-means on *all* points, k = IPC, as the authors' sklearn ``KMeans``: k-means++
  seeding (our own, explicit numpy Generator), ``nredo`` = n_init starts (10), each run to
  convergence (tol 1e-4, at most 300 iterations); FAISS exact search assigns on GPU, numpy on CPU.
- ``lof_filter``: sklearn ``LocalOutlierFactor`` with ``contamination`` (0 = off). It never
  removes so many points that fewer than k remain (the least outlying are kept back).
- ``clusters_for``: the small-class policy. ``error`` raises naming the class; ``shrink``
  uses one cluster per image (fewer than IPC outputs) and returns a warning.
- ``process_class``: GSQ + LOF + k-means + LSA for one class (a Ray task in the stage).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.edits.gsq import gsq_fuse
from pipeline.edits.lsa import select
from pipeline.errors import DataError

# what the clusters depend on (see pipeline/edits/state.py): ClusterSettings' fields, and the device
# (FAISS runs on a GPU when the task is given one)
DEPENDS_ON = ("stage:embed", "input:device", "edits.ipc", "edits.seed", "edits.tau", "edits.fusion",
              "edits.feature_normalize", "edits.contamination", "edits.lof_neighbors", "edits.small_class_policy",
              "edits.kmeans_niter", "edits.kmeans_nredo", "edits.kmeans_tol", "edits.kmeans_init",
              "edits.k_image", "edits.k_text")


@dataclass(frozen=True)
class ClusterSettings:
    """What ``process_class`` needs from the ``edits`` section; no defaults of its own: build it with ``from_edits``."""

    ipc: int
    seed: int
    tau: float
    fusion: str
    normalize: bool
    contamination: float
    lof_neighbors: int
    policy: str
    niter: int
    nredo: int
    tol: float
    init: str
    k_image: int
    k_text: int

    @classmethod
    def from_edits(cls, e: Any) -> ClusterSettings:
        """The settings of ``cfg.edits`` (an ``EditsConfig``), under the names used in the stage key."""
        return cls(ipc=e.ipc, seed=e.seed, tau=e.tau, fusion=e.fusion, normalize=e.feature_normalize,
                   contamination=e.contamination, lof_neighbors=e.lof_neighbors, policy=e.small_class_policy,
                   niter=e.kmeans_niter, nredo=e.kmeans_nredo, tol=e.kmeans_tol, init=e.kmeans_init,
                   k_image=e.k_image, k_text=e.k_text)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def clusters_for(n: int, ipc: int, policy: str, class_id: str = "") -> tuple[int, str | None]:
    """(k, warning): k = ipc, or fewer under ``shrink``; ``error`` raises ``DataError``."""
    if n <= 0:
        raise DataError(f"class {class_id!r} has no usable images to cluster")
    if n >= ipc:
        return ipc, None
    if policy == "shrink":
        msg = f"class {class_id!r} has {n} usable images < ipc={ipc}: using {n} clusters (edits.small_class_policy=shrink)"
        warnings.warn(msg, stacklevel=2)
        return n, msg
    raise DataError(
        f"class {class_id!r} has {n} usable images, fewer than ipc={ipc}. Lower edits.ipc, add images, "
        "or set edits.small_class_policy=shrink to distil it into fewer images"
    )


def lof_filter(x: np.ndarray, contamination: float, n_neighbors: int = 10, min_keep: int = 1) -> np.ndarray:
    """Boolean inlier mask from ``LocalOutlierFactor``; all True when ``contamination`` is 0.

    At least ``min_keep`` rows stay: if LOF flags more, the least outlying flagged rows are kept.
    """
    n = len(x)
    keep = np.ones(n, dtype=bool)
    if contamination <= 0 or n < 3:
        return keep
    from sklearn.neighbors import LocalOutlierFactor

    lof = LocalOutlierFactor(n_neighbors=max(1, min(n_neighbors, n - 1)), contamination=contamination)
    keep = lof.fit_predict(np.asarray(x, np.float32)) == 1
    if keep.sum() < min_keep:
        outlying = -lof.negative_outlier_factor_  # higher = more outlying
        order = np.lexsort((np.arange(n), outlying))  # least outlying first
        keep = np.zeros(n, dtype=bool)
        keep[order[:min_keep]] = True
    return keep


def faiss_gpu_available() -> bool:
    try:
        import faiss

        return faiss.get_num_gpus() > 0
    except (ImportError, AttributeError, RuntimeError):  # CPU-only FAISS builds may lack the GPU API
        return False


def sq_distances(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``[N, M]`` between rows of ``x`` and ``c`` (float64, clipped at 0)."""
    x64, c64 = np.asarray(x, np.float64), np.asarray(c, np.float64)
    d = (x64 * x64).sum(1)[:, None] - 2.0 * x64 @ c64.T + (c64 * c64).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding, greedy: each new centre is the best of ``2 + ln k`` candidates drawn with
    probability proportional to the squared distance to the nearest centre so far (Arthur & Vassilvitskii)."""
    n = len(x)
    trials = 2 + int(np.log(k))
    idx = [int(rng.integers(n))]
    closest = sq_distances(x, x[idx])[:, 0]
    for _ in range(1, k):
        pot = closest.sum()
        cand = rng.integers(n, size=trials) if pot <= 0 else \
            np.minimum(np.searchsorted(np.cumsum(closest), rng.random(trials) * pot), n - 1)
        new = np.minimum(closest[:, None], sq_distances(x, x[cand]))
        best = int(np.argmin(new.sum(0)))
        idx.append(int(cand[best]))
        closest = new[:, best]
    return np.asarray(x[idx], dtype=np.float32)


def _assign(x: np.ndarray, centroids: np.ndarray, gpu: bool) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid ``[N]``, squared distance ``[N]``): numpy on CPU, FAISS exact search on GPU.

    (FAISS on CPU costs ~10 ms a call in thread start-up for a class of 600 points; numpy ~0.1 ms.)
    """
    if not gpu:
        d = sq_distances(x, centroids)
        idx = np.argmin(d, axis=1)
        return idx.astype(np.int64), d[np.arange(len(x)), idx]
    import faiss

    index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(x.shape[1]))
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, idx = index.search(x, 1)
    return idx.ravel().astype(np.int64), np.maximum(dist.ravel().astype(np.float64), 0.0)


def lloyd(x: np.ndarray, centroids: np.ndarray, max_iter: int, tol: float, gpu: bool = False
          ) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Lloyd iterations from ``centroids`` until the objective's relative change is below ``tol``.

    An empty cluster takes the point farthest from its centre. Returns (centroids, assignment
    to them, objective = sum of squared distances, iterations run).
    """
    c = np.array(centroids, dtype=np.float32)
    k = len(c)
    x64 = np.asarray(x, np.float64)
    assign, dist = _assign(x, c, gpu)
    obj, it = float(dist.sum()), 0
    for it in range(1, max_iter + 1):
        onehot = np.zeros((len(x), k), np.float64)
        onehot[np.arange(len(x)), assign] = 1.0
        sums = onehot.T @ x64  # per-cluster sums (a matmul: np.add.at is ~15x slower here)
        counts = np.bincount(assign, minlength=k)
        for j in np.flatnonzero(counts == 0):  # relocate: the worst-fitted point becomes its own centre
            far = int(np.argmax(dist))
            sums[j], counts[j], dist[far] = x64[far], 1, -1.0
        c = (sums / counts[:, None]).astype(np.float32)
        assign, dist = _assign(x, c, gpu)
        new = float(dist.sum())
        converged = obj - new <= tol * max(obj, np.finfo(np.float64).tiny)
        obj = new
        if converged:
            break
    return c, assign, obj, it


def kmeans(x: np.ndarray, k: int, niter: int = 300, nredo: int = 10, seed: int = 0,
           gpu: bool | None = None, tol: float = 1e-4, init: str = "k-means++") -> tuple[np.ndarray, np.ndarray]:
    """k-means on all rows of ``x``: (centroids ``[k, D]``, assignment ``[N]``), the best of ``nredo`` starts.

    As the authors' sklearn ``KMeans`` (read): k-means++ seeding, ``n_init`` starts, each run to
    convergence (relative objective change < ``tol``, at most ``niter`` iterations). Assignment
    uses FAISS exact search on a GPU (when FAISS sees one), numpy on CPU. ``init="random"``: k
    distinct random rows.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= n points, got k={k}, n={n}")
    if init not in ("k-means++", "random"):
        raise ValueError(f"edits.kmeans_init must be k-means++ or random, got {init!r}")
    use_gpu = faiss_gpu_available() if gpu is None else bool(gpu)
    rng = np.random.default_rng(int(seed))
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(nredo):
        start = kmeans_pp_init(x, k, rng) if init == "k-means++" else x[rng.choice(n, size=k, replace=False)]
        c, assign, obj, _it = lloyd(x, start, niter, tol, use_gpu)
        if best is None or obj < best[2]:  # ties keep the earlier start
            best = (c, assign, obj)
    assert best is not None
    return best[0], best[1]


def process_class(class_id: str, img: np.ndarray, txt: np.ndarray, settings: ClusterSettings) -> dict[str, Any]:
    """GSQ -> LOF -> k-means -> LSA for one class. Indices refer to the class's rows in order."""
    from pipeline.core.seeds import stage_seed

    s = settings
    fused = gsq_fuse(img, txt, tau=s.tau, fusion=s.fusion, normalize=s.normalize)
    k, warning = clusters_for(len(fused), s.ipc, s.policy, class_id)
    keep = lof_filter(fused, s.contamination, s.lof_neighbors, min_keep=k)
    kept = np.flatnonzero(keep)
    centroids, sub_assign = kmeans(fused[kept], k, s.niter, s.nredo, seed=stage_seed(s.seed, f"kmeans:{class_id}"),
                                   tol=s.tol, init=s.init)
    assign = np.full(len(fused), -1, dtype=np.int64)
    assign[kept] = sub_assign
    sel = select(fused, assign, centroids, s.k_image, s.k_text, candidates=kept)
    dist = np.full(len(fused), np.nan, dtype=np.float32)
    for c in sel:
        for i, d in zip(c.members, c.distances):
            dist[i] = d
    return {"class_id": class_id, "fused": fused, "keep": keep, "assign": assign, "distance": dist,
            "centroids": centroids, "selections": [asdict(c) for c in sel], "k": k, "warning": warning}


# ---------------------------------------------------------------- the stage


def cluster_key(class_id: str, cluster: int) -> str:
    """The id of one cluster (and of the distilled image made from it)."""
    return f"{class_id}_{cluster:03d}"


def _class_files(run: Any, class_id: str) -> tuple[Any, Any]:
    from pipeline.core.write import component_name

    name = component_name(class_id)
    return run.paths.buffer / f"{name}.parquet", run.paths.clusters_dir / f"{name}.json"


def _process_remote(class_id: str, img: np.ndarray, txt: np.ndarray, settings: ClusterSettings) -> dict[str, Any]:
    return process_class(class_id, img, txt, settings)


def _save_class(run: Any, feats: dict[str, np.ndarray], res: dict[str, Any]) -> dict[str, Any]:
    from pipeline.core.write import atomic_write_json, write_parquet

    c = res["class_id"]
    buf_path, json_path = _class_files(run, c)
    paths = [str(p) for p in feats["path"]]
    caps = [str(x) for x in feats["caption"]]
    write_parquet(buf_path, {"path": paths, "class_id": [c] * len(paths), "label": feats["label"].astype(np.int64),
                             "fused": res["fused"], "caption": caps, "kept": res["keep"],
                             "cluster": res["assign"], "distance": res["distance"]})
    clusters = []
    for s in res["selections"]:
        clusters.append({
            "cluster": s["cluster"], "key": cluster_key(c, s["cluster"]), "size": len(s["members"]),
            "empty": s["empty"], "members": [paths[i] for i in s["members"]], "distances": s["distances"],
            "image_members": [paths[i] for i in s["image_members"]],
            "text_members": [paths[i] for i in s["text_members"]],
            "text_captions": [caps[i] for i in s["text_members"]],
        })
    out = {"class_id": c, "label": int(feats["label"][0]), "name": run.names[c], "n_images": len(paths),
           "n_kept": int(res["keep"].sum()), "k": res["k"], "warning": res["warning"], "clusters": clusters}
    atomic_write_json(json_path, out)  # written last: the class counts as done once this exists
    return out


def load_clusters(run: Any) -> dict[str, Any]:
    """The merged ``clusters.json``: ``{"classes": {class_id: {..., "clusters": [...]}}}``."""
    import json

    return json.loads(run.paths.clusters.read_text())


def run_stage(run: Any, state: Any, force: bool) -> dict[str, Any]:
    import json

    import ray

    from pipeline.core.ray_setup import task_options
    from pipeline.core.write import atomic_write_json, remove
    from pipeline.edits.embed import load_features

    cfg = run.cfg
    state.begin(lambda: remove(run.paths.buffer, run.paths.clusters_dir, run.paths.clusters), force)
    settings = ClusterSettings.from_edits(cfg.edits)
    todo = [c for c in run.index.classes if not _class_files(run, c)[1].exists()]
    run.log(f"[edits] cluster: {len(run.index.classes) - len(todo)} classes cached, {len(todo)} to cluster")
    task = ray.remote(_process_remote).options(**task_options(cfg.ray))
    max_in_flight = max(2, int(ray.cluster_resources().get("CPU", 2) / max(cfg.ray.actor_num_cpus, 0.01)))
    in_flight: dict[Any, dict[str, np.ndarray]] = {}

    def drain() -> None:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            _save_class(run, in_flight.pop(ref), ray.get(ref))

    for c in todo:
        feats = load_features(run, c)
        in_flight[task.remote(c, feats["img"], feats["txt"], settings)] = feats
        while len(in_flight) >= max_in_flight:
            drain()
    while in_flight:
        drain()
    merged = {}
    for c in run.index.classes:
        merged[c] = json.loads(_class_files(run, c)[1].read_text())
    atomic_write_json(run.paths.clusters, {"settings": settings.as_dict(), "classes": merged})
    n_clusters = sum(len(v["clusters"]) for v in merged.values())
    return {"classes": len(merged), "clusters": n_clusters, "clustered_now": len(todo),
            "outliers_removed": sum(v["n_images"] - v["n_kept"] for v in merged.values()),
            "empty_clusters": sum(1 for v in merged.values() for cl in v["clusters"] if cl["empty"]),
            "warnings": [v["warning"] for v in merged.values() if v["warning"]]}
