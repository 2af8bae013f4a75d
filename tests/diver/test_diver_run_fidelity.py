"""DIVER fidelity around the loop: seeded VAE samples, models.vae, tensor-input labels,
the ImageFruit config end to end on a stand-in set, stale resumes, the sigma fallback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import config_from_dict, load_config
from pipeline.diver.inputs import PRESETS, save_pt
from pipeline.diver.run import run_diver
from pipeline.errors import ConfigError

FRUIT = ["n07753275", "n07753592", "n07745940", "n07747607", "n07749582", "n07768694", "n07753113",
         "n07720875", "n07718472", "n07742313"]
FRUIT_DIT = [953, 954, 949, 950, 951, 957, 952, 945, 943, 948]
FAST = {"resolution": 32, "num_inference_steps": 4, "start_step": 2, "fusion_window": [2, 1],
        "sigma": "posterior", "torch_threads": 1}
RAY = {"num_cpus": 2, "actor_num_cpus": 0.5, "pool_sizes": {"recover": 1}, "batch_sizes": {"recover": 8}}


def test_latent_mode_sample_is_seeded_per_image_not_by_the_global_rng(zoo_dir):
    from actors.dit import load_dit, recover_images
    from pipeline.diver.guidance import RecoverSettings

    transformer, vae, scheduler = load_dit("zoo:dit", device="cpu", dtype="float32")
    s = RecoverSettings.from_mapping({**FAST, "latent_mode": "sample", "reverse_start": "start_step"})
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    a = recover_images(transformer, vae, scheduler, x, [3, 4], [10, 11], s, 32)
    torch.manual_seed(2)
    b = recover_images(transformer, vae, scheduler, x, [3, 4], [10, 11], s, 32)
    assert torch.equal(a, b)  # the global RNG does not matter
    one = recover_images(transformer, vae, scheduler, x[1:], [4], [11], s, 32)
    torch.testing.assert_close(one, a[1:], rtol=1e-4, atol=1e-4)  # nor the rest of the batch
    mode = recover_images(transformer, vae, scheduler, x, [3, 4], [10, 11],
                          RecoverSettings.from_mapping({**FAST, "reverse_start": "start_step"}), 32)
    assert (mode - a).abs().max() > 1e-3  # the sample is not the mode


def test_models_vae_is_used_when_vae_source_is_models(zoo_dir):
    from actors.dit import DiTRecoverActor
    from actors.loading import resolve_ref
    from pipeline.diver.guidance import RecoverSettings
    from pipeline.diver.recovery import vae_ref_for

    zoo_vae = resolve_ref("vae", "zoo:vae")
    cfg = config_from_dict({"method": "diver", "models": {"dit": "zoo:dit", "vae": "zoo:vae"},
                            "diver": {"vae_source": "models"}})
    assert vae_ref_for(cfg) == zoo_vae
    # auto, zoo DiT
    assert vae_ref_for(config_from_dict({"method": "diver", "models": {"dit": "zoo:dit"}})) is None
    hub = config_from_dict({"method": "diver", "models": {"dit": "facebook/DiT-XL-2-256"}})
    assert vae_ref_for(hub) == "stabilityai/sd-vae-ft-mse"  # auto on a real DiT: the paper's VAE
    actor = DiTRecoverActor("zoo:dit", RecoverSettings().as_dict(), resolution=32, dtype="float32",
                            device="cpu", vae_ref=zoo_vae)
    from diffusers import AutoencoderKL

    ref = AutoencoderKL.from_pretrained(zoo_vae)
    w = next(iter(ref.state_dict()))
    assert torch.equal(actor.vae.state_dict()[w], ref.state_dict()[w])


def _stand_in_mtt(root: Path, per_class: int = 1) -> tuple[Path, Path]:
    """An MTT-style ImageFruit set (normalised images_best.pt, labels 0..9) and a val set with the wnids."""
    mean, std = PRESETS["imagenet"]
    n = 10 * per_class
    x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    norm = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    mtt = root / "mtt"
    mtt.mkdir(parents=True)
    torch.save(norm, mtt / "images_best.pt")
    torch.save(torch.arange(10).repeat_interleave(per_class), mtt / "labels_best.pt")
    val = root / "val"
    for w in FRUIT:
        (val / w).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(val / w / "a.png")
    return mtt, val


def _fruit_overrides(tmp_path, mtt, val, *extra):
    return [f"diver.input={mtt}", f"data.root={val}", f"data.val_root={val}", "models.dit=zoo:dit",
            "models.vae=zoo:vae", "models.dtype=float32", *[f"diver.{k}={json.dumps(v)}" for k,
                                                            v in FAST.items()],
            "ray.num_cpus=2", "ray.actor_num_cpus=0.5", "ray.actor_num_gpus=0", "ray.pool_sizes={recover: 1}",
            "ray.batch_sizes={recover: 10}", "ray.micro_batch_sizes={recover: 10}",
            f"output.dir={tmp_path / 'run'}",
            *extra]


def test_imagefruit_config_end_to_end_on_a_stand_in_set(zoo_dir, ray_local, tmp_path):
    from actors.loading import resolve_ref
    from pipeline.core.image_index import scan_image_folder

    mtt, val = _stand_in_mtt(tmp_path)
    cfg = load_config("configs/diver_imagefruit.yaml", _fruit_overrides(tmp_path, mtt, val))
    assert cfg.diver.input_classes == FRUIT and cfg.diver.vae_source == "models"
    run_diver(cfg)
    out = tmp_path / "run" / "diver"
    assert scan_image_folder(out).classes == scan_image_folder(val).classes == sorted(FRUIT)  # evaluable
    manifest = json.loads((out / "manifest.json").read_text())
    by_class = {e["class_id"]: e["dit_class"] for e in manifest["images"]}
    assert by_class == dict(zip(FRUIT, FRUIT_DIT))
    assert manifest["settings"]["vae"] == resolve_ref("vae", "zoo:vae")
    # the same tensor input without a class map would land on DiT classes 0..9: an error naming the fix
    bare = load_config("configs/diver_imagefruit.yaml",
                       _fruit_overrides(tmp_path / "b", mtt, val, "diver.class_map=null",
                                        "diver.input_classes=null"))
    with pytest.raises(ConfigError, match=r"diver.class_map.*|diver.input_classes"):
        run_diver(bare)


def _pt_cfg(tmp_path, inp: Path, **diver):
    return config_from_dict({
        "method": "diver", "name": "t", "models": {"dit": "zoo:dit", "dtype": "float32"},
        "diver": {**FAST, "input": str(inp), "class_map": {"a": 1, "b": 2}, **diver}, "ray": RAY,
        "output": {"dir": str(tmp_path / "run")},
    })


def test_resume_refuses_a_folder_made_with_other_settings_or_input(zoo_dir, ray_local, tmp_path):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    save_pt(tmp_path / "set.pt", x, torch.tensor([0, 1]), ["a", "b"])
    first = run_diver(_pt_cfg(tmp_path, tmp_path / "set.pt"))
    assert first["sets"]["input"]["recovered_now"] == 2
    # same: resume
    assert run_diver(_pt_cfg(tmp_path, tmp_path / "set.pt"))["sets"]["input"]["recovered_now"] == 0
    with pytest.raises(ConfigError, match=r"gamma.*another output.dir.*output.overwrite=true"):
        run_diver(_pt_cfg(tmp_path, tmp_path / "set.pt", gamma=0.3))
    save_pt(tmp_path / "set.pt", x.flip(0), torch.tensor([0, 1]), ["a", "b"])  # same path, other pixels
    with pytest.raises(ConfigError, match=r"input_sha256.*output.overwrite=true"):
        run_diver(_pt_cfg(tmp_path, tmp_path / "set.pt"))
    cfg = _pt_cfg(tmp_path, tmp_path / "set.pt", gamma=0.3)
    cfg.output.overwrite = True
    assert run_diver(cfg)["sets"]["input"]["recovered_now"] == 2
    manifest = json.loads((tmp_path / "run" / "diver" / "manifest.json").read_text())
    assert manifest["settings"]["gamma"] == 0.3


def test_sigma_learned_falls_back_once_where_the_variance_is_absent_or_untrained(tmp_path):
    from actors.dit import variance_usable
    from pipeline.diver.guidance import RecoverSettings

    def folder(name: str, out_channels: int, report: dict | None = None) -> Path:
        p = tmp_path / name
        (p / "transformer").mkdir(parents=True)
        (p / "transformer" / "config.json").write_text(json.dumps({"in_channels": 4,
                                                                   "out_channels": out_channels}))
        if report is not None:
            (p / "demo_dit.json").write_text(json.dumps(report))
        return p

    learned = folder("learned", 8)
    no_var = folder("no_var", 4)
    demo = folder("demo", 8, {"recipe": {"dit_steps": 1500}})  # the demo recipe: epsilon loss only
    assert variance_usable(learned) == (True, "")
    assert variance_usable(no_var)[0] is False and variance_usable(demo)[0] is False
    assert variance_usable(tmp_path / "hub-id")[0] is None
    logs: list[str] = []
    s = RecoverSettings()
    assert s.for_variance(*variance_usable(learned), logs.append).diver.sigma == "learned" and not logs
    assert s.for_variance(*variance_usable(demo), logs.append).diver.sigma == "posterior"
    assert len(logs) == 1 and "WARNING" in logs[0] and "variance" in logs[0]
    s = RecoverSettings.of(sigma="one_minus_alpha_bar")
    kept = s.for_variance(*variance_usable(no_var), logs.append)
    assert kept.diver.sigma == "one_minus_alpha_bar" and len(logs) == 1
