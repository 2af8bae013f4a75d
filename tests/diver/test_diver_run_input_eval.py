"""A DIVER run on a tensor stage-1 set evaluates that input too: "DIVER vs its input" in every DIVER table."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from pipeline.config import config_from_dict
from pipeline.core.pixels import unit_chw_to_u8_hwc
from pipeline.diver.inputs import PRESETS, save_pt
from pipeline.diver.run import run_diver
from tuning.evaluate import load_distilled, sets_from_summary

RECOVER = {"resolution": 32, "num_inference_steps": 6, "start_step": 3, "fusion_window": [4, 3], "gamma": 0.1,
           "sigma": "posterior", "torch_threads": 1}
RAY = {"num_cpus": 2, "actor_num_cpus": 0.5, "pool_sizes": {"recover": 1}, "batch_sizes": {"recover": 8}}


def test_a_pt_input_is_written_as_images_and_evaluated_beside_diver(demo_root, zoo_dir, ray_local, tmp_path):
    mean, std = PRESETS["imagenet"]
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1])
    save_pt(tmp_path / "set.pt", x, y, ["3", "7"], mean, std)  # digit classes 3 and 7, stored normalised
    cfg = config_from_dict({
        "method": "diver", "name": "t", "data": {"root": str(demo_root / "train"), "image_size": 32},
        "models": {"dit": "zoo:dit", "dtype": "float32"},
        "diver": {**RECOVER, "input": str(tmp_path / "set.pt"), "input_mean": mean, "input_std": std},
        "ray": RAY, "output": {"dir": str(tmp_path / "run")}})
    summary = run_diver(cfg)
    entry = summary["sets"]["input"]
    folder = tmp_path / "run" / "input_images"
    assert entry["input_images"] == str(folder) and entry["input_format"] == "pt"
    man = json.loads((folder / "manifest.json").read_text())
    assert man["method"] == "input_pt" and man["complete"]
    recovered = json.loads((tmp_path / "run" / "diver" / "manifest.json").read_text())
    assert sorted(e["key"] for e in man["images"]) == sorted(e["key"] for e in recovered["images"])
    want = unit_chw_to_u8_hwc(x)  # the de-normalised pixels DIVER recovered from, as 8-bit images
    for e in man["images"]:
        i = 2 * e["index"] + (0 if e["class_id"] == "3" else 1)
        got = np.asarray(Image.open(folder / e["file"]), dtype=np.int16)
        assert np.abs(got - want[i]).max() <= 1
    sets, methods = sets_from_summary(summary)
    assert sets == {"input_pt_input": str(folder), "diver_input": str(tmp_path / "run" / "diver")}
    assert methods == {"input_pt_input": "input_pt", "diver_input": "diver"}
    classes = [str(c) for c in range(10)]
    for d in sets.values():
        imgs, labels, meta = load_distilled(d, classes)
        assert imgs.shape == (4, 32, 32, 3) and sorted(labels.tolist()) == [3, 3, 7, 7] and meta["ipc"] == 2
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    run_diver(cfg)  # a re-run keeps the written input
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp
