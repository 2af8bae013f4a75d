"""Group rows streaming back from Ray Data and hand each group over as soon as it is complete.

A stage that writes one file per class (or per cluster) keeps only the groups in flight in
memory; failed rows (``error`` set) are recorded as skips and still count towards completion.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np


def complete_groups(batches: Iterable[dict[str, np.ndarray]], group_col: str, expected: dict[str, int],
                    item: Callable[[dict[str, np.ndarray], int], Any], skip: Callable[[str, str], None],
                    ) -> Iterator[tuple[str, list[Any]]]:
    """Yield ``(group, items)`` once per group of ``expected`` (group -> row count).

    Each row of ``batches`` (numpy batches with ``path``, ``error`` and ``group_col``) becomes
    ``item(batch, i)`` unless its ``error`` is set, which calls ``skip(path, error)`` instead.
    A group is yielded when its last row arrives; groups still short at the end (rows lost in
    errored blocks) follow, in ``expected`` order, with what they got (possibly nothing).
    """
    pending: dict[str, list[Any]] = {}
    seen: dict[str, int] = {}
    done: set[str] = set()
    for b in batches:
        for i in range(len(b["path"])):
            g = str(b[group_col][i])
            seen[g] = seen.get(g, 0) + 1
            if b["error"][i]:
                skip(str(b["path"][i]), str(b["error"][i]))
            else:
                pending.setdefault(g, []).append(item(b, i))
            if seen[g] == expected[g]:
                done.add(g)
                yield g, pending.pop(g, [])
    for g in expected:
        if g not in done:
            yield g, pending.pop(g, [])
