"""Dual Prototype Guidance (EDITS step 8): Stable Diffusion img2img from the prototype latent.

The image prototype is the init latent (``StableDiffusionImg2ImgPipeline`` takes a
4-channel tensor as latents and noises it to ``strength``), the text prototype is the
prompt, with a negative prompt, classifier-free guidance and a DDIM scheduler. Each image
has its own CPU ``torch.Generator`` (``pipeline.core.seeds.image_seed``), so a batch of 4 gives
the same images as 4 batches of 1. Outputs are resized to the dataset's image size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from actors.gpu_defaults import ChannelsLast, prepare_sd
from actors.loading import load_pretrained, pick_device, pick_dtype, set_torch_threads
from pipeline.core.batching import run_fixed
from pipeline.core.faults import FaultInjector


@dataclass(frozen=True)
class GenerateSettings:
    strength: float = 0.7
    guidance_scale: float = 10.0
    negative_prompt: str = "cartoon, anime, painting"
    num_inference_steps: int = 50
    image_size: int = 32

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_latent(path: str) -> torch.Tensor:
    """A prototype latent ``[C, h, w]`` saved by the prototype stage."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    lat = obj["latent"] if isinstance(obj, dict) else obj
    return lat.float()


def resize_uint8(im: Image.Image, size: int) -> np.ndarray:
    if im.size != (size, size):
        im = im.convert("RGB").resize((size, size), Image.BICUBIC)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def img2img(pipe: Any, latents: torch.Tensor, prompts: list[str], seeds: list[int],
            settings: GenerateSettings) -> list[np.ndarray]:
    """One pipeline call for a batch: uint8 ``[size, size, 3]`` images, one per prompt."""
    device = getattr(pipe, "device", torch.device("cpu"))
    dtype = getattr(getattr(pipe, "unet", None), "dtype", torch.float32)
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    out = pipe(prompt=list(prompts), image=latents.to(device=device, dtype=dtype), strength=settings.strength,
               guidance_scale=settings.guidance_scale,
               negative_prompt=[settings.negative_prompt] * len(prompts),
               num_inference_steps=settings.num_inference_steps, generator=gens, output_type="pil")
    return [resize_uint8(im, settings.image_size) for im in out.images]


def load_img2img_pipeline(model_ref: str, zoo_dir: str | None = None, dtype: str = "auto",
                          device: str | None = None, channels_last: ChannelsLast = "auto",
                          compile: bool = False) -> Any:
    """``StableDiffusionImg2ImgPipeline`` with a DDIM scheduler, no safety checker, quiet progress.

    SDPA attention in the UNet, VAE and text encoder; ``channels_last`` (``models.channels_last``) on the
    UNet and VAE; ``compile`` (``models.compile``) on the UNet and the VAE decoder (actors/gpu_defaults.py).
    """
    # heavy: diffusers (not loaded when this module is imported)
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    dev = pick_device(device)
    pipe = load_pretrained("sd", model_ref, StableDiffusionImg2ImgPipeline.from_pretrained, zoo_dir,
                           dtype=pick_dtype(dtype, dev), safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return prepare_sd(pipe.to(dev), dev, channels_last, compile)


class SDGenerator:
    """Ray Data actor: ``key, latent, prompt, seed`` -> ``key, image`` (uint8)."""

    def __init__(self, model_ref: str, settings: dict[str, Any], zoo_dir: str | None = None,
                 dtype: str = "auto", faults: dict | None = None, pipe: Any | None = None,
                 device: str | None = None, micro_batch: int | None = None,
                 torch_threads: int | None = None, channels_last: ChannelsLast = "auto",
                 compile: bool = False) -> None:
        set_torch_threads(torch_threads)
        self.micro_batch = micro_batch  # fixed model batch: images do not depend on the Ray batch
        self.pipe = pipe if pipe is not None else load_img2img_pipeline(model_ref, zoo_dir, dtype, device,
                                                                        channels_last, compile)
        self.settings = GenerateSettings(**settings)
        self.faults = FaultInjector.from_kwargs(faults)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        latents = torch.stack([torch.as_tensor(np.asarray(x, dtype=np.float32)) for x in batch["latent"]])

        images = run_fixed(lambda lat, prompts, seeds: img2img(self.pipe, lat, list(prompts), list(seeds),
                                                               self.settings),
                           [latents, [str(p) for p in batch["prompt"]], [int(s) for s in batch["seed"]]],
                           self.micro_batch)
        self.faults.maybe_fail(batch["key"])
        return {"key": np.asarray(batch["key"], dtype=object), "image": np.stack(images)}
