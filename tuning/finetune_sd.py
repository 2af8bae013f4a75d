"""The SD text-to-image trainer behind EDITS step 9 (the stage itself is ``pipeline/edits/finetune.py``).

A Ray Train ``TorchTrainer`` runs the diffusers text-to-image objective: VAE-encode the
image (frozen), add DDPM noise at a random timestep, and regress the UNet's prediction on
the noise (or the velocity, per the scheduler's ``prediction_type``) with MSE, conditioned
on the frozen CLIP text encoder's embedding of the image's VLM caption. AdamW at
``learning_rate``, gradient accumulation, EMA of the UNet weights, autocast (fp16 / bf16)
and a gradient scaler on GPU, DDP across workers (``ray.train.torch.prepare_model``).

Checkpoints go through Ray Train every ``checkpoint_every_steps`` steps (UNet, EMA,
optimizer, step); a re-run of the same output resumes from the latest one. The driver
turns the final checkpoint's EMA UNet plus the base pipeline's other parts into a
diffusers folder (``edits.finetune.output``, default ``<output.dir>/finetuned_sd``) that the
generate stage loads.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.pixels import u8_hwc_to_signed_chw

COMPLETE = ".complete"


def train_vae_phase(vae: Any, shard: Any, config: dict[str, Any], device: Any, world: int) -> float:
    """Reconstruction (+ small KL) training of a random-init VAE; returns the new scaling factor.

    Only for tiny demo models: SD's VAE is already trained and ``vae_steps`` is 0 there.
    The scaling factor is 1 / std of the training latents (averaged over workers).
    """
    import ray.train.torch
    import torch

    from tuning.vae_loss import AutoencodeLoss, latent_noise, vae_step

    vae.requires_grad_(True)
    vae.train()
    module = AutoencodeLoss(vae, float(config["vae_kl_weight"]))
    model = ray.train.torch.prepare_model(module, move_to_device=False) if world > 1 else module
    opt = torch.optim.Adam(vae.parameters(), lr=float(config["vae_learning_rate"]))
    gen = torch.Generator().manual_seed(int(config["seed"]) + 17)
    steps, bs, step = int(config["vae_steps"]), int(config["batch_size"]), 0
    while step < steps:
        for batch in shard.iter_batches(batch_size=bs, batch_format="numpy"):
            x = u8_hwc_to_signed_chw(batch["image"]).to(device)
            vae_step(model, opt, x, latent_noise(vae, x, gen).to(device))
            step += 1
            if step >= steps:
                break
    vae.eval()
    vae.requires_grad_(False)
    stds = []
    with torch.no_grad():
        for i, batch in enumerate(shard.iter_batches(batch_size=256, batch_format="numpy")):
            stds.append(vae.encode(u8_hwc_to_signed_chw(batch["image"]).to(device)).latent_dist.mode().float().std())
            if i >= 3:
                break
    std = torch.stack(stds).mean().to(device)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(std)
        std = std / world
    scale = float(1.0 / std.clamp_min(1e-6))
    vae.register_to_config(scaling_factor=scale)
    return scale


def min_snr_weights(noise_sched: Any, t: Any, gamma: float) -> Any:
    """Per-sample loss weights ``min(SNR(t), gamma) / SNR(t)`` (epsilon) or ``/ (SNR(t) + 1)`` (v-prediction)."""
    import torch

    ab = noise_sched.alphas_cumprod.to(t.device)[t].double()  # 1 - ab near t=0 needs float64
    snr = ab / (1 - ab)
    clipped = torch.clamp(snr, max=float(gamma))
    w = clipped / (snr + 1) if noise_sched.config.prediction_type == "v_prediction" else clipped / snr
    return w.float()


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the text-to-image loop (see the module docstring)."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import EMAModel
    from transformers import AutoTokenizer, CLIPTextModel

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(int(config["seed"]) + rank)
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(config.get("threads", 1))))
    mp = config["mixed_precision"] if device.type == "cuda" else "no"
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp)
    frozen_dtype = amp_dtype or torch.float32
    ref = config["model"]
    kw = {"local_files_only": True} if config.get("offline") else {}
    tokenizer = AutoTokenizer.from_pretrained(ref, subfolder="tokenizer", **kw)
    text_encoder = CLIPTextModel.from_pretrained(ref, subfolder="text_encoder", **kw).to(device, frozen_dtype).eval()
    vae = AutoencoderKL.from_pretrained(ref, subfolder="vae", **kw).to(device).eval()
    noise_sched = DDPMScheduler.from_pretrained(ref, subfolder="scheduler", **kw)
    unet = UNet2DConditionModel.from_pretrained(ref, subfolder="unet", **kw).to(device)
    text_encoder.requires_grad_(False)
    vae.requires_grad_(False)
    unet.train()
    ema = EMAModel(unet.parameters(), decay=float(config["ema_decay"]))
    opt = torch.optim.AdamW(unet.parameters(), lr=float(config["learning_rate"]))
    step, vae_done = 0, int(config.get("vae_steps", 0)) == 0
    shard = ray.train.get_dataset_shard("train")
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
            unet.load_state_dict(state["unet"])
            opt.load_state_dict(state["opt"])
            ema.load_state_dict(state["ema"])
            step = int(state["step"])
            if state.get("vae") is not None:
                vae.load_state_dict(state["vae"])
                vae.register_to_config(scaling_factor=float(state["vae_scaling"]))
                vae_done = True
    if not vae_done:  # demo only: the zoo's VAE is random-init
        t_vae = time.perf_counter()
        scale = train_vae_phase(vae, shard, config, device, world)
        if rank == 0:
            print(f"[edits] finetune: VAE {config['vae_steps']} steps in {time.perf_counter() - t_vae:.0f} s, "
                  f"scaling_factor {scale:.4f}", flush=True)
    vae_trained = int(config.get("vae_steps", 0)) > 0
    vae_was_trained_now = not vae_done
    vae.to(device, frozen_dtype)
    ema.to(device)
    model = ray.train.torch.prepare_model(unet, move_to_device=False) if world > 1 else unet
    scaler = torch.amp.GradScaler("cuda") if mp == "fp16" else None
    accum = int(config["gradient_accumulation_steps"])
    total = int(config["total_steps"])
    bs = int(config["batch_size"])
    sf = float(vae.config.scaling_factor)
    gen = torch.Generator(device="cpu").manual_seed(int(config["seed"]) * 1000 + rank + step)
    micro, losses = 0, []
    t_start, log_every = time.perf_counter(), int(config.get("log_every_steps", 50))
    snr_gamma = config.get("snr_gamma")

    def save(final: bool) -> None:
        metrics = {"step": step, "loss": float(np.mean(losses)) if losses else float("nan"), "final": final}
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save({"unet": unet.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict(), "step": step,
                        "vae": vae.state_dict() if vae_trained else None,
                        "vae_scaling": float(vae.config.scaling_factor)}, Path(d) / "state.pt")
            if final:  # the EMA weights as a diffusers UNet folder, for the driver to assemble the pipeline
                ema_unet = UNet2DConditionModel.from_config(unet.config)
                ema.copy_to(ema_unet.parameters())
                ema_unet.save_pretrained(Path(d) / "unet")
                if vae_trained:
                    vae.to(torch.float32).save_pretrained(Path(d) / "vae")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    if vae_was_trained_now:
        save(final=False)  # the trained VAE survives a crash of the UNet phase

    def encode(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            post = vae.encode(u8_hwc_to_signed_chw(images).to(device, frozen_dtype)).latent_dist
        return post.mean.float(), post.std.float()

    cache = None
    if config.get("cache_latents"):  # small sets: encode once, sample the posterior per step
        means, stds, caps_all = [], [], []
        for batch in shard.iter_batches(batch_size=256, batch_format="numpy"):
            m, sd = encode(batch["image"])
            means.append(m.cpu())
            stds.append(sd.cpu())
            caps_all += [str(c) for c in batch["caption"]]
        cache = (torch.cat(means), torch.cat(stds), caps_all)

    def batches():
        """(posterior mean, std, captions) batches: from the latent cache, else streamed from the shard."""
        if cache is not None:
            order = torch.randperm(len(cache[2]), generator=gen)
            for i in range(0, len(order), bs):
                idx = order[i:i + bs]
                yield cache[0][idx].to(device), cache[1][idx].to(device), [cache[2][j] for j in idx.tolist()]
        else:
            for batch in shard.iter_batches(batch_size=bs, batch_format="numpy", drop_last=False):
                m, sd = encode(batch["image"])
                yield m, sd, [str(c) for c in batch["caption"]]

    while step < total:
        for mean, std, caps in batches():
            if config["caption_dropout"] > 0:
                drop = torch.rand(len(caps), generator=gen) < float(config["caption_dropout"])
                caps = ["" if d else c for c, d in zip(caps, drop.tolist())]
            ids = tokenizer(caps, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                            return_tensors="pt").input_ids.to(device)
            with torch.no_grad():
                cond = text_encoder(ids)[0]
            latents = (mean + std * torch.randn(mean.shape, generator=gen).to(device)) * sf
            noise = torch.randn(latents.shape, generator=gen).to(device)
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(latents),), generator=gen).to(device)
            noisy = noise_sched.add_noise(latents, noise, t)
            if noise_sched.config.prediction_type == "v_prediction":
                target = noise_sched.get_velocity(latents, noise, t)
            else:
                target = noise
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = model(noisy, t, cond.to(noisy.dtype) if amp_dtype is None else cond).sample
            if snr_gamma:  # diffusers' --snr_gamma (Min-SNR weighting, Hang et al. 2023)
                loss = (min_snr_weights(noise_sched, t, snr_gamma)
                        * F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))).mean()
            else:
                loss = F.mse_loss(pred.float(), target.float())
            loss = loss / accum
            (scaler.scale(loss) if scaler else loss).backward()
            losses.append(float(loss.detach()) * accum)
            micro += 1
            if micro % accum:
                continue
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            ema.step(unet.parameters())
            step += 1
            if rank == 0 and (step % log_every == 0 or step == total):
                dt = time.perf_counter() - t_start
                print(f"[edits] finetune: step {step}/{total}  loss {np.mean(losses[-log_every:]):.4f}  "
                      f"({dt:.0f} s, {dt / step:.2f} s/step)", flush=True)
            if step >= total:
                break
            if step % int(config["checkpoint_every_steps"]) == 0:
                save(final=False)
                losses = []
    save(final=True)


def total_steps(n_images: int, ft: Any) -> int:
    """Optimizer steps: ``epochs`` passes over the captioned set, capped by ``max_steps``."""
    per_epoch = max(1, math.ceil(n_images / (ft.batch_size * max(1, ft.num_workers))) // ft.gradient_accumulation_steps)
    steps = per_epoch * ft.epochs
    return min(steps, ft.max_steps) if ft.max_steps else steps
