"""DIVER reads each set to recover: its pixels (de-normalised to [0, 1]), the DiT class of each image, the
image keys, and the manifest settings that decide its recovered images."""

from __future__ import annotations

from pipeline.config import Config, DiverConfig
from pipeline.diver.classes import IMAGENET1K_CLASSES, dit_class_map
from pipeline.diver.inputs import Stage1Set, detect_format, load_stage1
from pipeline.diver.recovery import Recovery
from pipeline.diver.sets import DiverSet, LoadedSet, log
from pipeline.diver.tiles import check_tiles
from pipeline.errors import ConfigError


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


def read_set(d: DiverConfig, s: DiverSet) -> Stage1Set:
    """The set's stage-1 images; ``diver.input_mean/std/classes/experiment`` apply to ``diver.input`` only."""
    given = not s.built_in
    if d.input_classes is not None and given and (
            detect_format(s.input) if s.format == "auto" else s.format) == "imagefolder":
        raise ConfigError("diver.input_classes names the labels of tensor inputs (pt / mtt); an ImageFolder "
                          "input has its class ids as folder names: remove diver.input_classes")
    return load_stage1(s.input, s.format, d.input_mean if given else None, d.input_std if given else None,
                       classes=d.input_classes if given else None, experiment=d.input_experiment)


def load_set(cfg: Config, s: DiverSet, recovery: Recovery) -> LoadedSet:
    """Set ``s`` read, its classes mapped to the DiT's, its keys and manifest settings made."""
    d = cfg.diver
    data = read_set(d, s)
    class_ids, index = data.class_ids(), data.index_in_class()
    fingerprint = data.fingerprint()
    check_tiles(data.images, d.input_tiles, str(s.input))
    mapping, expected = class_settings(data, d, recovery.class_map, recovery.dit_classes,
                                       tensor_input=not s.built_in)
    # the class map and the DiT's class count decide the images: a change never resumes old ones
    settings = {**recovery.manifest, "input": str(s.input), "input_format": data.fmt,
                "normalization": data.normalization, "input_sha256": fingerprint,
                "class_map": mapping, "dit_num_classes": recovery.dit_classes[0]}
    if d.input_tiles != 1:  # only then: manifests of untiled runs stay resumable
        settings["input_tiles"] = d.input_tiles
    keys = [f"c{c}_i{k:03d}" for c, k in zip(class_ids, index)]
    return LoadedSet(s, data, keys, [mapping[c] for c in class_ids], settings, fingerprint, expected)
