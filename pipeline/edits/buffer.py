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
from collections.abc import Callable, Iterable, Iterator
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


def _pp_draws(rng: np.random.Generator, n: int, k: int, nredo: int) -> tuple[np.ndarray, np.ndarray]:
    """The k-means++ random numbers of ``nredo`` starts, drawn in the order the sequential seeding draws them
    (per start: the first centre, then ``trials`` uniforms per further centre)."""
    trials = 2 + int(np.log(k))
    first = np.empty(nredo, np.int64)
    u = np.empty((nredo, max(k - 1, 0), trials))
    for j in range(nredo):
        first[j] = rng.integers(n)
        for s in range(k - 1):
            u[j, s] = rng.random(trials)
    return first, u


def _cross(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``x @ c.T`` by float32 BLAS (the precision of the authors' sklearn on float32 features), as float64."""
    return (x @ np.ascontiguousarray(c, np.float32).T).astype(np.float64)


def _pp_init_batched(x: np.ndarray, xx: np.ndarray, k: int, first: np.ndarray, u: np.ndarray) -> np.ndarray | None:
    """k-means++ (as ``kmeans_pp_init``) of all starts at once: one matrix product per new centre for every
    start. Returns the start indices ``[S, k]``, or None when a start finds (within float32 error) every
    point on a centre: the float64 sequential seeding decides those (it draws integers when nothing is left)."""
    n, s_count = len(x), len(first)
    idx = np.empty((s_count, k), np.int64)
    idx[:, 0] = first
    closest = np.maximum(xx[:, None] - 2.0 * _cross(x, x[first]) + xx[first][None, :], 0.0).T  # [S, N]
    trials = u.shape[2] if k > 1 else 0
    floor = n * 1e-6 * max(float(xx.max()), np.finfo(np.float64).tiny)  # float32 products' error, summed
    for step in range(1, k):
        pot = closest.sum(1)
        if (pot <= floor).any():
            return None
        cum = np.cumsum(closest, axis=1)
        cand = np.stack([np.minimum(np.searchsorted(cum[j], u[j, step - 1] * pot[j]), n - 1)
                         for j in range(s_count)])  # [S, T]
        flat = cand.ravel()
        d = np.maximum(xx[:, None] - 2.0 * _cross(x, x[flat]) + xx[flat][None, :], 0.0)  # [N, S*T]
        new = np.minimum(closest.T[:, :, None], d.reshape(n, s_count, trials))  # [N, S, T]
        best = np.argmin(new.sum(0), axis=1)  # [S]
        idx[:, step] = cand[np.arange(s_count), best]
        closest = new[:, np.arange(s_count), best].T
    return idx


def _lloyd_batched(x: np.ndarray, xx: np.ndarray, starts: np.ndarray, max_iter: int, tol: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd iterations (as ``lloyd``) of all starts ``[S, k, D]`` at once: one matrix product gives every
    active start's distances, one every start's cluster sums (a one-hot product); a start stops at its own
    convergence. Returns (centroids ``[S, k, D]``, objectives ``[S]``)."""
    n = len(x)
    s_count, k, dim = starts.shape
    cents = np.array(starts, dtype=np.float32)

    def assign(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # c [A, k, D] -> ([A, N], [A, N])
        cc = (c.astype(np.float64) ** 2).sum(2).ravel()
        d = (xx[:, None] - 2.0 * _cross(x, c.reshape(-1, dim)) + cc[None, :]).reshape(n, len(c), k)
        a = np.argmin(d, axis=2)  # [N, A]
        dist = np.maximum(np.take_along_axis(d, a[:, :, None], 2)[:, :, 0], 0.0)
        return a.T, dist.T

    labels, dist = assign(cents)
    obj = dist.sum(1)
    active = np.arange(s_count)
    rows = np.arange(n)
    for _ in range(max_iter):
        if not len(active):
            break
        a_act = labels[active]  # [A, N]
        ids = (np.arange(len(active))[:, None] * k + a_act).ravel()
        onehot = np.zeros((len(active) * k, n), np.float32)
        onehot[ids, np.tile(rows, len(active))] = 1.0
        sums = (onehot @ x).astype(np.float64).reshape(len(active), k, dim)  # one float32 BLAS product
        counts = np.bincount(ids, minlength=len(active) * k).reshape(len(active), k).astype(np.float64)
        for i, j in zip(*np.nonzero(counts == 0)):  # relocate: the worst-fitted point becomes its own centre
            far = int(np.argmax(dist[active[i]]))
            sums[i, j], counts[i, j], dist[active[i], far] = x[far], 1, -1.0
        new_c = (sums / counts[:, :, None]).astype(np.float32)
        new_labels, new_dist = assign(new_c)
        new_obj = new_dist.sum(1)
        converged = obj[active] - new_obj <= tol * np.maximum(obj[active], np.finfo(np.float64).tiny)
        cents[active], labels[active], dist[active], obj[active] = new_c, new_labels, new_dist, new_obj
        active = active[~converged]
    return cents, obj


def _nearest(x: np.ndarray, xx: np.ndarray, c: np.ndarray, margin: float = 1e-4) -> np.ndarray:
    """The float64-exact nearest centroid of each row: float32 products first, then rows whose two nearest
    centroids are within ``margin`` (far above float32 error on unit-scale features) again in float64."""
    d = xx[:, None] - 2.0 * _cross(x, c) + (c.astype(np.float64) ** 2).sum(1)[None, :]
    a = np.argmin(d, axis=1)
    if c.shape[0] > 1:
        two = np.partition(d, 1, axis=1)[:, :2]
        close = np.flatnonzero(two[:, 1] - two[:, 0] <= margin * max(1.0, float(np.abs(d).max())))
        if len(close):
            a[close] = np.argmin(sq_distances(x[close], c), axis=1)
    return a.astype(np.int64)


def kmeans(x: np.ndarray, k: int, niter: int = 300, nredo: int = 10, seed: int = 0,
           gpu: bool | None = None, tol: float = 1e-4, init: str = "k-means++") -> tuple[np.ndarray, np.ndarray]:
    """k-means on all rows of ``x``: (centroids ``[k, D]``, assignment ``[N]``), the best of ``nredo`` starts.

    As the authors' sklearn ``KMeans`` (read): k-means++ seeding, ``n_init`` starts, each run to
    convergence (relative objective change < ``tol``, at most ``niter`` iterations). On CPU all
    starts run batched (one BLAS product per step for every start; distances' cross terms in
    float32 like sklearn on float32 features, norms, sums and objectives in float64); the returned
    assignment is the exact float64 nearest centroid. On a GPU (when FAISS sees one) FAISS exact
    search assigns, start by start. ``init="random"``: k distinct random rows.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= n points, got k={k}, n={n}")
    if init not in ("k-means++", "random"):
        raise ValueError(f"edits.kmeans_init must be k-means++ or random, got {init!r}")
    use_gpu = faiss_gpu_available() if gpu is None else bool(gpu)
    if not use_gpu:
        rng = np.random.default_rng(int(seed))
        xx = (x.astype(np.float64) ** 2).sum(1)
        if init == "k-means++":
            first, u = _pp_draws(rng, n, k, nredo)
            idx = _pp_init_batched(x, xx, k, first, u)
        else:
            idx = np.stack([rng.choice(n, size=k, replace=False) for _ in range(nredo)])
        if idx is not None:
            cents, obj = _lloyd_batched(x, xx, x[idx], niter, tol)
            c = cents[best_start(obj)]
            return c, _nearest(x, xx, c)
    return _kmeans_sequential(x, k, niter, nredo, seed, use_gpu, tol, init)


def best_start(objectives: np.ndarray | list[float], rel_tie: float = 1e-6) -> int:
    """The start kept: the lowest objective; ties within ``rel_tie`` keep the earliest start.

    Starts that reach the same partition (with permuted labels) give objectives that differ by
    float32 rounding of the distance products (about 1e-8 relative, and by how the BLAS build
    blocks a product: the batched path multiplies all starts at once); without the tolerance the
    winner, and so the cluster numbering, would depend on the BLAS build and the batch layout.
    Partitions whose objectives are within 1e-6 of each other are equally good fits.
    """
    obj = np.asarray(objectives, dtype=np.float64)
    return int(np.flatnonzero(obj <= obj.min() * (1 + rel_tie))[0])


def _kmeans_sequential(x: np.ndarray, k: int, niter: int, nredo: int, seed: int, gpu: bool, tol: float,
                       init: str) -> tuple[np.ndarray, np.ndarray]:
    """``kmeans`` start by start (the GPU path, and degenerate classes whose seeding runs out of distinct points)."""
    n = len(x)
    rng = np.random.default_rng(int(seed))
    runs: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(nredo):
        start = kmeans_pp_init(x, k, rng) if init == "k-means++" else x[rng.choice(n, size=k, replace=False)]
        c, assign, obj, _it = lloyd(x, start, niter, tol, gpu)
        runs.append((c, assign, obj))
    c, assign, _obj = runs[best_start([r[2] for r in runs])]
    return c, assign


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


def kmeans_class(class_id: str, fused: np.ndarray, settings: ClusterSettings) -> tuple[np.ndarray, np.ndarray]:
    """The k-means of one class's fused features under ``settings`` (its seed as in ``process_class``)."""
    from pipeline.core.seeds import stage_seed

    s = settings
    return kmeans(fused, min(s.ipc, len(fused)), s.niter, s.nredo, seed=stage_seed(s.seed, f"kmeans:{class_id}"),
                  tol=s.tol, init=s.init)


def _run_many(fn: Callable[..., Any], items: list[tuple[Any, ...]], settings: ClusterSettings, threads: int) -> list[Any]:
    """``fn(*item, settings)`` for each item, inside one task, with BLAS/OpenMP at ``threads`` threads."""
    from threadpoolctl import threadpool_limits

    if faiss_gpu_available():
        import faiss

        faiss.omp_set_num_threads(threads)
    with threadpool_limits(limits=threads):
        return [fn(*item, settings) for item in items]


def cluster_classes(items: Iterable[tuple[Any, tuple[Any, ...]]], settings: ClusterSettings, ray_cfg: Any,
                    fn: Callable[..., Any] = process_class) -> Iterator[tuple[Any, Any]]:
    """``(meta, fn(*args, settings))`` for each ``(meta, args)`` of ``items``, on Ray, as tasks finish.

    Classes go ``ray.cluster_classes_per_task`` to a task (one start-up per task, not per class); each task
    holds the CPUs of ``ray.actor_num_cpus`` rounded up and runs BLAS with that many threads, and as many
    tasks run as the cluster's CPUs hold (one more queued), so the cores are neither idle nor oversubscribed.
    """
    import math

    import ray

    from pipeline.core.ray_setup import task_options

    cpus = max(1, math.ceil(ray_cfg.actor_num_cpus))
    opts = {**task_options(ray_cfg), "num_cpus": cpus}
    task = ray.remote(_run_many).options(**opts)
    max_in_flight = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus)) + 1
    per_task = int(ray_cfg.cluster_classes_per_task)
    in_flight: dict[Any, list[Any]] = {}
    fn_ref = ray.put(fn)
    settings_ref = ray.put(settings)

    def drain() -> Iterator[tuple[Any, Any]]:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            yield from zip(in_flight.pop(ref), ray.get(ref))

    batch_meta: list[Any] = []
    batch_args: list[tuple[Any, ...]] = []
    for meta, args in items:
        batch_meta.append(meta)
        batch_args.append(args)
        if len(batch_args) == per_task:
            in_flight[task.remote(fn_ref, batch_args, settings_ref, cpus)] = batch_meta
            batch_meta, batch_args = [], []
            while len(in_flight) >= max_in_flight:
                yield from drain()
    if batch_args:
        in_flight[task.remote(fn_ref, batch_args, settings_ref, cpus)] = batch_meta
    while in_flight:
        yield from drain()


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

    from pipeline.core.write import atomic_write_json, remove
    from pipeline.edits.embed import load_features

    cfg = run.cfg
    state.begin(lambda: remove(run.paths.buffer, run.paths.clusters_dir, run.paths.clusters), force)
    settings = ClusterSettings.from_edits(cfg.edits)
    todo = [c for c in run.index.classes if not _class_files(run, c)[1].exists()]
    run.log(f"[edits] cluster: {len(run.index.classes) - len(todo)} classes cached, {len(todo)} to cluster")

    def items() -> Iterator[tuple[dict[str, np.ndarray], tuple[Any, ...]]]:
        for c in todo:
            feats = load_features(run, c)
            yield feats, (c, feats["img"], feats["txt"])

    for feats, res in cluster_classes(items(), settings, cfg.ray):
        _save_class(run, feats, res)
    merged = {}
    for c in run.index.classes:
        merged[c] = json.loads(_class_files(run, c)[1].read_text())
    atomic_write_json(run.paths.clusters, {"settings": settings.as_dict(), "classes": merged})
    n_clusters = sum(len(v["clusters"]) for v in merged.values())
    return {"classes": len(merged), "clusters": n_clusters, "clustered_now": len(todo),
            "outliers_removed": sum(v["n_images"] - v["n_kept"] for v in merged.values()),
            "empty_clusters": sum(1 for v in merged.values() for cl in v["clusters"] if cl["empty"]),
            "warnings": [v["warning"] for v in merged.values() if v["warning"]]}
