"""EDITS end to end on Ray, on a tiny subset of the demo digits: stages, artefacts, resume, --from-stage."""

from __future__ import annotations

import json

import pytest

from pipeline.config import config_from_dict
from pipeline.errors import ConfigError
from tests.run_configs import tiny_edits_config


def _cfg(demo_root, out, **edits):
    return config_from_dict(tiny_edits_config(demo_root, out, **edits))


def test_edits_end_to_end_resume_and_from_stage(tmp_path, demo_root, zoo_dir, ray_local):
    from pipeline.checks.verify import verify_set
    from pipeline.core.read import read_parquet
    from pipeline.edits.run import run_edits

    out = tmp_path / "run"
    cfg = _cfg(demo_root, out)
    logs: list[str] = []
    summary = run_edits(cfg, log=logs.append)

    # the distilled set: IPC images per class, a manifest that says where each came from
    distilled = out / "distilled"
    assert summary["output"] == str(distilled)
    rep = verify_set(distilled, ipc=2)
    assert rep["ok"], rep["problems"]
    assert rep["counts"] == {"0": 2, "1": 2, "7": 2}
    man = json.loads((distilled / "manifest.json").read_text())
    texts = json.loads((out / "artefacts/prototypes/texts.json").read_text())
    clusters = json.loads((out / "artefacts/clusters.json").read_text())["classes"]
    assert len(texts) == 6 and (out / "contact_sheet.png").stat().st_size > 0
    for e in man["images"]:
        cl = clusters[e["class_id"]]["clusters"][e["cluster"]]
        assert e["key"] == cl["key"] and e["members"] == cl["image_members"]
        # LSA keeps the k_image (=2) nearest members, or the whole cluster where it is smaller
        assert e["caption_ids"] == cl["text_members"] and e["cluster_size"] == cl["size"]
        assert len(e["members"]) == min(2, cl["size"]) and len(e["caption_ids"]) == min(2, cl["size"])
        assert e["prototype_text"] == texts[e["key"]]["text"]
        assert "handwritten digit" in e["prototype_text"]  # the class name is in every prompt
        assert (out / "artefacts/prototypes/latents" / f"{e['key']}.pt").is_file()
        assert all(p.startswith(str(demo_root / "train" / e["class_id"])) for p in e["members"])
    buf = read_parquet(out / "artefacts/buffer/0.parquet")
    assert buf["fused"].shape == (5, 64) and set(buf["cluster"].tolist()) == {0, 1}
    assert sum(c["size"] for c in clusters["0"]["clusters"]) == 5
    assert (len(buf["caption"]) == 5
            and all(c.startswith("a photo of handwritten digit zero") for c in buf["caption"]))
    timings = summary["timings"]
    assert set(timings) == {"caption", "embed", "cluster", "prototype", "generate", "total"}
    assert summary["stages"]["caption"]["captioned_now"] == 15

    # a re-run reuses every stage; --from-stage generate regenerates the same images (per-image seeds)
    sha = {e["key"]: e["sha256"] for e in man["images"]}
    logs.clear()
    again = run_edits(cfg, log=logs.append)
    assert sum(1 for line in logs if "up to date" in line) == 5
    assert all(again["timings"][s] == 0.0 for s in ("caption", "embed", "cluster", "prototype", "generate"))
    regen = run_edits(cfg, from_stage="generate", log=logs.append)
    assert regen["stages"]["generate"]["generated_now"] == 6
    man2 = json.loads((distilled / "manifest.json").read_text())
    assert {e["key"]: e["sha256"] for e in man2["images"]} == sha

    print("e2e stage timings (s):", timings, "re-run:", again["timings"]["total"],
          "from generate:", regen["timings"]["total"])
    with pytest.raises(ConfigError, match="--from-stage must be one of caption, embed, cluster"):
        run_edits(cfg, from_stage="captions")


@pytest.mark.slow
def test_edits_changed_settings_rerun_only_what_depends_on_them(tmp_path, demo_root, zoo_dir, ray_local):
    """tau changes re-run cluster and later stages, never caption or embed; fine-tune feeds generation."""
    from pipeline.checks.verify import verify_set
    from pipeline.edits.run import run_edits

    out = tmp_path / "run"
    run_edits(_cfg(demo_root, out), log=lambda _m: None)
    logs: list[str] = []
    changed = run_edits(_cfg(demo_root, out, tau=0.5), log=logs.append)
    assert (any("caption: up to date" in line for line in logs)
            and any("embed: up to date" in line for line in logs))
    assert changed["stages"]["cluster"]["clustered_now"] == 3
    assert verify_set(out / "distilled", ipc=2)["ok"]
    ft = {"enabled": True, "max_steps": 3, "vae_steps": 2, "batch_size": 4, "resolution": 32,
          "use_gpu": False,
          "mixed_precision": "no", "checkpoint_every_steps": 2, "cache_latents": True, "learning_rate": 1e-4}
    tuned = run_edits(_cfg(demo_root, out, tau=0.5, finetune=ft), log=lambda _m: None)
    assert tuned["stages"]["finetune"]["steps"] == 3
    assert tuned["stages"]["generate"]["generator"] == str(out / "finetuned_sd")
    assert (out / "finetuned_sd" / "unet").is_dir() and (out / "finetuned_sd" / "vae").is_dir()
    assert verify_set(out / "distilled", ipc=2)["ok"]


def test_edits_without_text_prototypes_prompts_the_class_name(tmp_path, demo_root, zoo_dir, ray_local):
    """The paper's ablation: the same clusters and image prototypes, the class prompt in place of the LLM's
    text."""
    from pipeline.checks.verify import verify_set
    from pipeline.edits.run import run_edits

    out = tmp_path / "run"
    # an LLM that cannot load: the ablation must never start it
    cfg = _cfg(demo_root, out, text_prototype="class_prompt", class_prompt="a clean photo of {class_name}")
    models = cfg.models.model_copy(update={"llm": str(tmp_path / "no-such-llm")})
    cfg = cfg.model_copy(update={"models": models})
    summary = run_edits(cfg, log=lambda _m: None)
    assert summary["stages"]["prototype"]["texts_now"] == 6
    assert verify_set(out / "distilled", ipc=2)["ok"]
    man = json.loads((out / "distilled" / "manifest.json").read_text())
    assert man["settings"]["text_prototype"] == "class_prompt"
    by_class = {"0": "zero", "1": "one", "7": "seven"}
    for e in man["images"]:
        assert e["prototype_text"] == f"a clean photo of handwritten digit {by_class[e['class_id']]}"
        assert e["caption_ids"] == [] and len(e["members"]) >= 1
    texts = json.loads((out / "artefacts/prototypes/texts.json").read_text())
    assert {t["backend"] for t in texts.values()} == {"class_prompt"}


def test_class_prompt_must_name_the_class(tmp_path, demo_root):
    with pytest.raises(ConfigError, match=r"edits.class_prompt .* needs a \{class_name\} placeholder"):
        _cfg(demo_root, tmp_path, text_prototype="class_prompt", class_prompt="a photo of a digit")
