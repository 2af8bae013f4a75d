"""Prior clustered buffer (EDITS step 4): per class, GSQ-fused features -> optional LOF -> k-means.

Follows the authors' released code, einsteinxia/EDITS ``distillation/gen_prototype.py`` @ 9983f5a
(``prototype_kmeans_ours``, ``initialize_km_models``):

- ``lof_filter``: sklearn ``LocalOutlierFactor(n_neighbors=10, contamination)``, only when
  ``contamination`` > 0 (their script runs 0). It never removes so many points that fewer than k
  remain (the least outlying are kept back).
- ``kmeans``: sklearn ``KMeans(n_clusters=ipc, random_state=seed, n_init=10)`` on the inliers, with
  ``random_state`` the run's seed for every class, as theirs.
- ``clusters_for``: the small-class policy. ``error`` raises naming the class; ``shrink``
  uses one cluster per image (fewer than IPC outputs) and returns a warning.
- ``process_class``: GSQ + LOF + k-means + LSA for one class (a Ray task in the stage).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from pipeline.config import EditsConfig
from pipeline.edits.gsq import gsq_fuse
from pipeline.edits.lsa import select
from pipeline.errors import DataError

# The ``edits`` keys the clusters depend on (CPU only: no device), under the short names clusters.json records
# them by; the stage key reads them as ``DEPENDS_ON`` (see pipeline/edits/state.py).
RECORD_KEYS = {"ipc": "ipc", "seed": "seed", "tau": "tau", "fusion": "fusion",
               "normalize": "feature_normalize",
               "contamination": "contamination", "lof_neighbors": "lof_neighbors",
               "policy": "small_class_policy",
               "niter": "kmeans_niter", "nredo": "kmeans_nredo", "tol": "kmeans_tol", "init": "kmeans_init",
               "k_image": "k_image", "k_text": "k_text"}
DEPENDS_ON = ("stage:embed", *(f"edits.{key}" for key in RECORD_KEYS.values()))


@dataclass(frozen=True)
class ClusterSettings:
    """What ``process_class`` reads: the validated ``edits`` section, whose ``EditsConfig`` is the one place
    for the defaults and checks (sklearn ``KMeans``' ``max_iter``, ``n_init``, ``tol``, ``init`` are its
    ``kmeans_niter``, ``kmeans_nredo``, ``kmeans_tol``, ``kmeans_init``)."""

    edits: EditsConfig

    @classmethod
    def from_edits(cls, e: EditsConfig) -> ClusterSettings:
        return cls(edits=e)

    def as_dict(self) -> dict[str, Any]:
        """The settings record of clusters.json, under its short names."""
        return {short: getattr(self.edits, key) for short, key in RECORD_KEYS.items()}


def clusters_for(n: int, ipc: int, policy: str, class_id: str = "") -> tuple[int, str | None]:
    """(k, warning): k = ipc, or fewer under ``shrink``; ``error`` raises ``DataError``."""
    if n <= 0:
        raise DataError(f"class {class_id!r} has no usable images to cluster")
    if n >= ipc:
        return ipc, None
    if policy == "shrink":
        msg = (f"class {class_id!r} has {n} usable images < ipc={ipc}: using {n} clusters "
               "(edits.small_class_policy=shrink)")
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
    # heavy: sklearn (not loaded when this module is imported)
    from sklearn.neighbors import LocalOutlierFactor

    lof = LocalOutlierFactor(n_neighbors=max(1, min(n_neighbors, n - 1)), contamination=contamination)
    keep = lof.fit_predict(np.asarray(x, np.float32)) == 1
    if keep.sum() < min_keep:
        outlying = -lof.negative_outlier_factor_  # higher = more outlying
        order = np.lexsort((np.arange(n), outlying))  # least outlying first
        keep = np.zeros(n, dtype=bool)
        keep[order[:min_keep]] = True
    return keep


def kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
           init: str = "k-means++") -> tuple[np.ndarray, np.ndarray]:
    """(centres ``[k, D]``, labels ``[N]``) of scikit-learn's ``KMeans`` on the rows of ``x``, in float64.

    The authors' call (einsteinxia/EDITS ``distillation/gen_prototype.py`` @ 9983f5a,
    ``initialize_km_models`` / ``prototype_kmeans_ours``): ``KMeans(n_clusters=ipc, random_state=seed,
    n_init=10)`` with sklearn's defaults otherwise (k-means++ seeding, ``max_iter`` 300, ``tol`` 1e-4),
    fitted on the fused features as float64 (their features pass through Python lists first).
    OpenMP runs on one thread: sklearn adds its threads' partial centre sums in the order the threads
    finish, so with more threads the last bits, and in rare near-ties a label, would vary run to run.
    """
    x = np.asarray(x, dtype=np.float64)
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= n points, got k={k}, n={len(x)}")
    if init not in ("k-means++", "random"):
        raise ValueError(f"edits.kmeans_init must be k-means++ or random, got {init!r}")
    # heavy: sklearn (not loaded when this module is imported)
    from sklearn.cluster import KMeans  # heavy (scipy; seconds on a busy node): only where k-means runs

    with threadpool_limits(limits=1, user_api="openmp"):
        km = KMeans(n_clusters=k, random_state=int(seed), n_init=n_init, max_iter=max_iter, tol=tol,
                    init=init).fit(x)
    return km.cluster_centers_, km.labels_.astype(np.int64)


def process_class(class_id: str, img: np.ndarray, txt: np.ndarray,
                  settings: ClusterSettings) -> dict[str, Any]:
    """GSQ -> LOF -> k-means -> LSA for one class. Indices refer to the class's rows in order."""
    e = settings.edits
    fused = gsq_fuse(img, txt, tau=e.tau, fusion=e.fusion, normalize=e.feature_normalize)
    k, warning = clusters_for(len(fused), e.ipc, e.small_class_policy, class_id)
    keep = lof_filter(fused, e.contamination, e.lof_neighbors, min_keep=k)
    kept = np.flatnonzero(keep)
    centroids, sub_assign = kmeans_class(class_id, fused[kept], settings, k)
    assign = np.full(len(fused), -1, dtype=np.int64)
    assign[kept] = sub_assign
    sel = select(fused, assign, centroids, e.k_image, e.k_text, candidates=kept)
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
    # heavy: PIL (not loaded when this module is imported)
    from pipeline.core.write import component_name

    name = component_name(class_id)
    return run.paths.buffer / f"{name}.parquet", run.paths.clusters_dir / f"{name}.json"


def kmeans_class(class_id: str, fused: np.ndarray, settings: ClusterSettings, k: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The k-means of one class's fused features under ``settings`` (k: ``ipc``, at most one per row).

    ``class_id`` does not enter the seed: the authors seed every class's ``KMeans`` with the run's seed.
    """
    e = settings.edits
    k = min(e.ipc, len(fused)) if k is None else k
    return kmeans(fused, k, seed=e.seed, n_init=e.kmeans_nredo, max_iter=e.kmeans_niter, tol=e.kmeans_tol,
                  init=e.kmeans_init)


def _run_many(fn: Callable[..., Any], items: list[tuple[Any, ...]], settings: ClusterSettings,
              threads: int) -> list[Any]:
    """``fn(*item, settings)`` for each item, inside one task, with BLAS/OpenMP at ``threads`` threads."""
    with threadpool_limits(limits=threads):
        return [fn(*item, settings) for item in items]


def cluster_classes(items: Iterable[tuple[Any, tuple[Any, ...]]], settings: ClusterSettings, ray_cfg: Any,
                    fn: Callable[..., Any] = process_class) -> Iterator[tuple[Any, Any]]:
    """``(meta, fn(*args, settings))`` for each ``(meta, args)`` of ``items``, on Ray, as tasks finish.

    Classes go ``ray.cluster_classes_per_task`` to a task (one start-up per task, not per class); each task
    holds the CPUs of ``ray.actor_num_cpus`` rounded up and runs BLAS (GSQ, LOF) with that many threads (the
    k-means itself runs on one, see ``kmeans``), and as many tasks run as the cluster's CPUs hold (one more
    queued). Cluster tasks hold no GPU.
    """
    # heavy: ray (not loaded when this module is imported)
    import ray

    from pipeline.core.ray_setup import task_options

    cpus = max(1, math.ceil(ray_cfg.actor_num_cpus))
    opts = {**task_options(ray_cfg), "num_cpus": cpus, "num_gpus": 0}  # sklearn: CPU work only
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
    # heavy: PIL (not loaded when this module is imported)
    from pipeline.core.write import atomic_write_json, write_parquet

    c = res["class_id"]
    buf_path, json_path = _class_files(run, c)
    paths = [str(p) for p in feats["path"]]
    caps = [str(x) for x in feats["caption"]]
    write_parquet(buf_path, {"path": paths, "class_id": [c] * len(paths),
                             "label": feats["label"].astype(np.int64),
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
    return json.loads(run.paths.clusters.read_text())


def run_stage(run: Any, state: Any, force: bool) -> dict[str, Any]:
    # heavy: PIL, ray, torch (not loaded when this module is imported)
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
