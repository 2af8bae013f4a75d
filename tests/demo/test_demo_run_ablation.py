"""The full demo's DIVER ablation: the same DiT pass from the same DM set, with the guidance off."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from pipeline.config import config_from_dict
from pipeline.demo.run import gamma0_config
from pipeline.diver.run import run_diver


def test_gamma0_recovers_the_same_dm_set_with_the_same_seeds_and_only_gamma_differs(demo_root, zoo_dir,
                                                                                    ray_local,
                                                                                    tmp_path):
    cfg = config_from_dict({
        "method": "diver", "name": "t", "data": {"root": str(demo_root / "train"), "image_size": 32},
        "models": {"dit": "zoo:dit", "dtype": "float32"},
        "diver": {"resolution": 32, "num_inference_steps": 6, "start_step": 3, "fusion_window": [4, 1],
                  "gamma": 0.5, "sigma": "posterior", "torch_threads": 1,
                  "stage1": {"ipc": 1, "iterations": 3, "batch_real": 8, "net_width": 8, "max_per_class": 12,
                             "init": "noise"}},
        "ray": {"num_cpus": 2, "actor_num_cpus": 0.5, "pool_sizes": {"recover": 1},
                "batch_sizes": {"recover": 10}},
        "output": {"dir": str(tmp_path / "diver")}})
    full = run_diver(cfg)["sets"]["ipc1"]
    plain = next(iter(run_diver(gamma0_config(cfg, tmp_path / "diver" / "ipc1" / "stage1",
                                              tmp_path))["sets"].values()))
    assert plain["recovered"] == str(tmp_path / "diver_gamma0" / "diver")
    m_full, m_plain = (json.loads((tmp_path / p / "manifest.json").read_text())
                       for p in (full["recovered"], plain["recovered"]))
    assert m_plain["settings"]["gamma"] == 0.0 and m_full["settings"]["gamma"] == 0.5
    assert m_plain["settings"]["input_sha256"] == m_full["settings"]["input_sha256"]  # the same DM pixels
    diff = {k for k in m_full["settings"] if m_full["settings"][k] != m_plain["settings"].get(k)}
    assert diff <= {"gamma", "input", "input_format"}, diff
    by_key = {e["key"]: e for e in m_plain["images"]}
    moved = 0
    for e in m_full["images"]:
        assert by_key[e["key"]]["seed"] == e["seed"]
        a = np.asarray(Image.open(tmp_path / full["recovered"] / e["file"]), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / plain["recovered"] / by_key[e["key"]]["file"]), dtype=np.int16)
        moved += int(np.abs(a - b).max() > 0)
    assert moved == len(m_full["images"])  # the guidance changes every image; the rest of the pass is shared


def test_edits_without_text_prototypes_reuses_the_full_run_and_changes_only_the_prompts(demo_root, zoo_dir,
                                                                                         ray_local, tmp_path):
    from pipeline.demo.run import no_text_config
    from pipeline.edits.run import run_edits
    from tests.run_configs import tiny_edits_config

    ft = {"enabled": True, "max_steps": 2, "vae_steps": 0, "batch_size": 4, "resolution": 32,
          "use_gpu": False, "mixed_precision": "no", "cache_latents": True, "learning_rate": 1e-4}
    cfg = config_from_dict(tiny_edits_config(demo_root, tmp_path / "edits", finetune=ft))
    run_edits(cfg, log=lambda _m: None)
    logs: list[str] = []
    abl = no_text_config(cfg, tmp_path)
    res = run_edits(abl, log=logs.append)
    assert res["output"] == str(tmp_path / "edits_no_text" / "distilled")
    for s in ("caption", "embed", "cluster", "finetune"):  # the full run's work is reused, not redone
        assert any(f"{s}: up to date" in line for line in logs), (s, logs)
    assert res["stages"]["prototype"]["latents_now"] == 0 and res["stages"]["prototype"]["texts_now"] == 6
    m_full, m_abl = (json.loads((tmp_path / d / "distilled" / "manifest.json").read_text())
                     for d in ("edits", "edits_no_text"))
    assert (m_abl["settings"]["generator"] == m_full["settings"]["generator"]
            == str(tmp_path / "edits" / "finetuned_sd"))
    diff = {k for k in m_full["settings"] if m_full["settings"][k] != m_abl["settings"].get(k)}
    assert diff == {"text_prototype"}, diff
    full_by_key = {e["key"]: e for e in m_full["images"]}
    for e in m_abl["images"]:
        f = full_by_key[e["key"]]
        assert e["members"] == f["members"] and e["seed"] == f["seed"]  # same clusters, same image prototypes
        assert e["prototype_text"].startswith("a photo of handwritten digit") and e["caption_ids"] == []
        assert f["prototype_text"] != e["prototype_text"]
