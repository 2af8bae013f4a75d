"""DIVER's report: per set, a tensor input written as images (evaluated beside DIVER's output) and
``side_by_side.png`` (input | recovered, one row per class); for the run, ``summary.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.config import Config
from pipeline.core.grids import paint_grid
from pipeline.core.pixels import unit_chw_to_u8_hwc
from pipeline.core.write import atomic_save_image, atomic_write_json, read_manifest
from pipeline.diver.input_images import write_input_images
from pipeline.diver.sets import LoadedSet, log


def side_by_side(s: LoadedSet, path: Path, min_px: int = 64) -> Path:
    """One row per class: the class's input images, a gap, then their recovered versions."""
    data, recovered_dir = s.data, s.set.recovered
    entries = {e["key"]: e for e in read_manifest(recovered_dir)["images"]}
    h, w = data.images.shape[-2:]
    scale = max(1, -(-min_px // max(h, w)))
    ch, cw = h * scale, w * scale
    by_class: dict[int, list[int]] = {}
    for i, lab in enumerate(data.labels.tolist()):
        by_class.setdefault(lab, []).append(i)
    ncol = max(len(v) for v in by_class.values())
    rows = []
    for lab in sorted(by_class):
        idx = by_class[lab]
        recovered = [entries.get(s.keys[i]) for i in idx]
        rows.append([unit_chw_to_u8_hwc(data.images[i]) for i in idx] + [None] * (ncol - len(idx))
                    + [recovered_dir / e["file"] if e is not None else None for e in recovered])
    canvas = paint_grid(rows, (cw, ch), cols=2 * ncol, split=ncol, gap=max(8, cw // 4),
                        resample=Image.NEAREST if scale > 1 else Image.BICUBIC)
    atomic_save_image(path, canvas)
    return path


def report_set(cfg: Config, s: LoadedSet, recovered_now: int) -> dict[str, Any]:
    """The summary entry of one set, after writing its input images and side-by-side sheet."""
    base = s.set.base
    entry: dict[str, Any] = {"stage1": str(s.set.input), "recovered": str(s.set.recovered),
                             "images": len(s.keys), "recovered_now": recovered_now, "ipc": s.set.ipc,
                             "input_format": s.data.fmt}
    if not s.set.built_in and s.data.fmt != "imagefolder":  # a tensor input: evaluated beside DIVER's output
        entry["input_images"] = str(write_input_images(s.data, s.keys, base / "input_images",
                                                       str(s.set.input), s.fingerprint))
    if cfg.diver.side_by_side:
        entry["side_by_side"] = str(side_by_side(s, base / "side_by_side.png"))
    log(f"diver {s.set.name}: {entry['images']} images -> {entry['recovered']}")
    return entry


def report(cfg: Config, sets: Sequence[LoadedSet], written: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """Every set's summary entry, by set name."""
    return {s.set.name: report_set(cfg, s, written.get(s.set.name, 0)) for s in sets}


def write_summary(cfg: Config, out: Path, sets: dict[str, dict[str, Any]], timings: dict[str, float]
                  ) -> dict[str, Any]:
    """``<output.dir>/summary.json``: the output folder, the DiT, every set's entry, the wall times."""
    summary = {"method": "diver", "output": str(out), "sets": sets, "dit": cfg.models.dit, "timings": timings}
    atomic_write_json(out / "summary.json", summary)
    return summary
