"""GPU defaults applied where the models load: SDPA attention, ``channels_last``, ``torch.compile``.

- SDPA: transformers models are asked for ``attn_implementation="sdpa"`` (``with_sdpa``); a class
  without an SDPA path (BLIP) raises ``ValueError`` and is loaded with its own default instead.
  diffusers attention modules still on the eager ``AttnProcessor`` get ``AttnProcessor2_0``
  (``use_sdpa_processors``; diffusers already picks it when torch has SDPA, this makes it explicit).
- ``models.channels_last`` (``auto``: on CUDA only): UNet and VAE weights in NHWC, the layout
  cuDNN's fast convolution kernels use; on CPU the default stays NCHW (outputs byte-identical).
- ``models.compile`` (default off): ``nn.Module.compile`` in place on the UNet, the DiT transformer
  and the VAE decoder; the first call pays the compilation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

ChannelsLast = bool | str  # True | False | "auto"


def with_sdpa(loader: Callable[..., Any]) -> Callable[..., Any]:
    """``loader`` (a transformers ``from_pretrained``) asking for SDPA attention, or the class's default
    where the architecture has none (transformers raises ``ValueError`` naming
    scaled_dot_product_attention)."""

    def load(ref: str, **kwargs: Any) -> Any:
        try:
            return loader(ref, attn_implementation="sdpa", **kwargs)
        except ValueError as err:
            if "scaled_dot_product_attention" not in str(err) and "sdpa" not in str(err).lower():
                raise
            return loader(ref, **kwargs)

    return load


def use_sdpa_processors(model: torch.nn.Module) -> int:
    """diffusers ``Attention`` modules on the eager ``AttnProcessor`` -> ``AttnProcessor2_0`` (SDPA);
    other processors (added-KV, IP-adapter, ...) are left alone. Returns how many modules now run SDPA."""
    # heavy: diffusers (not loaded when this module is imported)
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    n = 0
    for mod in model.modules():
        if isinstance(mod, Attention):
            if type(mod.processor) is AttnProcessor:
                mod.set_processor(AttnProcessor2_0())
            n += isinstance(mod.processor, AttnProcessor2_0)
    return n


def channels_last_on(setting: ChannelsLast, device: torch.device) -> bool:
    """``models.channels_last``: ``auto`` means on CUDA only; ``true`` / ``false`` everywhere."""
    if setting == "auto":
        return device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"models.channels_last must be auto, true or false, got {setting!r}")


def apply_channels_last(module: torch.nn.Module, setting: ChannelsLast,
                        device: torch.device) -> torch.nn.Module:
    """``module`` with its 4-D weights in ``torch.channels_last`` when ``setting`` is on for ``device``."""
    if channels_last_on(setting, device):
        module.to(memory_format=torch.channels_last)
    return module


def maybe_compile(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``module.compile()`` in place when ``enabled`` (``models.compile``): the type, attributes and
    ``state_dict`` keys stay those of the model; calls go through ``torch.compile``."""
    if enabled:
        module.compile()
    return module


def set_sdpa(model: Any) -> str | None:
    """A loaded transformers model switched to SDPA attention where its class has it (quietly not where it
    has none); returns the attention implementation in use (None for a model that is not a transformers
    one)."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        try:
            setter("sdpa")
        except ValueError as err:  # only transformers' "does not support ... scaled_dot_product_attention"
            if "scaled_dot_product_attention" not in str(err):
                raise
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def prepare_sd(pipe: Any, device: torch.device, channels_last: ChannelsLast, compile: bool) -> Any:
    """A loaded SD pipeline as every SD loader (and ``bench/gpu_check.py``) runs it: SDPA in the UNet, VAE and
    text encoder; ``channels_last`` on the UNet and VAE; ``compile`` on the UNet and the VAE decoder."""
    for module in (pipe.unet, pipe.vae):
        use_sdpa_processors(module)
    set_sdpa(pipe.text_encoder)
    for module in (pipe.unet, pipe.vae):
        apply_channels_last(module, channels_last, device)
    for module in (pipe.unet, pipe.vae.decoder):
        maybe_compile(module, compile)
    return pipe


def prepare_dit(transformer: torch.nn.Module, vae: torch.nn.Module, device: torch.device,
                channels_last: ChannelsLast, compile: bool) -> None:
    """A loaded DiT transformer and its VAE as the DiT loader (and ``bench/gpu_check.py``) runs them: SDPA in
    both; ``channels_last`` on the VAE (the transformer's only convolution is its patch embedding);
    ``compile`` on the transformer and the VAE decoder."""
    use_sdpa_processors(transformer)
    use_sdpa_processors(vae)
    apply_channels_last(vae, channels_last, device)
    maybe_compile(transformer, compile)
    maybe_compile(vae.decoder, compile)
