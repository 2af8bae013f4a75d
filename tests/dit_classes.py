"""The DiT class of each image of a stage-1 set, mapped as ``pipeline.diver.load.load_set`` maps them."""

from __future__ import annotations

from pipeline.diver.classes import dit_class_map
from pipeline.diver.inputs import Stage1Set


def dit_classes(s: Stage1Set, class_map: dict[str, int] | None,
                num_dit_classes: int | None = None) -> list[int]:
    """``dit_class_map`` over ``s``'s classes, applied to each image's class id."""
    mapping, _ = dit_class_map(s.classes, class_map, num_dit_classes)
    return [mapping[c] for c in s.class_ids()]
