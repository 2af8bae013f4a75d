"""complete_groups: groups handed over when their last row arrives, errors skipped, short groups last."""

from __future__ import annotations

import numpy as np

from pipeline.core.grouping import complete_groups


def _batch(paths, groups, errors):
    return {"path": np.array(paths, dtype=object), "g": np.array(groups, dtype=object),
            "error": np.array(errors, dtype=object)}


def test_groups_complete_in_arrival_order_with_errors_counted_and_skipped():
    batches = [_batch(["a1", "b1"], ["a", "b"], ["", ""]),
               _batch(["a2", "c1"], ["a", "c"], ["bad file", ""]),
               _batch(["b2"], ["b"], [""])]
    skipped: list[tuple[str, str]] = []
    events: list[str] = []

    def item(b, i):
        events.append(f"item {b['path'][i]}")
        return str(b["path"][i])

    out = []
    for g, items in complete_groups(batches, "g", {"a": 2, "b": 2, "c": 2, "d": 1}, item,
                                    lambda p, e: skipped.append((p, e))):
        events.append(f"group {g}")
        out.append((g, items))
    # a completes with its 2nd row (an error: skipped, still counted); b with b2; c is short; d never came
    assert out == [("a", ["a1"]), ("b", ["b1", "b2"]), ("c", ["c1"]), ("d", [])]
    assert skipped == [("a2", "bad file")]
    assert events.index("group a") < events.index("item c1")  # handed over before later rows are read
