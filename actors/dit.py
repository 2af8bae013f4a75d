"""The DiT actor for DIVER: loads a diffusers DiT pipeline once, recovers batches of distilled images.

The maths (inheritance, guidance, fusion window) is ``pipeline/diver/guidance.py``; this
module only loads the model, moves images through the VAE and runs the loop per batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actors.gpu_defaults import prepare_dit
from actors.latents import decode_latents, encode_images
from actors.loading import load_pretrained, offline, pick_device, pick_dtype, set_torch_threads
from pipeline.core.batching import run_fixed
from pipeline.core.faults import FaultInjector
from pipeline.core.seeds import image_seed
from pipeline.diver.guidance import RecoverSettings, image_noise, recover_latents

DEMO_REPORT = "demo_dit.json"  # written by pipeline/demo/zoo/dit.py next to the pipeline it trained
# diffusers' DiT port embeds timesteps with Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1):
# frequencies 10000^(-k/127). facebookresearch/DiT (models.py, TimestepEmbedder.timestep_embedding, commit
# 4961bcb) uses 10000^(-k/128), [cos, sin]; that is the same module with downscale_freq_shift=0.
FREQ_SHIFT = {"diffusers": 1, "dit": 0}


def latent_seeds(seeds: list[int]) -> list[int]:
    """Per-image seeds of the VAE posterior sample (``latent_mode = sample``), apart from the noise seeds."""
    return [image_seed(int(s), "vae_sample", 0) for s in seeds]


def latent_shape(vae, resolution: int) -> tuple[int, int, int]:
    c = vae.config
    side = resolution // 2 ** (len(c.block_out_channels) - 1)
    return int(c.latent_channels), side, side


def recover_images(transformer, vae, scheduler, images: torch.Tensor, dit_classes: list[int] | torch.Tensor,
                   seeds: list[int], settings: RecoverSettings, resolution: int,
                   output_size: int | None = None) -> torch.Tensor:
    """End to end on one batch: images ``[B, 3, H, W]`` in [0, 1] -> recovered images, same size
    (or ``output_size`` square: tiles come back at the DiT resolution, see ``pipeline/diver/tiles.py``)."""
    device = next(transformer.parameters()).device
    sample_noise = (image_noise(latent_seeds(seeds), latent_shape(vae, resolution))
                    if settings.diver.latent_mode == "sample" else None)
    z_d = encode_images(vae, images, resolution, settings.diver.latent_mode, noise=sample_noise).to(device)
    noise = image_noise(seeds, tuple(z_d.shape[1:])).to(device)
    labels = torch.as_tensor(np.asarray(dit_classes), dtype=torch.long, device=device)
    z0 = recover_latents(transformer, scheduler, z_d, labels, settings, noise=noise)
    return decode_latents(vae, z0, size=(output_size,
                                         output_size) if output_size else tuple(images.shape[-2:]))


def variance_usable(model_dir: str | Path) -> tuple[bool | None, str]:
    """Whether a local DiT folder predicts a trained variance (None: unknown, e.g. a hub id) and why not.

    Reads only config files: ``transformer/config.json`` (``out_channels = 2 x in_channels``)
    and, for the demo DiT, ``demo_dit.json`` (its recipe says whether the variance was trained).
    """
    folder = Path(model_dir)
    cfg_file = folder / "transformer" / "config.json"
    if not cfg_file.is_file():
        return None, ""
    cfg = json.loads(cfg_file.read_text())
    c_in = int(cfg.get("in_channels", 4))
    if int(cfg.get("out_channels") or c_in) != 2 * c_in:
        return False, f"{model_dir} predicts no variance (out_channels {cfg.get('out_channels')})"
    report = folder / DEMO_REPORT
    if report.is_file() and not json.loads(report.read_text()).get("recipe", {}).get("train_variance", False):
        return False, f"{model_dir} was trained without its variance channels (demo DiT, epsilon loss only)"
    return True, ""


def set_timestep_embedding(transformer, kind: str) -> int:
    """Make the DiT embed timesteps as ``kind`` says: ``dit`` = facebookresearch/DiT's own formula (what
    DiT-XL/2's converted weights were trained with), ``diffusers`` = diffusers' port (what a DiT trained in
    diffusers, e.g. the demo DiT, saw). Sets ``downscale_freq_shift`` of every ``Timesteps`` module (one per
    block; the final layer reuses block 0's); returns how many were set."""
    # heavy: diffusers (not loaded when this module is imported)
    from diffusers.models.embeddings import Timesteps

    if kind not in FREQ_SHIFT:
        raise ValueError(f"unknown timestep_embedding {kind!r} ({' | '.join(FREQ_SHIFT)})")
    found = [m for m in transformer.modules() if isinstance(m, Timesteps)]
    if not found:
        raise ValueError(f"{type(transformer).__name__} has no Timesteps module: diver.timestep_embedding "
                         "applies to diffusers DiT transformers only")
    for m in found:
        if not m.flip_sin_to_cos:
            raise ValueError("the DiT's timestep embedding is [sin, cos], not DiT's [cos, sin]: "
                             "set diver.timestep_embedding=diffusers")
        m.downscale_freq_shift = FREQ_SHIFT[kind]
    return len(found)


def transformer_config(model_dir: str) -> tuple[dict[str, Any] | None, str]:
    """(the DiT transformer's config, why it is None): a local folder's ``transformer/config.json``, else the
    hub's through diffusers' own config loading (the local cache only when HF_HUB_OFFLINE is set)."""
    folder = Path(model_dir)
    if folder.is_dir():
        cfg_file = folder / "transformer" / "config.json"
        if not cfg_file.is_file():
            return None, f"{folder} has no transformer/config.json"
        return json.loads(cfg_file.read_text()), ""
    # heavy: diffusers (not loaded when this module is imported)
    from diffusers import DiTTransformer2DModel

    try:
        return dict(DiTTransformer2DModel.load_config(model_dir, subfolder="transformer",
                                                      local_files_only=offline())), ""
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:300]
        where = ("HF_HUB_OFFLINE is set and the local cache has no copy" if offline()
                 else "it could not be read")
        return None, f"the config of {model_dir} is unknown here ({where}: {reason})"


def dit_num_classes(model_dir: str) -> tuple[int | None, str]:
    """(the DiT's class count ``num_embeds_ada_norm``, why it is None) from its config
    (``transformer_config``)."""
    cfg, why = transformer_config(model_dir)
    if cfg is None:
        return None, why
    n = cfg.get("num_embeds_ada_norm")
    return (int(n), "") if n is not None else (None, f"{model_dir} has no num_embeds_ada_norm in its config")


def load_dit(model_ref: str, zoo_dir: str | None = None, dtype: str = "auto", device: str | None = None,
             vae_ref: str | None = None, channels_last: bool | str = "auto", compile: bool = False,
             timestep_embedding: str = "diffusers"):
    """(transformer, vae, DDIM scheduler) of a diffusers DiT pipeline; bf16 (or fp16) on GPU under ``auto``.

    ``vae_ref`` (a folder or hub id, ``models.vae``) replaces the pipeline's own VAE. The
    scheduler only supplies ``alphas_cumprod``; ``clip_sample`` is pinned off (DiT does not clip).
    SDPA attention in both; ``channels_last`` on the VAE (the transformer's one convolution is its patch
    embedding); ``compile`` on the transformer and the VAE decoder (actors/gpu_defaults.py).
    ``timestep_embedding``: ``diffusers`` (as loaded) or ``dit`` (``set_timestep_embedding``).
    """
    # heavy: diffusers (not loaded when this module is imported)
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline

    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    pipe = load_pretrained("dit", model_ref, DiTPipeline.from_pretrained, zoo_dir=zoo_dir, dtype=torch_dtype)
    transformer = pipe.transformer.to(dev).eval()
    set_timestep_embedding(transformer, timestep_embedding)
    vae = pipe.vae if vae_ref is None else load_pretrained("vae", vae_ref, AutoencoderKL.from_pretrained,
                                                           zoo_dir=zoo_dir, dtype=torch_dtype)
    vae = vae.to(dev).eval()
    prepare_dit(transformer, vae, dev, channels_last, compile)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    return transformer, vae, scheduler


class DiTRecoverActor:
    """Ray Data actor: loads the DiT once, recovers one batch of distilled images per call.

    Input columns: ``image`` (``[B, H, W, 3]`` float in [0, 1] or uint8), ``dit_class``,
    ``seed``; everything else passes through. ``expected_classes``: the class count the driver's class map
    assumed where it could not read the DiT's config (a hub id not cached there), checked on load. Adds
    ``recovered`` (uint8 ``[B, H, W, 3]``) and drops ``image``. The model sees micro-batches of exactly
    ``micro_batch`` rows (``ray.micro_batch_sizes.recover``), so results are byte-identical whatever the Ray
    batch.
    """

    def __init__(self, model_ref: str, settings: dict[str, Any], resolution: int, zoo_dir: str | None = None,
                 dtype: str = "auto", device: str | None = None, micro_batch: int | None = None,
                 torch_threads: int | None = None, faults: dict | None = None, vae_ref: str | None = None,
                 output_size: int | None = None, channels_last: bool | str = "auto", compile: bool = False,
                 expected_classes: int | None = None) -> None:
        self.faults = FaultInjector.from_kwargs(faults)  # debug.fail_every_n_batches (tests)

        set_torch_threads(torch_threads)
        self.micro_batch = micro_batch
        self.settings = RecoverSettings.from_mapping(settings)
        self.transformer, self.vae, self.scheduler = load_dit(
            model_ref, zoo_dir, dtype, device, vae_ref=vae_ref, channels_last=channels_last, compile=compile,
            timestep_embedding=self.settings.timestep_embedding)
        self.resolution = int(resolution)
        self.output_size = output_size  # None: the input's size
        n = getattr(self.transformer.config, "num_embeds_ada_norm", None)
        self.num_classes = int(n) if n is not None else None
        if expected_classes is not None and self.num_classes != expected_classes:
            raise ValueError(f"the class map assumed a DiT with {expected_classes} classes but {model_ref} "
                             f"has {self.num_classes}: set diver.class_map (input class id -> DiT class "
                             f"index)")

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        img = np.asarray(batch["image"])
        scale = 255.0 if img.dtype == np.uint8 else 1.0
        x = torch.from_numpy(img.astype(np.float32) / scale).permute(0, 3, 1, 2)
        classes = np.asarray(batch["dit_class"]).astype(np.int64)
        if self.num_classes is not None and ((classes < 0) | (classes >= self.num_classes)).any():
            bad = sorted(set(classes[(classes < 0) | (classes >= self.num_classes)].tolist()))
            raise ValueError(f"DiT class ids {bad} outside [0, {self.num_classes}); set diver.class_map")

        def run(xs, cs, ss):
            return recover_images(self.transformer, self.vae, self.scheduler, xs, list(cs),
                                  [int(v) for v in ss], self.settings, self.resolution, self.output_size)

        # fixed-size micro-batches: the output does not depend on how Ray batched the rows
        out = run_fixed(run, [x, classes, np.asarray(batch["seed"]).astype(np.int64)], self.micro_batch)
        result = {k: v for k, v in batch.items() if k != "image"}
        result["recovered"] = (out.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        self.faults.maybe_fail(batch["key"] if "key" in batch else batch["seed"])  # after the work: mid-batch
        return result
