"""Ray Tune sweep: two trials finish, the better one is picked, files and plot are written."""

import json
from pathlib import Path

import pytest
import yaml

from pipeline.config import config_from_dict, load_config
from pipeline.errors import ConfigError
from pipeline.run import distil_one_set
from tuning.sweep import apply_params, run_sweep, search_space

REPO = Path(__file__).resolve().parents[2]


def _cfg(demo_root, out, **sweep):
    return config_from_dict({
        "name": "t", "method": "none",
        "data": {"root": str(demo_root / "train"), "val_root": str(demo_root / "val"), "image_size": 32},
        "eval": {"students": ["convnet"], "student_kwargs": {"convnet": {"width": 16}}, "epochs": 4},
        "sweep": {"params": {"eval.lr": [0.0, 0.02]}, "trial_cpus": 1, **sweep},
        "output": {"dir": str(out)},
    })


def test_two_trial_sweep_picks_the_better_one(demo_root, ray_local, tmp_path):
    summary = run_sweep(_cfg(demo_root, tmp_path), distil_one_set, log=lambda _m: None)
    trials = summary["trials"]
    assert len(trials) == 2 and all(t["error"] is None for t in trials)
    by_lr = {t["params"]["eval.lr"]: t["mean_top1"] for t in trials}
    assert by_lr[0.02] > by_lr[0.0] + 20  # lr 0 never leaves the random init (~chance)
    assert summary["best"]["params"] == {"eval.lr": 0.02}
    sweep_dir = tmp_path / "sweep"
    saved = json.loads((sweep_dir / "sweep_results.json").read_text())
    assert saved["best"]["mean_top1"] == max(by_lr.values())
    assert (saved["selected_on"].startswith("a holdout of 10% of each class of")
            and "never the validation" in saved["selected_on"])
    best_cfg = load_config(sweep_dir / "best_config.yaml")
    assert best_cfg.eval.lr == 0.02 and best_cfg.sweep is None
    assert (sweep_dir / "sweep.png").stat().st_size > 1000
    assert "**best**" in (sweep_dir / "sweep.md").read_text()
    # sweep.repeats defaults to 2: every trial shows its std over the two seeds' headline means
    assert all(t["seeds"] == 2 and t["mean_top1_std"] >= 0.0 for t in trials)
    assert "| mean top-1 (%) | std over seeds | seeds | convnet |" in (sweep_dir / "sweep.md").read_text()


def test_search_space_and_param_errors(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, params={"diver.gamma": [0.0, 0.1],
                                            "edits.tau": {"loguniform": [0.001, 0.1]}},
               search="random", num_samples=3)
    names, space = search_space(cfg.sweep)
    assert names == ["diver.gamma", "edits.tau"] and set(space) == {"p0", "p1"}
    assert apply_params(cfg, {"diver.gamma": 0.3,
                              "diver.fusion_window": [45, 20]}).diver.fusion_window == (45, 20)
    with pytest.raises(ConfigError, match="random"):
        search_space(_cfg(demo_root, tmp_path, params={"edits.tau": {"uniform": [0.0, 1.0]}}).sweep)
    with pytest.raises(ConfigError, match="empty"):
        search_space(_cfg(demo_root, tmp_path, params={}).sweep)
    with pytest.raises(ConfigError, match="gama"):  # misspelt key: rejected before any trial runs
        run_sweep(_cfg(demo_root, tmp_path, params={"diver.gama": [0.1]}), distil_one_set)
    with pytest.raises(ConfigError):
        apply_params(cfg, {"diver.start_step": 60})  # start_step must stay below num_inference_steps


def test_demo_sweep_config_is_valid():
    cfg = load_config(REPO / "configs" / "demo_sweep.yaml")
    assert cfg.sweep is not None and cfg.sweep.params
    raw = yaml.safe_load((REPO / "configs" / "demo_sweep.yaml").read_text())
    assert set(raw["sweep"]["params"]) <= {"diver.gamma", "diver.start_step", "diver.fusion_window",
                                            "edits.guidance_scale", "edits.strength", "edits.tau"}


def _stage1_folder(demo_root: Path, out: Path, per_class: int = 1) -> None:
    """A tiny stage-1 ImageFolder: the first ``per_class`` real train digits of each class."""
    import shutil

    for cls in sorted(p for p in (demo_root / "train").iterdir() if p.is_dir()):
        (out / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:per_class]:
            shutil.copy(f, out / cls.name / f.name)


def test_diver_gamma_sweep_with_relative_paths_from_a_fresh_working_directory(demo_root, ray_local, tmp_path,
                                                                              monkeypatch):
    """Tune runs each trial in its own working directory: relative paths must be resolved at load time,
    and each trial must evaluate the recovered set, not the DIVER run's root folder."""
    import shutil

    shutil.copytree(demo_root, tmp_path / "digits")
    _stage1_folder(demo_root, tmp_path / "runs" / "stage1")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "method": "diver", "name": "gamma_sweep",
        "data": {"root": "digits/train", "val_root": "digits/val", "image_size": 32},
        "models": {"dit": "zoo:dit"},
        "diver": {"input": "runs/stage1", "resolution": 32, "torch_threads": 1},
        "eval": {"students": ["convnet"], "student_kwargs": {"convnet": {"width": 8}}, "epochs": 2},
        "sweep": {"params": {"diver.gamma": [0.0, 0.1]}, "trial_cpus": 1, "max_concurrent_trials": 1,
                  "repeats": 1},
        "ray": {"actor_num_cpus": 0.5, "pool_sizes": {"recover": 1}, "batch_sizes": {"recover": 10}},
        "output": {"dir": "runs/sweep_out"},
    }))
    monkeypatch.chdir(tmp_path)
    summary = run_sweep(load_config("sweep.yaml"), distil_one_set, log=lambda _m: None)
    assert [t["error"] for t in summary["trials"]] == [None, None]
    assert summary["best"]["params"]["diver.gamma"] in (0.0, 0.1)
    sweep_dir = tmp_path / "runs" / "sweep_out" / "sweep"
    assert json.loads((sweep_dir / "best.json").read_text())["trial_id"] == summary["best"]["trial_id"]
    for trial in (sweep_dir / "trials").iterdir():  # each trial recovered the ten stage-1 images
        recovered = sorted((trial / "diver").rglob("*.png"))
        assert len(recovered) == 10, trial


def _edits_sweep(demo_root, tmp_path, monkeypatch, trial_cpus: float = 1,
                 finetune: dict | None = None) -> None:
    """Two EDITS trials (guidance 1 and 10) on three digit classes of the test zoo, from a fresh working
    directory with relative paths: each trial runs the whole pipeline in its own Tune working directory,
    evaluates its ``distilled/`` set, and one is picked."""
    import shutil

    shutil.copytree(demo_root, tmp_path / "digits")
    edits = {"ipc": 2, "k_image": 2, "k_text": 2, "caption_image_size": 32, "caption_max_tokens": 12,
             "feature_image_size": 32, "vae_source": "sd", "vae_resolution": 32, "num_inference_steps": 3,
             "max_tokens": 16, "kmeans_nredo": 2, **({"finetune": finetune} if finetune else {})}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "method": "edits", "name": "guidance_sweep",
        "data": {"root": "digits/train", "val_root": "digits/val", "class_names": "digits/class_names.json",
                 "image_size": 32, "classes": ["0", "1", "7"], "max_per_class": 5},
        "models": {"vlm": "zoo:vlm", "clip": "zoo:clip", "vae": "zoo:vae", "sd": "zoo:sd", "llm": "zoo:llm",
                   "dtype": "float32"},
        "edits": edits,
        "eval": {"students": ["convnet"], "student_kwargs": {"convnet": {"width": 8}}, "epochs": 2},
        "sweep": {"params": {"edits.guidance_scale": [1.0, 10.0]}, "trial_cpus": trial_cpus,
                  "max_concurrent_trials": 1, "repeats": 1},
        "ray": {"actor_num_cpus": 0.5,
                "batch_sizes": {"caption": 8, "embed": 8, "vae": 8, "llm": 8, "generate": 8}},
        "output": {"dir": "runs/sweep_out"},
    }))
    monkeypatch.chdir(tmp_path)
    summary = run_sweep(load_config("sweep.yaml"), distil_one_set, log=lambda _m: None)
    assert [t["error"] for t in summary["trials"]] == [None, None]
    assert sorted(t["params"]["edits.guidance_scale"] for t in summary["trials"]) == [1.0, 10.0]
    assert all(0.0 <= t["mean_top1"] <= 100.0 for t in summary["trials"])
    best = max(summary["trials"], key=lambda t: t["mean_top1"])
    assert summary["best"]["mean_top1"] == best["mean_top1"]
    sweep_dir = tmp_path / "runs" / "sweep_out" / "sweep"
    saved = json.loads((sweep_dir / "best.json").read_text())
    assert saved["trial_id"] == summary["best"]["trial_id"] and saved["params"] == summary["best"]["params"]
    assert (load_config(sweep_dir / "best_config.yaml").edits.guidance_scale
            == saved["params"]["edits.guidance_scale"])
    shas = []
    for trial in sorted((sweep_dir / "trials").iterdir()):  # each trial generated IPC x classes images
        man = json.loads((trial / "distilled" / "manifest.json").read_text())
        assert sorted(e["class_id"] for e in man["images"]) == ["0", "0", "1", "1", "7", "7"], trial
        # distilled from the carved train part only (the holdout scores the trials)
        assert all(m.startswith(str(sweep_dir / "split" / "train")) for e in man["images"]
                   for m in e["members"])
        shas.append(sorted(e["sha256"] for e in man["images"]))
        if finetune:  # generated with the trial's fine-tuned SD
            assert (trial / "finetuned_sd" / "unet").is_dir()
    assert shas[0] != shas[1]  # the guidance scale reached the generator


def test_edits_guidance_scale_sweep_with_relative_paths_from_a_fresh_working_directory(demo_root, zoo_dir,
                                                                                      ray_local, tmp_path,
                                                                                      monkeypatch):
    _edits_sweep(demo_root, tmp_path, monkeypatch)


@pytest.mark.slow
def test_edits_sweep_with_finetune_finishes_when_the_trial_leaves_the_finetune_its_cpus(demo_root, zoo_dir,
                                                                                        ray_local, tmp_path,
                                                                                        monkeypatch):
    """With the fine-tune on, a trial (0.5 CPU) + its Train worker (1) + data tasks (0.5) fill the 2 CPUs;
    the fine-tune's filter and select used to ask for a whole CPU and waited forever."""
    _edits_sweep(demo_root, tmp_path, monkeypatch, trial_cpus=0.5,
                 finetune={"enabled": True, "max_steps": 2, "vae_steps": 0, "batch_size": 4, "resolution": 32,
                           "use_gpu": False, "mixed_precision": "no", "checkpoint_every_steps": 2,
                           "cache_latents": True, "learning_rate": 1e-4})


def test_a_trial_that_cannot_get_its_methods_cpus_fails_before_it_starts(demo_root, tmp_path):
    """On 2 CPUs a trial holding 1 CPU leaves 1 for EDITS's fine-tune (1 Train worker + 0.5 for its data):
    it would wait forever, so the sweep stops first and names the keys; 0.5 for the trial fits."""
    from tuning.sweep import check_trial_fits, method_cpus

    raw = {"method": "edits", "data": {"root": str(demo_root / "train"), "val_root": str(demo_root / "val")},
           "edits": {"finetune": {"enabled": True}},
           "sweep": {"params": {"edits.guidance_scale": [1.0, 10.0]}}, "output": {"dir": str(tmp_path)}}
    cfg = config_from_dict(raw)
    assert method_cpus(cfg) == 1.5 and cfg.sweep.trial_cpus == 1
    with pytest.raises(ConfigError, match=r"needs 2.5 CPUs .* Ray has 2: lower sweep.trial_cpus"):
        check_trial_fits(cfg, 2.0)
    check_trial_fits(apply_params(cfg, {"sweep.trial_cpus": 0.5}), 2.0)
    check_trial_fits(apply_params(cfg, {"edits.finetune.enabled": False}), 2.0)  # 1 + one 0.5-CPU actor
    assert method_cpus(apply_params(cfg, {"method": "diver"})) == 0.5


@pytest.mark.slow
def test_the_commands_in_demo_sweep_yaml_run_as_written(tmp_path):
    """The commands of configs/demo_sweep.yaml's comment, exactly as written and in that order, from a fresh
    working directory: demo, sweep (relative paths), demo again (its report shows the sweep)."""
    import os
    import shutil
    import subprocess
    import sys
    import time

    shutil.copytree(REPO / "configs", tmp_path / "configs")
    comment = [line[1:].strip() for line in (REPO / "configs" / "demo_sweep.yaml").read_text().splitlines()
               if line.startswith("#")]
    commands = [line.split("#")[0].strip() for line in comment if line.startswith("semdistill ")]
    assert commands == ["semdistill demo --out runs/demo", "semdistill sweep configs/demo_sweep.yaml",
                        "semdistill demo --out runs/demo"]
    exe = Path(sys.executable).parent / "semdistill"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for cmd in commands:
        t0 = time.time()
        proc = subprocess.run([str(exe), *cmd.split()[1:]], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=3600, check=False)
        print(f"{cmd}: {time.time() - t0:.0f} s")
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    sweep_dir = tmp_path / "runs" / "demo" / "sweep"
    best = json.loads((sweep_dir / "best.json").read_text())
    assert best["error"] is None and best["mean_top1"] > 10
    assert best["params"]["diver.gamma"] in (0.0, 0.05, 0.1, 0.3)
    assert (sweep_dir / "sweep.png").stat().st_size > 1000
    assert "<img alt='sweep'" in (tmp_path / "runs" / "demo" / "report.html").read_text()


def test_optuna_search_with_asha_proposes_values_inside_the_range(demo_root, ray_local, tmp_path):
    cfg = _cfg(demo_root, tmp_path, params={"eval.lr": {"loguniform": [0.001, 0.05]}}, search="optuna",
               num_samples=2, scheduler="asha")
    summary = run_sweep(cfg, distil_one_set, log=lambda _m: None)
    lrs = [t["params"]["eval.lr"] for t in summary["trials"]]
    assert len(lrs) == 2 and len(set(lrs)) == 2 and all(0.001 <= lr <= 0.05 for lr in lrs)
    assert all(t["error"] is None and t["mean_top1"] > 0 for t in summary["trials"])


def test_holdout_is_seeded_disjoint_and_leaves_every_class_images_to_train_on(demo_root, tmp_path):
    import os

    from tuning.holdout import carve_holdout, holdout_count

    assert [holdout_count(n, 0.1) for n in (1, 2, 9, 10, 11, 143)] == [0, 1, 1, 1, 2, 15]
    train, held = carve_holdout(demo_root / "train", tmp_path / "a", 0.1, seed=3)
    _, held_again = carve_holdout(demo_root / "train", tmp_path / "b", 0.1, seed=3)
    _, held_other = carve_holdout(demo_root / "train", tmp_path / "c", 0.1, seed=4)

    def files(root):
        return {os.path.realpath(f) for f in root.rglob("*.png")}

    real = {os.path.realpath(f) for f in (demo_root / "train").rglob("*.png")}
    assert files(train) | files(held) == real and not files(train) & files(held)
    assert files(held) == files(held_again) and files(held) != files(held_other)
    for cls in sorted((demo_root / "train").iterdir()):
        n = len(list(cls.glob("*.png")))
        assert len(list((held / cls.name).glob("*.png"))) == holdout_count(n, 0.1)
        assert len(list((train / cls.name).glob("*.png"))) == n - holdout_count(n, 0.1)
