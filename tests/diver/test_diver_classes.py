"""DIVER's DiT class identity: ImageNet wnids map by the ImageNet-1K order for any subset, never silently to
0..K-1; the DiT's class count comes from its config; the class map is part of the resume fingerprint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.diver.classes import IMAGENET1K_FILE, dit_class_map, imagenet1k_index, imagenet1k_wnids
from pipeline.diver.inputs import Stage1Set
from pipeline.errors import ConfigError, DataError
from tests.dit_classes import dit_classes

REPO = Path(__file__).resolve().parents[2]
# ImageFruit's wnids and their ImageNet-1K indices (the map configs/diver_imagefruit.yaml spelled out by hand)
FRUIT = {"n07753275": 953, "n07753592": 954, "n07745940": 949, "n07747607": 950, "n07749582": 951,
         "n07768694": 957, "n07753113": 952, "n07720875": 945, "n07718472": 943, "n07742313": 948}
TEN = ["n01440764", "n01443537", "n01484850", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916",
       "n03417042", "n03425413"]  # Imagenette's wnids: tench .. golf ball


def _set(classes: list[str], per_class: int = 1, named: bool = True) -> Stage1Set:
    n = len(classes) * per_class
    labels = torch.arange(len(classes)).repeat_interleave(per_class)
    return Stage1Set(torch.zeros(n, 3, 4, 4), labels, classes, [f"x#{i}" for i in range(n)], named=named)


def test_imagenet1k_table_is_package_data_in_class_index_order():
    wnids = imagenet1k_wnids()
    assert len(wnids) == len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    index = imagenet1k_index()
    assert (index["n01440764"], index["n02102040"], index["n02979186"]) == (0, 217, 482)
    assert {w: index[w] for w in FRUIT} == FRUIT
    text = (REPO / "pipeline" / "diver" / IMAGENET1K_FILE).read_text()
    assert "Source:" in text and "495d5162b2944e826e25e65456be8c3dba5eacf7" in text  # its source is named
    # an installed package finds it: pyproject's package-data names it for pipeline.diver
    assert f'"pipeline.diver" = ["{IMAGENET1K_FILE}"]' in (REPO / "pyproject.toml").read_text()


def test_a_wnid_subset_maps_by_the_imagenet_order_even_when_the_dit_class_count_is_unknown():
    """The hub DiT id's class count is unknown to the driver offline: 10 wnids were conditioned on 0..9."""
    subset = _set(TEN, per_class=2)
    want = [imagenet1k_index()[w] for w in subset.class_ids()]
    assert want[:2] == [0, 0] and want[6:8] == [217, 217] and want[8:10] == [482, 482]
    assert dit_classes(subset, None, None) == want
    assert dit_classes(subset, None, 1000) == want
    assert dit_classes(_set(list(FRUIT)), None, 1000) == list(FRUIT.values())


def test_ambiguous_class_ids_stop_with_an_error_naming_the_setting():
    with pytest.raises(DataError, match=r"not ImageNet-1K.*diver.class_map"):
        dit_class_map(TEN, None, 10)  # wnids on a DiT with 10 classes
    with pytest.raises(DataError, match=r"outside ImageNet-1K.*diver.class_map"):
        dit_class_map(["n01440764", "n99999999"], None, 1000)
    with pytest.raises(DataError, match=r"mix of wnids.*diver.class_map"):
        dit_class_map(["n01440764", "cat"], None, 1000)
    with pytest.raises(DataError, match=r"neither ImageNet wnids nor DiT class indices.*diver.class_map"):
        dit_class_map(["cat", "dog"], None, 2)
    with pytest.raises(DataError, match=r"outside \[0, 4\).*diver.class_map"):
        dit_class_map(["3", "5"], None, 4)  # numeric ids are DiT indices only on a DiT with that many classes
    assert dit_class_map(["3", "5"], None, 1000) == ({"3": 3, "5": 5}, "numeric")
    assert dit_class_map(["new042"], None, 1000) == ({"new042": 42}, "sre2l")
    # the user's map wins over every rule, and is range-checked
    assert dit_class_map(["3", "n01440764"], {"3": 9, "n01440764": 7}, 1000)[0] == {"3": 9, "n01440764": 7}
    with pytest.raises(DataError, match=r"diver.class_map gives DiT class ids outside"):
        dit_class_map(["3"], {"3": 1000}, 1000)


def test_class_count_read_from_a_local_folder_and_a_hub_id_offline(zoo_dir, tmp_path):
    from actors.dit import dit_num_classes
    from actors.loading import resolve_ref

    assert dit_num_classes(resolve_ref("dit", "zoo:dit")) == (1000, "")
    # a hub id whose config is not in the local cache: unknown, with the reason (no download)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty"),
           "PYTHONPATH": str(REPO)}
    code = ("from actors.dit import dit_num_classes; import json; "
            "print(json.dumps(dit_num_classes('facebook/DiT-XL-2-256')))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    n, why = json.loads(out.stdout.strip().splitlines()[-1])
    assert n is None and "HF_HUB_OFFLINE" in why and "facebook/DiT-XL-2-256" in why
    # the same hub id with its config in the cache: read through diffusers' config loading
    snap = tmp_path / "cache" / "models--facebook--DiT-XL-2-256"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("0" * 40)
    (snap / "snapshots" / ("0" * 40) / "transformer").mkdir(parents=True)
    (snap / "snapshots" / ("0" * 40) / "transformer" / "config.json").write_text(
        json.dumps({"_class_name": "Transformer2DModel", "num_embeds_ada_norm": 1000, "in_channels": 4}))
    env["HF_HUB_CACHE"] = str(tmp_path / "cache")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [1000, ""]


def test_unknown_class_count_falls_back_to_the_table_and_the_actor_checks_it(zoo_dir):
    from actors.dit import DiTRecoverActor
    from pipeline.config import config_from_dict
    from pipeline.diver.classes import class_settings

    d = config_from_dict({"method": "diver", "diver": {"input": "x"}}).diver
    mapping, expected = class_settings(_set(TEN), d, None, (None, "not cached"), tensor_input=False)
    assert mapping == {w: imagenet1k_index()[w] for w in TEN} and expected == 1000
    with pytest.raises(ConfigError, match=r"diver.input_classes.*diver.class_map"):  # unnamed labels 0..9
        class_settings(_set([str(i) for i in range(10)], named=False), d, None, (None, "?"),
                       tensor_input=True)
    settings = {"num_inference_steps": 4, "start_step": 2, "fusion_window": (3, 2)}
    with pytest.raises(ValueError, match=r"assumed a DiT with 10 classes.*has 1000.*diver.class_map"):
        DiTRecoverActor("zoo:dit", settings, 32, dtype="float32", device="cpu", expected_classes=10)


def test_input_together_with_stage1_is_an_error_naming_both_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may be written: the run must stop at the config
    assert main(["run", str(REPO / "configs" / "demo_diver.yaml"), "diver.input=X"]) == 2
    err = capsys.readouterr().err
    assert "diver.input" in err and "diver.stage1" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())
    with pytest.raises(ConfigError, match=r"diver.input.*diver.stage1"):
        load_config(REPO / "configs" / "demo_diver.yaml", ["diver.input=X"])
    assert load_config(REPO / "configs" / "demo_diver.yaml", ["diver.input=X",
                                                              "diver.stage1=null"]).diver.input


def test_images_best_holding_the_dc_dm_dict_is_read_by_its_content(tmp_path):
    """PReDD saves the DC/DM single-experiment dict as images_best.pt: not MTT's bare tensor."""
    from pipeline.diver.inputs import load_stage1

    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 0, 1, 1])
    folder = tmp_path / "predd"
    folder.mkdir()
    torch.save({"data": [[x, y]], "res": 128}, folder / "images_best.pt")
    for path in (folder, folder / "images_best.pt"):  # the folder (auto: mtt) or the file itself
        s = load_stage1(path, classes=["n01440764", "n02102040"])
        assert s.layout == "data_pairs" and s.fmt == "pt" and torch.equal(s.images, x)
        assert s.class_ids() == ["n01440764"] * 2 + ["n02102040"] * 2
    # MTT's own layout (a bare tensor) still needs labels_best.pt beside it
    torch.save(x, tmp_path / "images_best.pt")
    with pytest.raises(DataError, match="labels_best.pt"):
        load_stage1(tmp_path / "images_best.pt")


def _wnid_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for w in ("n01440764", "n02102040", "n02979186"):
        (root / w).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / w / f"{i}.png")
    return root


def _imagenet1k_overrides(inp: Path, zoo: Path, out: Path, *extra: str) -> list[str]:
    """configs/diver_imagenet1k.yaml on the tiny zoo DiT (1000 classes), 32 px, 3 steps, on the CPU."""
    return [f"diver.input={inp}", "data.class_names=null", "data.val_root=null", "models.dit=zoo:dit",
            f"models.zoo_dir={zoo}", "models.dtype=float32", "diver.resolution=32",
            "diver.num_inference_steps=3",
            "diver.start_step=1", "diver.fusion_window=[2, 1]", "diver.null_class=null",
            "diver.vae_source=auto",
            "diver.side_by_side=false", "eval=null", "ray.num_cpus=2", "ray.actor_num_cpus=0.5",
            "ray.actor_num_gpus=0", "ray.pool_sizes={recover: 1}", "ray.batch_sizes={recover: 6}",
            "ray.micro_batch_sizes={recover: 6}", f"output.dir={out}", *extra]


def test_wnid_folders_on_the_zoo_dit_record_imagenet_indices_and_a_new_map_never_resumes(zoo_dir, ray_local,
                                                                                        tmp_path):
    from pipeline.diver.run import run_diver

    inp = _wnid_folder(tmp_path / "in")
    cfg = load_config(REPO / "configs" / "diver_imagenet1k.yaml",
                      _imagenet1k_overrides(inp, zoo_dir, tmp_path / "r"))
    assert cfg.diver.timestep_embedding == "dit" and cfg.diver.class_map is None
    run_diver(cfg)
    manifest = json.loads((tmp_path / "r" / "diver" / "manifest.json").read_text())
    by_class = {e["class_id"]: e["dit_class"] for e in manifest["images"]}
    assert by_class == {"n01440764": 0, "n02102040": 217, "n02979186": 482} and len(manifest["images"]) == 6
    settings = manifest["settings"]
    assert settings["class_map"] == by_class and settings["dit_num_classes"] == 1000
    assert settings["timestep_embedding"] == "dit"
    assert run_diver(cfg)["sets"]["input"]["recovered_now"] == 0  # same map: resumes
    wrong = load_config(REPO / "configs" / "diver_imagenet1k.yaml", _imagenet1k_overrides(
        inp, zoo_dir, tmp_path / "r", "diver.class_map={n01440764: 0, n02102040: 1, n02979186: 2}"))
    with pytest.raises(ConfigError, match=r"class_map: .*another output.dir"):
        run_diver(wrong)  # a fixed map never resumes the images of the old one
