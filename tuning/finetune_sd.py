"""The SD text-to-image trainer behind EDITS step 9 (the stage itself is ``pipeline/edits/finetune.py``).

A Ray Train ``TorchTrainer`` runs the diffusers text-to-image objective: VAE-encode the
image (frozen), add DDPM noise at a random timestep, and regress the UNet's prediction on
the noise (or the velocity, per the scheduler's ``prediction_type``) with MSE, conditioned
on the frozen CLIP text encoder's embedding of the image's VLM caption. AdamW at
``learning_rate``, gradient accumulation, EMA of the UNet weights, autocast (fp16 / bf16)
and a gradient scaler on GPU, DDP across workers (``ray.train.torch.prepare_model``).

As the authors' training script (read: diffusers' ``train_text_to_image.py``): every epoch
sees the images in a new seeded order (the driver shuffles the rows once with
``edits.finetune.seed``; each epoch reshuffles them in a local buffer seeded ``seed + epoch``,
the latent cache draws a fresh permutation), each image is mirrored with probability 1/2
(``random_flip``), and the gradient norm is clipped to ``max_grad_norm`` before each step.

Checkpoints go through Ray Train every ``checkpoint_every_steps`` steps (UNet, EMA,
optimizer, step, and the place in the epoch), written whole or not at all (``tuning.checkpoints``);
a re-run of the same output resumes from the latest one and, as each step's random draws are
seeded by (seed, rank, step), ends with the weights an uninterrupted run gets. The driver
turns the final checkpoint's EMA UNet plus the base pipeline's other parts into a
diffusers folder (``edits.finetune.output``, default ``<output.dir>/finetuned_sd``) that the
generate stage loads.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.pixels import u8_hwc_to_signed_chw
from pipeline.core.seeds import stage_seed
from pipeline.core.write import atomic_torch_save
from tuning.checkpoints import report_checkpoint
from tuning.vae_loss import AutoencodeLoss, latent_noise, vae_step

COMPLETE = ".complete"
DATA_CPUS = 0.5  # Ray CPUs of each data task (decode, filter) feeding the fine-tune beside its Train workers


def train_vae_phase(vae: Any, shard: Any, config: dict[str, Any], device: Any, world: int) -> float:
    """Reconstruction (+ small KL) training of a random-init VAE; returns the new scaling factor.

    Only for tiny demo models: SD's VAE is already trained and ``vae_steps`` is 0 there.
    The scaling factor is 1 / std of the training latents (averaged over workers).
    """
    # heavy: ray (not loaded when this module is imported)
    import ray.train.torch
    import torch

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
    """Per-sample loss weights ``min(SNR(t), gamma) / SNR(t)`` (epsilon) or ``/ (SNR(t) + 1)``
    (v-prediction)."""
    import torch

    ab = noise_sched.alphas_cumprod.to(t.device)[t].double()  # 1 - ab near t=0 needs float64
    snr = ab / (1 - ab)
    clipped = torch.clamp(snr, max=float(gamma))
    w = clipped / (snr + 1) if noise_sched.config.prediction_type == "v_prediction" else clipped / snr
    return w.float()


# ----------------------------------------------------------------------------- data order and augmentation
def shuffled_rows(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """``rows`` in a seeded random order, so the stream the workers read is not class by class."""
    order = np.random.default_rng(int(seed)).permutation(len(rows))
    return [rows[i] for i in order]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order and flips (``edits.finetune.seed`` + epoch)."""
    return int(seed) + int(epoch)


def data_generator(seed: int, epoch: int, rank: int = 0) -> Any:
    """The CPU generator of one epoch's permutation (latent cache) and flips on one worker."""
    import torch

    return torch.Generator().manual_seed(epoch_seed(seed, epoch) + 100_003 * int(rank))


def epoch_batches(shard: Any, batch_size: int, seed: int, epoch: int, buffer_rows: int) -> Any:
    """One epoch of numpy batches from a Ray Data shard, reshuffled in a local buffer seeded by the epoch."""
    kw = ({"local_shuffle_buffer_size": int(buffer_rows), "local_shuffle_seed": epoch_seed(seed, epoch)}
          if buffer_rows > 0 else {})
    return shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=False, **kw)


def flip_mask(n: int, gen: Any, enabled: bool) -> Any:
    """Which of ``n`` images to mirror: each with probability 1/2 (diffusers' ``--random_flip``)."""
    import torch

    if not enabled:
        return torch.zeros(n, dtype=torch.bool)
    return torch.rand(n, generator=gen) < 0.5


def apply_flip(x: Any, mask: Any) -> Any:
    """``x`` ``[N, C, H, W]`` with the rows in ``mask`` mirrored left-right."""
    import torch

    return torch.where(mask.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)


def clip_gradients(params: Any, opt: Any, scaler: Any, max_norm: float | None) -> float | None:
    """Clip the gradients' global norm to ``max_norm`` (unscaled first under fp16); returns the norm
    before."""
    import torch

    if not max_norm:
        return None
    if scaler is not None:
        scaler.unscale_(opt)
    return float(torch.nn.utils.clip_grad_norm_(list(params), float(max_norm)))


# ----------------------------------------------------------------------------- the UNet phase
@dataclass
class Worker:
    """One Ray Train worker's models, optimizer and progress."""

    config: dict[str, Any]
    rank: int
    world: int
    device: Any
    amp_dtype: Any
    frozen_dtype: Any
    tokenizer: Any
    text_encoder: Any
    vae: Any
    noise_sched: Any
    unet: Any
    ema: Any
    opt: Any
    step: int = 0
    vae_done: bool = False
    losses: list[float] = field(default_factory=list)
    # where the UNet phase stands, saved in every checkpoint so a resume continues the same stream:
    epoch: int | None = None  # the epoch in progress (None: not started, or an older checkpoint)
    epoch_pos: int = 0  # micro-batches of that epoch already consumed
    gen: Any = None  # the loss's generator (noise, timesteps, caption dropout), seeded per optimizer step
    scaler: Any = None  # the fp16 gradient scaler (GPU)
    scaler_state: dict[str, Any] | None = None  # the restored scaler's state, loaded when the phase starts

    @property
    def vae_trained(self) -> bool:
        return int(self.config.get("vae_steps", 0)) > 0


def setup_worker(config: dict[str, Any]) -> Worker:
    """Seeds, threads, precision, and the frozen text encoder / VAE plus the trainable UNet, EMA and AdamW."""
    # heavy: diffusers, ray, transformers (not loaded when this module is imported)
    import ray.train
    import ray.train.torch
    import torch
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
    text_encoder = CLIPTextModel.from_pretrained(ref, subfolder="text_encoder",
                                                 **kw).to(device, frozen_dtype).eval()
    vae = AutoencoderKL.from_pretrained(ref, subfolder="vae", **kw).to(device).eval()
    noise_sched = DDPMScheduler.from_pretrained(ref, subfolder="scheduler", **kw)
    unet = UNet2DConditionModel.from_pretrained(ref, subfolder="unet", **kw).to(device)
    text_encoder.requires_grad_(False)
    vae.requires_grad_(False)
    unet.train()
    ema = EMAModel(unet.parameters(), decay=float(config["ema_decay"]))
    opt = torch.optim.AdamW(unet.parameters(), lr=float(config["learning_rate"]))
    return Worker(config, rank, world, device, amp_dtype, frozen_dtype, tokenizer, text_encoder, vae,
                  noise_sched, unet, ema, opt, vae_done=int(config.get("vae_steps", 0)) == 0)


def restore_checkpoint(w: Worker) -> None:
    """Resume from Ray Train's latest checkpoint, if any: UNet, optimizer, EMA, step (and a trained VAE)."""
    # heavy: ray (not loaded when this module is imported)
    import ray.train
    import torch

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
        w.unet.load_state_dict(state["unet"])
        w.opt.load_state_dict(state["opt"])
        w.ema.load_state_dict(state["ema"])
        w.step = int(state["step"])
        w.epoch, w.epoch_pos = state.get("epoch"), int(state.get("epoch_pos", 0))
        w.scaler_state = state.get("scaler")
        if state.get("vae") is not None:
            w.vae.load_state_dict(state["vae"])
            w.vae.register_to_config(scaling_factor=float(state["vae_scaling"]))
            w.vae_done = True


def save_checkpoint(w: Worker, final: bool) -> None:
    """Report the step and mean loss; rank 0 attaches the checkpoint (and, when final, the EMA UNet
    folder)."""
    # heavy: diffusers, ray (not loaded when this module is imported)
    import ray.train
    import torch
    from diffusers import UNet2DConditionModel

    metrics = {"step": w.step, "loss": float(np.mean(w.losses)) if w.losses else float("nan"), "final": final}
    if w.rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        atomic_torch_save(Path(d) / "state.pt", {
            "unet": w.unet.state_dict(), "opt": w.opt.state_dict(), "ema": w.ema.state_dict(), "step": w.step,
            "vae": w.vae.state_dict() if w.vae_trained else None,
            "vae_scaling": float(w.vae.config.scaling_factor), **progress_state(w)})
        if final:  # the EMA weights as a diffusers UNet folder, for the driver to assemble the pipeline
            ema_unet = UNet2DConditionModel.from_config(w.unet.config)
            w.ema.copy_to(ema_unet.parameters())
            ema_unet.save_pretrained(Path(d) / "unet")
            if w.vae_trained:
                w.vae.to(torch.float32).save_pretrained(Path(d) / "vae")
        report_checkpoint(metrics, d)


def progress_state(w: Worker) -> dict[str, Any]:
    """Where the UNet phase stands (epoch, micro-batches of it consumed, the fp16 scaler): a resume from this
    checkpoint reads the very batches an uninterrupted run would next, and the per-step generator
    (``step_generator``) gives them the same noise, so the weights come out bit-identical."""
    if w.epoch is None:  # before the UNet phase (the VAE checkpoint): it starts afresh on resume
        return {}
    return {"epoch": w.epoch, "epoch_pos": w.epoch_pos,
            "scaler": w.scaler.state_dict() if w.scaler is not None else None}


def step_generator(seed: int, rank: int, step: int) -> Any:
    """The CPU generator of one optimizer step's draws on one worker (noise, timesteps, caption dropout):
    seeded by (seed, rank, step), so a resumed run draws what an uninterrupted one would."""
    import torch

    return torch.Generator(device="cpu").manual_seed(stage_seed(seed,
                                                                f"finetune-step:{int(rank)}:{int(step)}"))


def vae_phase(w: Worker, shard: Any) -> None:
    """Demo only (the zoo's VAE is random-init): train the VAE first and checkpoint it before the UNet
    phase."""
    if w.vae_done:
        return
    t_vae = time.perf_counter()
    scale = train_vae_phase(w.vae, shard, w.config, w.device, w.world)
    if w.rank == 0:
        print(f"[edits] finetune: VAE {w.config['vae_steps']} steps in {time.perf_counter() - t_vae:.0f} s, "
              f"scaling_factor {scale:.4f}", flush=True)
    w.vae.to(w.device, w.frozen_dtype)
    save_checkpoint(w, final=False)  # the trained VAE survives a crash of the UNet phase


def _encode(w: Worker, images: np.ndarray, flip: Any = None) -> tuple[Any, Any]:
    """The VAE posterior (mean, std) of uint8 HWC images, mirrored where ``flip`` says."""
    import torch

    x = u8_hwc_to_signed_chw(images)
    if flip is not None:
        x = apply_flip(x, flip)
    with torch.no_grad():
        post = w.vae.encode(x.to(w.device, w.frozen_dtype)).latent_dist
    return post.mean.float(), post.std.float()


def cache_latents(w: Worker, shard: Any) -> tuple[Any, Any, list[str]] | None:
    """Small sets: the posteriors of every image once, ``[2, N, ...]`` (as is, mirrored when
    ``random_flip``)."""
    import torch

    if not w.config.get("cache_latents"):
        return None
    flips = [False, True] if w.config.get("random_flip") else [False]
    means: list[list[Any]] = [[] for _ in flips]
    stds: list[list[Any]] = [[] for _ in flips]
    caps: list[str] = []
    for batch in shard.iter_batches(batch_size=256, batch_format="numpy"):
        n = len(batch["caption"])
        for j, f in enumerate(flips):
            m, sd = _encode(w, batch["image"], torch.full((n,), f))
            means[j].append(m.cpu())
            stds[j].append(sd.cpu())
        caps += [str(c) for c in batch["caption"]]
    return torch.stack([torch.cat(m) for m in means]), torch.stack([torch.cat(s) for s in stds]), caps


def epoch_posteriors(w: Worker, shard: Any, cache: Any, epoch: int, skip: int = 0) -> Any:
    """One epoch of (posterior mean, std, captions) batches in this epoch's order and flips.

    ``skip``: micro-batches a resumed run already trained on; their flips are still drawn (not their
    encodings), so the batches after them are the ones an uninterrupted run sees.
    """
    import torch

    bs, seed = int(w.config["batch_size"]), int(w.config["seed"])
    dgen = data_generator(seed, epoch, w.rank)
    flip_on = bool(w.config.get("random_flip"))
    if cache is not None:
        means, stds, caps = cache
        order = torch.randperm(len(caps), generator=dgen)
        for k, i in enumerate(range(0, len(order), bs)):
            idx = order[i:i + bs]
            side = flip_mask(len(idx), dgen, flip_on).long()  # row 1 of the cache holds the mirrored images
            if k >= skip:
                yield (means[side, idx].to(w.device), stds[side, idx].to(w.device),
                       [caps[j] for j in idx.tolist()])
        return
    for k, batch in enumerate(epoch_batches(shard, bs, seed, epoch,
                                            int(w.config.get("shuffle_buffer_size", 0)))):
        flip = flip_mask(len(batch["caption"]), dgen, flip_on)
        if k < skip:
            continue
        m, sd = _encode(w, batch["image"], flip)
        yield m, sd, [str(c) for c in batch["caption"]]


def unet_loss(w: Worker, model: Any, mean: Any, std: Any, caps: list[str], gen: Any) -> Any:
    """The diffusers text-to-image loss of one micro-batch: caption dropout, posterior sample, noise, MSE."""
    import torch
    import torch.nn.functional as F

    cfg, dev, sched = w.config, w.device, w.noise_sched
    if cfg["caption_dropout"] > 0:
        drop = torch.rand(len(caps), generator=gen) < float(cfg["caption_dropout"])
        caps = ["" if d else c for c, d in zip(caps, drop.tolist())]
    ids = w.tokenizer(caps, padding="max_length", truncation=True, max_length=w.tokenizer.model_max_length,
                      return_tensors="pt").input_ids.to(dev)
    with torch.no_grad():
        cond = w.text_encoder(ids)[0]
    latents = (mean + std * torch.randn(mean.shape,
                                        generator=gen).to(dev)) * float(w.vae.config.scaling_factor)
    noise = torch.randn(latents.shape, generator=gen).to(dev)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(latents),), generator=gen).to(dev)
    noisy = sched.add_noise(latents, noise, t)
    target = sched.get_velocity(latents, noise,
                                t) if sched.config.prediction_type == "v_prediction" else noise
    with torch.autocast(dev.type, dtype=w.amp_dtype, enabled=w.amp_dtype is not None):
        pred = model(noisy, t, cond.to(noisy.dtype) if w.amp_dtype is None else cond).sample
    snr_gamma = cfg.get("snr_gamma")
    if snr_gamma:  # diffusers' --snr_gamma (Min-SNR weighting, Hang et al. 2023)
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (min_snr_weights(sched, t, snr_gamma) * per_sample).mean()
    return F.mse_loss(pred.float(), target.float())


def optimizer_step(w: Worker, scaler: Any) -> None:
    """Clip the gradient norm, step AdamW (through the fp16 scaler), zero the gradients, update the EMA."""
    clip_gradients(w.unet.parameters(), w.opt, scaler, w.config.get("max_grad_norm"))
    if scaler:
        scaler.step(w.opt)
        scaler.update()
    else:
        w.opt.step()
    w.opt.zero_grad(set_to_none=True)
    w.ema.step(w.unet.parameters())
    w.step += 1


def unet_phase(w: Worker, shard: Any) -> None:
    """Epochs of micro-batches until ``total_steps`` optimizer steps; logs and checkpoints on the way."""
    # heavy: ray (not loaded when this module is imported)
    import ray.train.torch

    w.ema.to(w.device)
    model = ray.train.torch.prepare_model(w.unet, move_to_device=False) if w.world > 1 else w.unet
    accum, total = int(w.config["gradient_accumulation_steps"]), int(w.config["total_steps"])
    log_every, every = int(w.config.get("log_every_steps", 50)), int(w.config["checkpoint_every_steps"])
    start_stream(w)
    scaler = w.scaler
    cache = cache_latents(w, shard)
    micro, t_start, step0 = 0, time.perf_counter(), w.step  # step0 > 0 after a resume
    while w.step < total:
        for mean, std, caps in epoch_posteriors(w, shard, cache, w.epoch, skip=w.epoch_pos):
            if micro % accum == 0:  # the first micro-batch of an optimizer step
                w.gen = step_generator(int(w.config["seed"]), w.rank, w.step)
            loss = unet_loss(w, model, mean, std, caps, w.gen) / accum
            (scaler.scale(loss) if scaler else loss).backward()
            w.losses.append(float(loss.detach()) * accum)
            micro += 1
            w.epoch_pos += 1
            if micro % accum:
                continue
            optimizer_step(w, scaler)
            if w.rank == 0 and (w.step % log_every == 0 or w.step == total):
                dt = time.perf_counter() - t_start
                print(f"[edits] finetune: step {w.step}/{total}  loss {np.mean(w.losses[-log_every:]):.4f}  "
                      f"({dt:.0f} s, {dt / max(1, w.step - step0):.2f} s/step)", flush=True)
            if w.step >= total:
                break
            if w.step % every == 0:
                save_checkpoint(w, final=False)
                w.losses = []
        else:  # the epoch ran out (not a break at the last step): the next one starts from its first batch
            w.epoch, w.epoch_pos = w.epoch + 1, 0


def start_stream(w: Worker) -> None:
    """The UNet phase's scaler and epoch: fresh, or as the restored checkpoint left them."""
    import torch

    w.scaler = torch.amp.GradScaler("cuda") if w.amp_dtype == torch.float16 else None
    if w.scaler is not None and w.scaler_state is not None:
        w.scaler.load_state_dict(w.scaler_state)
    if w.epoch is None:  # fresh, or a checkpoint that did not record its place: a new epoch starts
        w.epoch, w.epoch_pos = w.step // max(1, int(w.config.get("steps_per_epoch", 1))), 0


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the text-to-image loop (see the module docstring)."""
    # heavy: ray (not loaded when this module is imported)
    import ray.train

    w = setup_worker(config)
    restore_checkpoint(w)
    shard = ray.train.get_dataset_shard("train")
    vae_phase(w, shard)
    w.vae.to(w.device, w.frozen_dtype)
    unet_phase(w, shard)
    save_checkpoint(w, final=True)


def steps_per_epoch(n_images: int, ft: Any) -> int:
    """Optimizer steps in one pass over ``n_images`` (at least 1)."""
    per_step = ft.batch_size * max(1, ft.num_workers)
    return max(1, math.ceil(n_images / per_step) // ft.gradient_accumulation_steps)


def total_steps(n_images: int, ft: Any) -> int:
    """Optimizer steps: ``epochs`` passes over the captioned set, capped by ``max_steps``."""
    steps = steps_per_epoch(n_images, ft) * ft.epochs
    return min(steps, ft.max_steps) if ft.max_steps else steps
