#!/usr/bin/env python
"""GPU check at real model sizes, random weights, no downloads (run through bench/gpu_check.sh).

Measures, on one CUDA GPU:
  * DIVER recovery (VAE encode, inheritance, guided DDIM over the fusion window, decode) with a
    DiT-XL/2 256 px transformer (facebook/DiT-XL-2-256's config, written inline) and the SD VAE:
    s/image and peak GPU memory at batch 1 and at every batch size tried (best one marked);
  * plain DiT sampling (50 DDIM steps from noise, CFG 4) of the same model, batch 1 and best batch;
  * EDITS generation: Stable Diffusion 1.5 img2img (UNet + CLIP ViT-L/14 text tower at SD 1.5's
    config, inline) from a latent image prototype, strength 0.7, CFG 10, 50 steps, 512 px.
Paper (DIVER, RTX 4090): 2.48 s/image and 4.02 GB for DIVER, 2.41 s/image for plain DiT.
The models run as the pipeline's actors run them (actors/gpu_defaults.py): ``--dtype auto`` (bf16 on
CUDA, fp16 where the GPU has no bf16), SDPA attention, ``--channels-last auto`` (on CUDA) for the UNet
and VAEs, ``--compile`` optional; it prints each model's measured per-image memory next to the estimate
``pipeline/core/gpu_batch.py`` sizes Ray batches with.
Weights are random: timings and memory are those of the real architectures, images are noise.

``--cpu-smoke`` runs the same code with tiny models on the CPU in seconds (for tests).
Writes ``bench/results/gpu_check.json`` (GPU runs), which ``semdistill plan`` reads, and ends
with ``ratio: <DIVER s/image / plain DiT s/image at batch 1>``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from actors.dit import recover_images
from actors.gpu_defaults import channels_last_on, prepare_dit, prepare_sd
from actors.latents import decode_latents
from actors.loading import pick_dtype
from pipeline.core.gpu_batch import ROLE_MEMORY
from pipeline.diver.guidance import RecoverSettings, plain_dit_latents

# facebook/DiT-XL-2-256, transformer/config.json (written out: nothing is downloaded)
DIT_XL_2_256 = {
    "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8,
    "num_layers": 28, "dropout": 0.0,
    "norm_num_groups": 32, "attention_bias": True, "sample_size": 32, "patch_size": 2,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000, "upcast_attention": False, "norm_type": "ada_norm_zero",
    "norm_elementwise_affine": False, "norm_eps": 1e-5,
}
# stabilityai/sd-vae-ft-mse (the VAE of DiT and of SD 1.5)
SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "act_fn": "silu",
    "norm_num_groups": 32,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512), "sample_size": 256, "scaling_factor": 0.18215,
}
# stable-diffusion-v1-5, unet/config.json
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32, "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0, "downsample_padding": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-5,
    "center_input_sample": False,
}
# openai/clip-vit-large-patch14 text tower (SD 1.5's text encoder)
CLIP_L_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                   "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                   "projection_dim": 768}


def tiny_models() -> dict:
    """CPU-smoke sizes: the zoo's tiny DiT/VAE and a tiny SD UNet/text tower."""
    from actors.zoo import tiny_dit_transformer, tiny_vae

    return {
        "dit": {"tiny": tiny_dit_transformer}, "vae": {"tiny": tiny_vae},
        "unet": {"sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
                 "block_out_channels": (32, 64),
                     "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                     "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 32,
                     "attention_head_dim": 4, "norm_num_groups": 16},
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                 "num_attention_heads": 2},
    }


class Meter:
    """Wall time with device sync, and peak memory (GPU: allocator peak; CPU: not measured)."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, fn, repeats: int = 1) -> tuple[float, float | None]:
        """(median seconds of ``repeats`` calls, peak GB during them)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        times = []
        for _ in range(repeats):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(self.device) / 1e9 if self.device.type == "cuda" else None
        return statistics.median(times), peak


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def build_dit(device: torch.device, dtype: torch.dtype, smoke: bool, channels_last="auto",
              compile: bool = False):
    from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    with torch.device(device):
        if smoke:
            t = tiny_models()
            transformer, vae = t["dit"]["tiny"](sample_size=8), t["vae"]["tiny"]()
        else:
            transformer, vae = DiTTransformer2DModel(**DIT_XL_2_256), AutoencoderKL(**SD_VAE)
    transformer = transformer.to(device=device, dtype=dtype).eval()
    vae = vae.to(device=device, dtype=dtype).eval()
    prepare_dit(transformer, vae, device, channels_last, compile)  # as the DiT actor's loader does
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    return transformer, vae, scheduler


def build_sd(device: torch.device, dtype: torch.dtype, smoke: bool, channels_last="auto",
             compile: bool = False):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from actors.zoo import _text_ids, build_tokenizer

    torch.manual_seed(1)
    tok = build_tokenizer()
    with torch.device(device):
        if smoke:
            t = tiny_models()
            unet, vae = UNet2DConditionModel(**t["unet"]), t["vae"]["tiny"]()
            text = CLIPTextModel(CLIPTextConfig(**t["text"], **_text_ids(tok)))
        else:
            unet = UNet2DConditionModel(**SD15_UNET)
            vae = AutoencoderKL(**{**SD_VAE, "sample_size": 512})
            ids = {k: v for k,
                   v in _text_ids(tok).items() if k != "vocab_size" and k != "max_position_embeddings"}
            text = CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT, **ids))
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return prepare_sd(pipe, device, channels_last, compile)  # as the SD actors' loader does


def sweep(meter: Meter, make_fn, batches: list[int], repeats_b1: int, log) -> list[dict]:
    """Time ``make_fn(b)()`` for each batch size; stop at the first out-of-memory."""
    rows = []
    for b in batches:
        fn = make_fn(b)
        try:
            fn()  # warm-up at this batch size (kernels, allocator)
            sec, peak = meter.run(fn, repeats=repeats_b1 if b == 1 else 1)
        except RuntimeError as err:
            if not is_oom(err):
                raise
            log(f"  batch {b:>3}: out of memory, stopping the sweep")
            if meter.device.type == "cuda":
                torch.cuda.empty_cache()
            break
        row = {"batch": b, "seconds": sec, "s_per_image": sec / b, "peak_gb": peak}
        rows.append(row)
        mem = f"{peak:6.2f} GB" if peak is not None else "   n/a"
        log(f"  batch {b:>3}: {sec:8.3f} s  {sec / b:7.4f} s/image  peak {mem}")
    return rows


def per_image_memory(results: dict) -> dict[str, dict]:
    """Measured GB each extra image adds (peak at the largest batch run less batch 1's, per image) next to the
    estimate the pipeline sizes its Ray batches with (at real sizes only: the smoke's tiny models are not
    it)."""
    out = {}
    for role, key in (("recover", "diver"), ("generate", "sd_img2img")):
        rows = [r for r in results.get(key, {}).get("rows", []) if r.get("peak_gb") is not None]
        measured = None
        if len(rows) >= 2 and rows[-1]["batch"] > rows[0]["batch"]:
            measured = (rows[-1]["peak_gb"] - rows[0]["peak_gb"]) / (rows[-1]["batch"] - rows[0]["batch"])
        out[role] = {"measured": measured, "estimate": ROLE_MEMORY[role].per_image / 1e9}
    return out


def best(rows: list[dict]) -> dict:
    return min(rows, key=lambda r: r["s_per_image"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="DIVER / plain DiT / SD img2img at real sizes on one GPU")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny models on the CPU (a dry run of this script)")
    p.add_argument("--batches", default=None, help="batch sizes to try, e.g. 1,8,32 (default 1,4,16,32,64)")
    p.add_argument("--sd-batches", default=None, help="SD img2img batch sizes (default 1,4,8,16)")
    p.add_argument("--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto",
                   help="auto: the pipeline's models.dtype auto (bf16 on CUDA, fp16 without bf16; fp32 on "
                        "CPU)")
    p.add_argument("--channels-last", choices=["auto", "true", "false"], default="auto",
                   help="models.channels_last for the UNet and VAEs (auto: on CUDA)")
    p.add_argument("--compile", action="store_true",
                   help="models.compile: torch.compile UNet, DiT, VAE decoder")
    p.add_argument("--skip-sd", action="store_true", help="skip the EDITS SD img2img part")
    p.add_argument("--skip-fp32", action="store_true",
                   help="skip DIVER fp32 at batch 1 (the paper's setting)")
    p.add_argument("--out", default=None, help="JSON results (default bench/results/gpu_check.json on GPU)")
    args = p.parse_args(argv)

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False). Run it on a GPU node, "
              "or run `bench/gpu_check.sh --cpu-smoke` for the tiny CPU dry run.", file=sys.stderr)
        return 3
    device = torch.device("cpu" if smoke else "cuda")
    dtype = pick_dtype(args.dtype, device)
    layout = {"auto": "auto", "true": True, "false": False}[args.channels_last]
    fast = {"channels_last": layout, "compile": args.compile}
    parse = lambda s: [int(x) for x in s.split(",") if x.strip()]
    batches = parse(args.batches) if args.batches else ([1, 2] if smoke else [1, 4, 16, 32, 64])
    sd_batches = parse(args.sd_batches) if args.sd_batches else ([1, 2] if smoke else [1, 4, 8, 16])
    name = "CPU (smoke)" if smoke else torch.cuda.get_device_name(device)
    log = lambda s: print(s, flush=True)
    t_start = time.perf_counter()
    log(f"device: {name}; dtype {dtype}; channels_last {channels_last_on(layout, device)}; compile "
        f"{args.compile}; SDPA attention; torch {torch.__version__}")
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()  # "modules kept in float32" notes on every cast
    reps = 1 if smoke else 3

    steps = 6 if smoke else 50
    settings = RecoverSettings.of(num_inference_steps=steps, start_step=steps // 2,
                                  fusion_window=(int(steps * 0.8), steps // 2), gamma=0.1, cfg_scale=4.0)
    resolution, in_px = (16, 8) if smoke else (256, 128)
    results: dict = {"device": name, "dtype": str(dtype).replace("torch.", ""), "smoke": smoke,
                     "channels_last": channels_last_on(layout, device), "compile": args.compile}

    transformer, vae, scheduler = build_dit(device, dtype, smoke, **fast)
    n_params = sum(p.numel() for p in transformer.parameters()) / 1e6
    log(f"DiT: {n_params:.0f} M parameters ({'tiny' if smoke else 'DiT-XL/2 256 px'}), latent "
        f"{resolution // (2 if smoke else 8)} px; recovery runs steps "
        f"{settings.diver.start_step}..{steps - 1}")
    meter = Meter(device)
    gen = torch.Generator().manual_seed(0)
    pool = torch.rand(max(batches), 3, in_px, in_px, generator=gen)

    def diver_fn(b: int, tr=transformer, va=vae):
        imgs = pool[:b]
        return lambda: recover_images(tr, va, scheduler, imgs, list(range(b)), list(range(b)), settings,
                                      resolution)

    latent_px = resolution // (2 if smoke else 8)

    def plain_fn(b: int):
        noise = torch.randn(b, 4, latent_px, latent_px, generator=gen).to(device)
        labels = torch.arange(b, device=device)
        return lambda: decode_latents(vae, plain_dit_latents(transformer, scheduler, noise, labels, settings))

    log("DIVER recovery:")
    diver_rows = sweep(meter, diver_fn, batches, reps, log)
    log(f"plain DiT sampling ({steps} steps from noise):")
    plain_rows = sweep(meter, plain_fn, batches, reps, log)
    results["diver"] = {"rows": diver_rows, "best": best(diver_rows)}
    results["plain_dit"] = {"rows": plain_rows, "best": best(plain_rows)}
    if not args.skip_fp32 and dtype != torch.float32:
        del transformer, vae
        tr32, va32, _ = build_dit(device, torch.float32, smoke, **fast)
        log("DIVER recovery, float32 (the paper's setting):")
        results["diver_fp32"] = {"rows": sweep(meter, lambda b: diver_fn(b, tr32, va32), [1], reps, log)}
        del tr32, va32
    else:
        del transformer, vae
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if not args.skip_sd:
        pipe = build_sd(device, dtype, smoke, **fast)
        sd_px = 16 if smoke else 512
        lat = sd_px // (2 if smoke else 8)
        prompt = "a photo of a small white dog sitting on green grass"

        def sd_fn(b: int):
            protos = torch.randn(b, 4, lat, lat, generator=gen).to(device=device, dtype=dtype)
            g = [torch.Generator(device=device).manual_seed(i) for i in range(b)]
            return lambda: pipe(prompt=[prompt] * b, image=protos, strength=0.7, guidance_scale=10.0,
                                negative_prompt=["cartoon, anime, painting"] * b, num_inference_steps=steps,
                                generator=g, output_type="pt").images

        log(f"EDITS SD img2img ({sd_px} px, strength 0.7, CFG 10, {steps} steps):")
        sd_rows = sweep(meter, sd_fn, sd_batches, min(reps, 2), log)
        results["sd_img2img"] = {"rows": sd_rows, "best": best(sd_rows)}
        del pipe

    d1, p1 = diver_rows[0], plain_rows[0]
    ratio = d1["s_per_image"] / p1["s_per_image"]
    run_steps = steps - settings.diver.start_step
    costs = {"recover.step": results["diver"]["best"]["s_per_image"] / run_steps,
             "plain_dit.step": results["plain_dit"]["best"]["s_per_image"] / steps}
    if "sd_img2img" in results:
        costs["generate.step"] = results["sd_img2img"]["best"]["s_per_image"] / max(1, int(steps * 0.7))
    results.update({"costs": costs, "ratio": ratio, "total_seconds": time.perf_counter() - t_start,
                    "note": f"bench/gpu_check.py, {results['dtype']}, best batch; random weights"})

    def fmt(r: dict | None) -> str:
        if not r:
            return "-"
        mem = f"{r['peak_gb']:.2f} GB" if r.get("peak_gb") is not None else "n/a"
        return f"{r['s_per_image']:.4f} s/image, {mem} (batch {r['batch']})"

    log("")
    log(f"{'':<22} {'batch 1':<36} {'best batch':<36}")
    log(f"{'DIVER recovery':<22} {fmt(d1):<36} {fmt(results['diver']['best']):<36}")
    log(f"{'plain DiT sampling':<22} {fmt(p1):<36} {fmt(results['plain_dit']['best']):<36}")
    if "diver_fp32" in results:
        log(f"{'DIVER fp32':<22} {fmt(results['diver_fp32']['rows'][0]):<36}")
    if "sd_img2img" in results:
        log(f"{'EDITS SD img2img':<22} {fmt(results['sd_img2img']['rows'][0]):<36} "
            f"{fmt(results['sd_img2img']['best']):<36}")
    log("paper (RTX 4090, batch 1): DIVER 2.48 s/image, 4.02 GB; plain DiT 2.41 s/image")
    results["per_image_gb"] = per_image_memory(results)
    for role, m in results["per_image_gb"].items():
        got = f"{m['measured']:.3f} GB" if m["measured"] is not None else "n/a"
        log(f"per-image GPU memory, {role}: measured {got}, estimate {m['estimate']:.3f} GB "
            "(pipeline/core/gpu_batch.py ROLE_MEMORY, which sizes ray.batch_sizes from free memory)")
    log(f"total {results['total_seconds']:.0f} s")
    out = args.out or (None if smoke else str(REPO / "bench" / "results" / "gpu_check.json"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
        log(f"wrote {out}")
    log(f"ratio: {ratio:.3f}")
    return 0 if all(math.isfinite(v) for v in costs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
