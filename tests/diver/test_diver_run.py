"""DIVER end to end on Ray: DM stage 1 -> DiT actor pool -> ImageFolder + manifest + side-by-side."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import config_from_dict
from pipeline.core.seeds import image_seed
from pipeline.diver.inputs import PRESETS, save_pt
from pipeline.diver.run import run_diver
from pipeline.errors import DataError

RECOVER = {"resolution": 32, "num_inference_steps": 6, "start_step": 3, "fusion_window": [4, 3], "gamma": 0.1,
           "sigma": "posterior",
           "torch_threads": 1}
RAY = {"num_cpus": 2, "actor_num_cpus": 0.5, "pool_sizes": {"recover": 1}, "batch_sizes": {"recover": 8}}


def _cfg(tmp_path, demo_root, **diver):
    return config_from_dict({
        "method": "diver", "name": "t",
        "data": {"root": str(demo_root / "train"), "image_size": 32},
        "models": {"dit": "zoo:dit", "dtype": "float32"},
        "diver": {**RECOVER, **diver}, "ray": RAY, "output": {"dir": str(tmp_path / "run")},
    })


def test_dm_two_ipcs_recovered_with_manifest_side_by_side_and_resume(demo_root, zoo_dir, ray_local, tmp_path):
    stage1 = {"ipcs": [1, 2], "iterations": 3, "batch_real": 8, "net_width": 8, "max_per_class": 12}
    cfg = _cfg(tmp_path, demo_root, stage1=stage1)
    summary = run_diver(cfg)
    run = tmp_path / "run"
    assert summary["output"] == str(run) and set(summary["sets"]) == {"ipc1", "ipc2"}
    for name, ipc in (("ipc1", 1), ("ipc2", 2)):
        entry = summary["sets"][name]
        assert entry["images"] == 10 * ipc and entry["recovered_now"] == 10 * ipc
        manifest = json.loads((run / name / "diver" / "manifest.json").read_text())
        assert manifest["method"] == "diver" and len(manifest["images"]) == 10 * ipc
        assert manifest["settings"]["gamma"] == 0.1 and manifest["settings"]["fusion_window"] == [4, 3]
        for e in manifest["images"]:
            # from (class, index), not run order
            assert e["seed"] == image_seed(42, e["class_id"], e["index"])
            assert e["dit_class"] == int(e["class_id"]) and e["source"].startswith(str(run / name / "stage1"))
            with Image.open(run / name / "diver" / e["file"]) as im:
                assert im.size == (32, 32) and im.mode == "RGB"
        with Image.open(entry["side_by_side"]) as sbs:
            # 10 class rows of 64 px (+2 px pad); input and recovered blocks of `ipc` columns, a 16 px gap
            assert sbs.size == (2 * ipc * 66 + 16, 10 * 66)
            left = np.asarray(sbs)[:64, :64]
            right = np.asarray(sbs)[:64, ipc * 66 + 16:ipc * 66 + 16 + 64]
        assert not np.array_equal(left, right)
    first = (run / "ipc2" / "diver" / "3" / "c3_i001.png").read_bytes()
    # a re-run resumes from the manifests; --from-stage recover recomputes the same bytes
    again = run_diver(cfg)
    assert all(s["recovered_now"] == 0 for s in again["sets"].values())
    redo = run_diver(cfg, from_stage="recover")
    assert redo["sets"]["ipc2"]["recovered_now"] == 20
    assert (run / "ipc2" / "diver" / "3" / "c3_i001.png").read_bytes() == first


def test_pt_input_is_denormalised_before_the_vae_and_class_map_applies(zoo_dir, ray_local, tmp_path,
                                                                       demo_root):
    from actors.dit import load_dit, recover_images
    from pipeline.diver.guidance import RecoverSettings

    mean, std = PRESETS["imagenet"]
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1])
    save_pt(tmp_path / "set.pt", x, y, ["n07753275", "n07753592"], mean, std)
    # start at the last step (index 0, t = 0): the output is then sensitive to the input pixels even with the
    # zoo DiT
    cfg = _cfg(tmp_path, demo_root, input=str(tmp_path / "set.pt"), input_mean=mean, input_std=std,
               class_map={"n07753275": 953, "n07753592": 954}, start_step=0, fusion_window=[0, 0],
               reverse_start="start_step", sigma="posterior")
    summary = run_diver(cfg)
    out = tmp_path / "run" / "diver"
    assert summary["sets"]["input"]["recovered"] == str(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["dit_class"] for e in manifest["images"]] == [953, 953, 954, 954]
    assert manifest["settings"]["normalization"]["mean"] == pytest.approx(mean)
    # the pipeline's image equals a direct recovery of the de-normalised pixels, not of the raw tensor
    transformer, vae, scheduler = load_dit("zoo:dit", device="cpu", dtype="float32")
    settings = RecoverSettings.from_mapping(cfg.diver.model_dump())
    e = next(e for e in manifest["images"] if e["key"] == "cn07753592_i001")
    got = np.asarray(Image.open(out / e["file"]), dtype=np.float32)
    idx = 3
    direct = recover_images(transformer, vae, scheduler, x[idx:idx + 1], [954], [e["seed"]], settings, 32)
    raw = torch.load(tmp_path / "set.pt")["images"][idx:idx + 1].clamp(0, 1)
    wrong = recover_images(transformer, vae, scheduler, raw, [954], [e["seed"]], settings, 32)
    to_u8 = lambda t: (t[0].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255)
    assert np.abs(got - to_u8(direct)).max() <= 1.0
    assert np.abs(got - to_u8(wrong)).mean() > 5.0  # measured ~30 levels: normalised tensors are not pixels
    # an out-of-range DiT class fails in the driver, naming the fix
    bad = _cfg(tmp_path / "b", demo_root, input=str(tmp_path / "set.pt"), input_mean=mean, input_std=std,
               class_map={"n07753275": 953, "n07753592": 5000})
    with pytest.raises(DataError, match="class_map"):
        run_diver(bad)


def test_images_lost_in_errored_blocks_fail_the_run_and_keep_the_rest(tmp_path):
    """With ray.max_errored_blocks > 0 Ray drops failed blocks silently: the driver must notice."""
    from pipeline.core.write import DistilledSetWriter
    from pipeline.diver.recover import check_recovered

    writer = DistilledSetWriter(tmp_path / "diver", "diver")
    keys = ["c0_i000", "c0_i001", "c1_i000"]
    writer.add(keys[0], "0", 0, np.zeros((8, 8, 3), np.uint8), {})
    writer.add(keys[2], "1", 1, np.zeros((8, 8, 3), np.uint8), {})
    with pytest.raises(DataError, match=r"1 images did not come back .*ipc1/c0_i001.*re-run to resume"):
        check_recovered({"ipc1": keys}, {"ipc1": writer})
    assert writer.done(keys[0]) and writer.done(keys[2])  # the finished ones stay
    writer.add(keys[1], "0", 0, np.zeros((8, 8, 3), np.uint8), {})
    check_recovered({"ipc1": keys}, {"ipc1": writer})  # complete: no error
