"""Local Semantic Awareness (EDITS step 5): per cluster, members ranked by distance to the centroid.

As the authors' ``find_cluster_samples`` (einsteinxia/EDITS ``distillation/gen_prototype.py`` @ 9983f5a):
a cluster's members are ranked by Euclidean distance to its centre in the fused GSQ space; the
``k_image`` nearest make the image prototype, the ``k_text`` nearest give the captions for the text
prototype. We rank by the squared distance (the same order) and break ties by the member's index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClusterSelection:
    """One cluster: member indices (into the class's rows) nearest first, and what LSA picked."""

    cluster: int
    members: list[int]
    distances: list[float]
    image_members: list[int] = field(default_factory=list)
    text_members: list[int] = field(default_factory=list)
    empty: bool = False  # k-means left it without members: ranked over the whole class instead


def rank_by_distance(x: np.ndarray, centroid: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``idx`` sorted by squared L2 distance of ``x[idx]`` to ``centroid`` (stable), and the distances."""
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) == 0:
        return idx, np.zeros(0)
    d = np.sum((np.asarray(x, np.float64)[idx] - np.asarray(centroid, np.float64)) ** 2, axis=1)
    order = np.lexsort((idx, d))  # primary: distance, secondary: index
    return idx[order], d[order]


def select(x: np.ndarray, assign: np.ndarray, centroids: np.ndarray, k_image: int, k_text: int,
           candidates: np.ndarray | None = None) -> list[ClusterSelection]:
    """LSA for every cluster of one class.

    ``assign[i]`` is the cluster of row ``i`` (-1: not clustered, e.g. an outlier);
    ``candidates`` are the rows an empty cluster falls back to (default: all clustered rows).
    """
    assign = np.asarray(assign)
    pool = np.flatnonzero(assign >= 0) if candidates is None else np.asarray(candidates)
    out = []
    for c in range(len(centroids)):
        members = np.flatnonzero(assign == c)
        empty = len(members) == 0
        ranked, dist = rank_by_distance(x, centroids[c], pool if empty else members)
        keep = 0 if empty else len(ranked)  # an empty cluster owns no members, it only borrows the nearest
        out.append(ClusterSelection(
            cluster=c, members=[int(i) for i in ranked[:keep]], distances=[float(v) for v in dist[:keep]],
            image_members=[int(i) for i in ranked[:k_image]], text_members=[int(i) for i in ranked[:k_text]],
            empty=empty,
        ))
    return out
