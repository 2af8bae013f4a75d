"""Which DiT class index each DIVER input class is conditioned on.

DiT-XL/2's class index is the ImageNet-1K index: the 1,000 wnids sorted (``imagenet1k_classes.tsv``,
package data, its sources named in its header). Rules, in order (``dit_class_map``):
1. ``diver.class_map`` given: it decides every class (a missing class id is an error);
2. every class id a wnid (``n01440764``): its ImageNet-1K index, for any subset (n02102040 -> 217), on a DiT
   with 1,000 classes (or whose class count is unknown here: then the recovery actors check it on load);
3. SRe2L/RDED folders ``new042``: ImageNet-1K class 42;
4. numeric ids (``"7"``): DiT indices themselves, when the DiT has that many classes (every id below its
   class count; unknown count: checked by the actors on load);
5. anything else (other names, a mix of kinds, unknown wnids) is ambiguous: an error naming
``diver.class_map``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

from pipeline.config import DiverConfig
from pipeline.diver.inputs import Stage1Set
from pipeline.diver.sets import log
from pipeline.errors import ConfigError, DataError

IMAGENET1K_FILE = "imagenet1k_classes.tsv"
IMAGENET1K_CLASSES = 1000
WNID = re.compile(r"^n\d{8}$")
SRE2L_CLASS = re.compile(r"^new(\d{3,4})$")  # SRe2L/RDED folder of ImageNet class k: new000 .. new999


@lru_cache(maxsize=1)
def imagenet1k_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1K wnids in class-index order (index = position), read from the package data."""
    text = resources.files("pipeline.diver").joinpath(IMAGENET1K_FILE).read_text(encoding="utf-8")
    wnids = tuple(line.split("\t")[0] for line in text.splitlines() if line.strip()
                  and not line.startswith("#"))
    if len(wnids) != IMAGENET1K_CLASSES or list(wnids) != sorted(set(wnids)):
        raise DataError(f"{IMAGENET1K_FILE} is damaged: expected 1000 sorted unique wnids, "
                        f"found {len(wnids)}")
    return wnids


@lru_cache(maxsize=1)
def imagenet1k_index() -> dict[str, int]:
    """wnid -> ImageNet-1K class index (DiT-XL/2's class index)."""
    return {w: i for i, w in enumerate(imagenet1k_wnids())}


def _kind(class_ids: Sequence[str]) -> str:
    """What the class ids are: wnid | sre2l | numeric | names (also for a mix of kinds)."""
    for kind, test in (("wnid", WNID.match), ("sre2l", SRE2L_CLASS.match), ("numeric", str.isdigit)):
        if class_ids and all(test(c) for c in class_ids):
            return kind
    return "names"


def _check_range(mapping: dict[str, int], num_classes: int | None, how: str) -> None:
    bad = {c: v for c, v in mapping.items() if v < 0 or (num_classes is not None and v >= num_classes)}
    if bad:
        shown = ", ".join(f"{c} -> {v}" for c, v in list(bad.items())[:5])
        limit = f"[0, {num_classes})" if num_classes is not None else "[0, ...)"
        raise DataError(f"{how} gives DiT class ids outside {limit} of the DiT ({shown}); set "
                        "diver.class_map (input class id -> DiT class index) or models.dit to a DiT with "
                        "those classes")


def dit_class_map(class_ids: Sequence[str], class_map: dict[str, int] | None,
                  num_classes: int | None) -> tuple[dict[str, int], str]:
    """(input class id -> DiT class index, how it was decided) for the classes of one input set.

    ``num_classes``: the DiT's class count (``num_embeds_ada_norm``), None when its config cannot be read.
    """
    ids = [str(c) for c in class_ids]
    if class_map is not None:
        missing = [c for c in ids if c not in class_map]
        if missing:
            raise DataError(f"diver.class_map has no entry for class ids {missing[:10]}")
        out = {c: int(class_map[c]) for c in ids}
        _check_range(out, num_classes, "diver.class_map")
        return out, "diver.class_map"
    kind = _kind(ids)
    if kind == "wnid":
        index = imagenet1k_index()
        unknown = [c for c in ids if c not in index]
        if unknown:
            raise DataError(f"class ids {unknown[:5]} are wnids outside ImageNet-1K, so they have no "
                            "DiT-XL/2 class index: set diver.class_map (wnid -> DiT class index)")
        if num_classes is not None and num_classes != IMAGENET1K_CLASSES:
            raise DataError(f"the input's class ids are ImageNet wnids ({ids[:3]}...) but the DiT has "
                            f"{num_classes} classes, not ImageNet-1K's 1000: set diver.class_map (wnid -> "
                            "DiT class index)")
        return {c: index[c] for c in ids}, "imagenet1k"
    if kind == "sre2l":
        out = {c: int(SRE2L_CLASS.match(c)[1]) for c in ids}
        _check_range(out, num_classes, f"SRe2L's new<k> folders ({ids[:3]}...)")
        return out, "sre2l"
    if kind == "numeric":
        out = {c: int(c) for c in ids}
        _check_range(out, num_classes, f"the numeric class ids ({ids[:3]}...)")
        return out, "numeric"
    named = [c for c in ids if WNID.match(c)]
    what = (f"a mix of wnids ({named[:2]}) and other ids" if named
            else f"class ids that are neither ImageNet wnids nor DiT class indices ({ids[:3]}...)")
    raise DataError(f"the input has {what}, so its DiT classes are ambiguous: set diver.class_map "
                    "(input class id -> DiT class index)")


def class_settings(data: Stage1Set, d: DiverConfig, class_map: dict[str, int] | None,
                   dit_classes: tuple[int | None, str],
                   tensor_input: bool) -> tuple[dict[str, int], int | None]:
    """(input class id -> DiT class index, the class count the actors must find) for one set; refuses what
    is ambiguous. ``dit_classes``: the DiT's class count and why it is unknown (``dit_num_classes``).

    Unnamed tensor labels (``0..K-1`` without ``diver.input_classes``) are DiT indices only when the set
    has exactly the DiT's classes: MTT's ImageFruit labels 0..9 are not tench .. great white shark.
    """
    num_classes, why = dit_classes
    if tensor_input and not data.named and class_map is None and (num_classes is None
                                                                   or len(data.classes) != num_classes):
        raise ConfigError(
            f"{d.input}: a tensor input ({data.fmt}) has only label indices {data.classes[:3]}...; without "
            f"diver.class_map they would land on DiT classes 0..K-1. Set diver.input_classes (the class ids "
            f"in label order, e.g. wnids: then they map by the ImageNet-1K order) or diver.class_map (class "
            f"id -> DiT class index)"
        )
    mapping, how = dit_class_map(data.classes, class_map, num_classes)
    if num_classes is not None:
        return mapping, None
    log(f"WARNING: {why}; {d.input or 'stage 1'}: class ids mapped by {how} without the DiT's class count "
        "(the recovery actors check it when they load the DiT)")
    return mapping, IMAGENET1K_CLASSES if how == "imagenet1k" else None
