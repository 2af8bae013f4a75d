"""bench/gpu_check.py: its real-size configs, its CPU dry run (float32 and bfloat16), its no-CUDA error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.bench.bench_output import printed_ratio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check


def test_gpu_check_fails_clearly_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHON": sys.executable}, check=False)
    assert r.returncode == 3
    assert "no CUDA GPU is visible" in r.stderr and "--cpu-smoke" in r.stderr


def test_gpu_check_real_size_configs_build():
    """The inline configs are the real architectures (built on the meta device: no memory, no download)."""
    from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DConditionModel

    with torch.device("meta"):
        dit = DiTTransformer2DModel(**gpu_check.DIT_XL_2_256)
        unet = UNet2DConditionModel(**gpu_check.SD15_UNET)
        vae = AutoencoderKL(**gpu_check.SD_VAE)
    millions = lambda m: sum(p.numel() for p in m.parameters()) / 1e6
    assert 700 < millions(dit) < 800  # DiT-XL/2 (diffusers keeps an embedding per block)
    assert 855 < millions(unet) < 865  # SD 1.5 UNet: 859.5 M
    assert 83 < millions(vae) < 84.5  # SD VAE: 83.7 M
    assert dit.config.sample_size * 8 == 256 and dit.config.num_embeds_ada_norm == 1000


def test_gpu_check_cpu_smoke(tmp_path, capsys):
    out = tmp_path / "gc.json"
    assert gpu_check.main(["--cpu-smoke", "--batches", "1,2", "--sd-batches", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert printed_ratio(text) > 0
    res = json.loads(out.read_text())
    assert [r["batch"] for r in res["diver"]["rows"]] == [1, 2]
    assert res["sd_img2img"]["rows"][0]["batch"] == 1
    assert set(res["costs"]) == {"recover.step", "plain_dit.step", "generate.step"}
    assert all(v > 0 for v in res["costs"].values())
    assert res["smoke"] is True and res["diver"]["best"]["s_per_image"] == min(
        r["s_per_image"] for r in res["diver"]["rows"])


def test_gpu_check_cpu_smoke_in_bfloat16_with_channels_last(tmp_path, capsys):
    """The GPU defaults' code path (bf16, SDPA, channels_last) of the GPU check, on the CPU."""
    out = tmp_path / "gc.json"
    assert gpu_check.main(["--cpu-smoke", "--dtype", "bfloat16", "--channels-last", "true", "--batches",
                           "1,2", "--sd-batches", "1", "--skip-fp32", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dtype torch.bfloat16; channels_last True" in text and printed_ratio(text) > 0
    res = json.loads(out.read_text())
    assert res["dtype"] == "bfloat16" and res["channels_last"] is True and res["compile"] is False
    assert all(v > 0 for v in res["costs"].values())
    est = res["per_image_gb"]  # CPU: no allocator peak, so no measurement; the estimate is the pipeline's
    assert est["generate"] == {"measured": None, "estimate": 1.5 * 2 ** 30 / 1e9}
