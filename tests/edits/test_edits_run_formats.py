"""EDITS on parquet and WebDataset shards gives the captions, features and distilled images of the
ImageFolder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import config_from_dict
from tests.core.shard_sets import CLASSES, _folder, write_parquet_shards, write_wds_shards


def _cfg(root: str, fmt: str, names: Path, out: Path):
    return config_from_dict({
        "method": "edits", "name": f"formats-{fmt}",
        "data": {"root": root, "format": fmt, "class_names": str(names), "image_size": 32},
        "models": {"vlm": "zoo:vlm", "clip": "zoo:clip", "vae": "zoo:vae", "sd": "zoo:sd", "llm": "zoo:llm",
                   "dtype": "float32"},
        "edits": {"ipc": 1, "k_image": 1, "k_text": 1, "caption_image_size": 32, "caption_max_tokens": 8,
                  "feature_image_size": 32, "vae_source": "sd", "vae_resolution": 32,
                  "num_inference_steps": 2, "max_tokens": 12, "kmeans_nredo": 1},
        "ray": {"num_cpus": 2, "actor_num_cpus": 0.5,
                "batch_sizes": {"caption": 8, "embed": 8, "vae": 8, "llm": 8, "generate": 8}},
        "output": {"dir": str(out)},
    })


def _outputs(out: Path, to_file: dict[str, str]) -> dict:
    """Captions, features (by source file) and the distilled images' hashes of a finished run."""
    from pipeline.core.read import read_parquet

    caps, feats = {}, {}
    for c in CLASSES:
        f = read_parquet(out / "artefacts/features" / f"{c}.parquet")
        for i, p in enumerate(f["path"]):
            caps[to_file.get(str(p), str(p))] = str(f["caption"][i])
            feats[to_file.get(str(p), str(p))] = (f["img"][i], f["txt"][i])
    man = json.loads((out / "distilled/manifest.json").read_text())
    images = sorted((e["class_id"], e["sha256"], tuple(sorted(to_file.get(m, m) for m in e["members"])))
                    for e in man["images"])
    return {"captions": caps, "features": feats, "images": images}


@pytest.mark.slow  # three EDITS runs: about 4 minutes on 2 shared cores
def test_three_formats_distil_the_same_set(tmp_path, demo_root, zoo_dir, ray_local):
    from pipeline.edits.run import run_edits

    files = _folder(demo_root, tmp_path / "folder", 2)
    keys = {"parquet": write_parquet_shards(files, tmp_path / "hf", 4),
            "webdataset": write_wds_shards(files, tmp_path / "wds", 4)}
    names = demo_root / "class_names.json"
    ref = _outputs(run_edits(_cfg(str(tmp_path / "folder"), "imagefolder", names, tmp_path / "r0"), log=print)
                   and tmp_path / "r0", {})
    assert len(ref["captions"]) == 6 and len(ref["images"]) == 3
    roots = {"parquet": str(tmp_path / "hf"), "webdataset": (tmp_path / "wds").as_uri()}  # a file:// URI too
    for fmt, root in roots.items():
        out = tmp_path / fmt
        run_edits(_cfg(root, fmt, names, out), log=print)
        to_file = {k.replace(str(tmp_path / "wds"), root) if fmt == "webdataset" else k: v
                   for k, v in keys[fmt].items()}
        got = _outputs(out, to_file)
        assert got["captions"] == ref["captions"], fmt
        assert got["features"].keys() == ref["features"].keys()
        for f, (img, txt) in ref["features"].items():
            np.testing.assert_allclose(got["features"][f][0], img, atol=1e-5, err_msg=f"{fmt} {f}")
            np.testing.assert_allclose(got["features"][f][1], txt, atol=1e-5, err_msg=f"{fmt} {f}")
        assert got["images"] == ref["images"], fmt  # same pixels (sha256), same members
