"""DIVER reads each set to recover: its pixels (de-normalised to [0, 1]), the DiT class of each image, the
image keys, and the manifest settings that decide its recovered images."""

from __future__ import annotations

from pipeline.config import Config, DiverConfig
from pipeline.diver.classes import class_settings
from pipeline.diver.inputs import Stage1Set, detect_format, load_stage1
from pipeline.diver.recovery import Recovery
from pipeline.diver.sets import DiverSet, LoadedSet
from pipeline.diver.tiles import check_tiles
from pipeline.errors import ConfigError


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
