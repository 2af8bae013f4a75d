"""Tiny run configs the run-level reliability tests share (zoo models, 32 px, a few steps)."""

from __future__ import annotations

from pathlib import Path


def diver_config(stage1: Path, zoo: Path, out: Path, data: Path | None = None) -> dict:
    cfg = {
        "method": "diver",
        "models": {"dit": "zoo:dit", "zoo_dir": str(zoo), "dtype": "float32"},
        "diver": {"input": str(stage1), "resolution": 32, "num_inference_steps": 3, "start_step": 1,
                  "fusion_window": [2, 1], "gamma": 0.1, "seed": 42, "side_by_side": False},
        "ray": {"num_cpus": 2, "actor_num_cpus": 0.5, "pool_sizes": {"recover": 1},
                "batch_sizes": {"recover": 1}, "micro_batch_sizes": {"recover": 1}},
        "output": {"dir": str(out)},
    }
    if data is not None:  # with evaluation: one convnet, one epoch, on the demo digits' val set
        cfg["data"] = {"root": str(data / "train"), "val_root": str(data / "val"), "image_size": 32}
        cfg["eval"] = {"students": ["convnet"], "epochs": 1, "batch_size": 16, "seed": 0, "augment": "none"}
    return cfg


def tiny_edits_config(demo_root: Path, out: Path, **edits) -> dict:
    """EDITS on three demo digit classes, five images each, 32 px, zoo models, three SD steps."""
    raw = {
        "method": "edits", "name": "e2e",
        "data": {"root": str(demo_root / "train"), "class_names": str(demo_root / "class_names.json"),
                 "image_size": 32, "classes": ["0", "1", "7"], "max_per_class": 5},
        "models": {"vlm": "zoo:vlm", "clip": "zoo:clip", "vae": "zoo:vae", "sd": "zoo:sd", "llm": "zoo:llm",
                   "dtype": "float32"},
        "edits": {"ipc": 2, "k_image": 2, "k_text": 2, "caption_image_size": 32, "caption_max_tokens": 12,
                  "feature_image_size": 32, "vae_source": "sd", "vae_resolution": 32,
                  "num_inference_steps": 3, "max_tokens": 16, "kmeans_nredo": 2, **edits},
        "ray": {"num_cpus": 2, "actor_num_cpus": 0.5,
                "batch_sizes": {"caption": 8, "embed": 8, "vae": 8, "llm": 8, "generate": 8}},
        "output": {"dir": str(out)},
    }
    return raw


def edits_config(data: Path, zoo: Path, out: Path) -> dict:
    """EDITS on 2 demo digit classes x 6 images, the zoo models, 32 px, a 4-step fine-tune."""
    return {
        "method": "edits",
        "data": {"root": str(data / "train"), "class_names": str(data / "class_names.json"),
                 "classes": ["0", "1"], "max_per_class": 6, "image_size": 32},
        "models": {r: f"zoo:{r}" for r in ("vlm", "clip", "vae", "sd", "llm")} | {"zoo_dir": str(zoo)},
        "edits": {"ipc": 2, "k_image": 2, "k_text": 2, "num_inference_steps": 3, "caption_max_tokens": 12,
                  "max_tokens": 20, "vae_resolution": 32, "feature_image_size": 32, "caption_image_size": 32,
                  "caption_flush_rows": 4,  # the captions come in 3 parts: a kill can land between two
                  # 12 images, 3 steps an epoch: the kill after step 1's checkpoint resumes mid-epoch and
                  # crosses an epoch boundary; 32 px, the zoo SD's size (the default, 512, is SD 1.5's)
                  "finetune": {"enabled": True, "max_steps": 4, "batch_size": 4, "resolution": 32,
                               "checkpoint_every_steps": 1}},
        # generate one image a batch: the manifest grows 1, 2, 3, 4 and a kill can land between two
        "ray": {"num_cpus": 2, "actor_num_cpus": 0.5, "batch_sizes": {"caption": 4, "embed": 4,
                                                                      "generate": 1}},
        "output": {"dir": str(out)},
    }
