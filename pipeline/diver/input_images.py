"""A tensor stage-1 set (MTT ``images_best.pt``, an NCFM or DC/DM ``.pt``) written as images, so the
evaluation
can train on DIVER's input beside DIVER's output: "DIVER vs its input" is DIVER's central comparison.

The images are exactly the pixels DIVER recovered from (``Stage1Set.images``, de-normalised to [0, 1]), under
the same keys and class ids as the recovered set, quantised to 8 bits like every set the evaluation reads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.core.pixels import unit_chw_to_u8_hwc
from pipeline.core.write import DistilledSetWriter, read_manifest


def input_method(fmt: str) -> str:
    """The table's method name of a tensor input: ``input_mtt``, ``input_pt``."""
    return f"input_{fmt}"


def write_input_images(data, keys: list[str], out_dir: Path, source: str, fingerprint: str) -> Path:
    """Write ``data`` (a ``Stage1Set``) as ImageFolder + manifest under ``out_dir`` (method ``input_<fmt>``);
    a folder already holding every key of the same input (``fingerprint``, its pixels' sha256) is kept."""
    out_dir = Path(out_dir)
    method = input_method(data.fmt)
    settings = {"input": source, "input_format": data.fmt, "input_sha256": fingerprint}
    if (out_dir / "manifest.json").is_file():
        man = read_manifest(out_dir)
        if man.get("settings") == settings and {e["key"] for e in man["images"]} == set(keys):
            return out_dir
        shutil.rmtree(out_dir)  # another input (or a partial write): write it again
    writer = DistilledSetWriter(out_dir, method, settings)
    arr = unit_chw_to_u8_hwc(data.images)
    cids, idx = data.class_ids(), data.index_in_class()
    for i, key in enumerate(keys):
        writer.add(key, cids[i], int(data.labels[i]), arr[i], {"index": int(idx[i]),
                                                               "source": data.sources[i]},
                   flush=False)
    writer.finish()
    return out_dir
