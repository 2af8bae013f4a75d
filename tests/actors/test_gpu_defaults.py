"""GPU defaults (bf16 auto dtype, SDPA, channels_last, torch.compile) through the real
loaders, on the zoo models on the CPU; CUDA is mocked where a branch asks for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.gpu_defaults import channels_last_on, use_sdpa_processors, with_sdpa
from actors.loading import pick_dtype

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def is_compiled(module: torch.nn.Module) -> bool:
    """Whether calls to ``module`` run through ``torch.compile`` (in place or an ``OptimizedModule``)."""
    return getattr(module, "_compiled_call_impl", None) is not None or isinstance(
        module, torch._dynamo.eval_frame.OptimizedModule)


def _convs(module: torch.nn.Module) -> list[torch.Tensor]:
    """4-D conv weights whose NCHW and NHWC layouts differ (more than one channel and pixel)."""
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)
            and m.weight.shape[1] > 1 and m.weight.shape[2] * m.weight.shape[3] > 1]


def _all_channels_last(module: torch.nn.Module) -> bool:
    ws = _convs(module)
    assert ws, "no convolution to check"
    return all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in ws)


@pytest.mark.parametrize("bf16, want", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_dtype_is_bf16_on_cuda_where_supported_else_fp16(monkeypatch, bf16, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert pick_dtype("auto", CUDA) == want
    assert pick_dtype("auto", CPU) == torch.float32  # CPU stays fp32 (the demo's bits)
    assert pick_dtype("float16", CUDA) == torch.float16 and pick_dtype("bfloat16", CPU) == torch.bfloat16


def test_with_sdpa_asks_for_sdpa_and_falls_back_where_the_class_has_none():
    calls = []

    def loader(ref, **kw):
        calls.append(kw)
        if kw.get("attn_implementation") == "sdpa" and ref == "blip":
            raise ValueError("BlipForConditionalGeneration does not support an attention implementation "
                             "through torch.nn.functional.scaled_dot_product_attention yet.")
        return ref

    assert with_sdpa(loader)("clip", dtype=torch.bfloat16) == "clip"
    assert calls == [{"attn_implementation": "sdpa", "dtype": torch.bfloat16}]
    calls.clear()
    assert with_sdpa(loader)("blip") == "blip"
    assert calls == [{"attn_implementation": "sdpa"}, {}]

    def broken(ref, **kw):
        raise ValueError("bad config.json")

    with pytest.raises(ValueError, match="bad config"):  # other errors still reach load_pretrained
        with_sdpa(broken)("x")


def test_transformers_actors_load_with_sdpa(zoo_dir):
    from actors.captioner import Captioner
    from actors.clip_embedder import ClipEmbedder
    from actors.llm import TransformersChat

    clip = ClipEmbedder("zoo:clip", device="cpu")
    assert clip.model.config._attn_implementation == "sdpa"
    assert clip.model.vision_model.config._attn_implementation == "sdpa"
    assert TransformersChat("zoo:llm", device="cpu").model.config._attn_implementation == "sdpa"
    vlm = Captioner("zoo:vlm", {"0": "tench"}, device="cpu")  # BLIP has no SDPA path: loads quietly, eager
    assert vlm.model.config._attn_implementation == "eager"


def test_diffusers_models_run_sdpa_processors(zoo_dir):
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    from actors.dit import load_dit
    from actors.sd import load_img2img_pipeline

    pipe = load_img2img_pipeline("zoo:sd", device="cpu")
    transformer, vae, _ = load_dit("zoo:dit", device="cpu")
    for model in (pipe.unet, pipe.vae, transformer, vae):
        procs = [m.processor for m in model.modules() if isinstance(m, Attention)]
        assert procs and all(type(p) is AttnProcessor2_0 for p in procs)
    assert pipe.text_encoder.config._attn_implementation == "sdpa"
    # an eager processor (an older diffusers default, or set by hand) is switched explicitly
    pipe.unet.set_attn_processor(AttnProcessor())
    n = sum(isinstance(m, Attention) for m in pipe.unet.modules())
    assert use_sdpa_processors(pipe.unet) == n > 0
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}


def test_channels_last_setting():
    assert channels_last_on("auto", CUDA) and not channels_last_on("auto", CPU)
    assert channels_last_on(True, CPU) and not channels_last_on(False, CUDA)
    with pytest.raises(ValueError, match="models.channels_last"):
        channels_last_on("yes", CPU)


def test_channels_last_reaches_unet_and_vae_and_keeps_outputs(zoo_dir):
    from actors.sd import load_img2img_pipeline
    from actors.vae import VaeEncoder

    plain = load_img2img_pipeline("zoo:sd", device="cpu")  # auto on CPU: off, NCHW as before
    assert not any(w.is_contiguous(memory_format=torch.channels_last) for w in _convs(plain.unet))
    nhwc = load_img2img_pipeline("zoo:sd", device="cpu", channels_last=True)
    assert _all_channels_last(nhwc.unet) and _all_channels_last(nhwc.vae)
    g = torch.Generator().manual_seed(0)
    c = plain.unet.config
    x = torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=g)
    ctx = torch.randn(2, 8, c.cross_attention_dim, generator=g)
    with torch.no_grad():
        a = plain.unet(x, 10, encoder_hidden_states=ctx).sample
        b = nhwc.unet(x, 10, encoder_hidden_states=ctx).sample
        da, db = plain.vae.decode(x).sample, nhwc.vae.decode(x).sample
    assert a.abs().max() > 0.01 and torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert torch.allclose(da, db, atol=1e-4, rtol=1e-4)
    enc = VaeEncoder("zoo:sd", subfolder="vae", device="cpu", channels_last=True)
    assert _all_channels_last(enc.vae)
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    ref = VaeEncoder("zoo:sd", subfolder="vae", device="cpu")
    np.testing.assert_allclose(enc.encode(images), ref.encode(images), atol=1e-4, rtol=1e-4)


def test_compile_wraps_unet_dit_and_vae_decoder_only_when_asked(zoo_dir):
    from actors.dit import load_dit
    from actors.sd import load_img2img_pipeline

    transformer, vae, _ = load_dit("zoo:dit", device="cpu", compile=True)
    assert is_compiled(transformer) and is_compiled(vae.decoder) and not is_compiled(vae.encoder)
    pipe = load_img2img_pipeline("zoo:sd", device="cpu", compile=True)
    assert is_compiled(pipe.unet) and is_compiled(pipe.vae.decoder)
    assert pipe.unet.config.in_channels == 4  # still the diffusers model: pipeline code reads its attributes
    plain, plain_vae, _ = load_dit("zoo:dit", device="cpu")
    assert not is_compiled(plain) and not is_compiled(plain_vae.decoder)
    assert set(plain.state_dict()) == set(transformer.state_dict())  # no _orig_mod. prefix in the weights


@pytest.mark.slow
def test_compiled_dit_forward_matches_eager(zoo_dir):
    from actors.dit import load_dit

    eager, _, _ = load_dit("zoo:dit", device="cpu")
    compiled, _, _ = load_dit("zoo:dit", device="cpu", compile=True)
    c = eager.config
    z = torch.randn(2, c.in_channels, c.sample_size, c.sample_size,
                    generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([10, 500]), torch.tensor([1, 3])
    with torch.no_grad():
        a = eager(z, timestep=t, class_labels=y).sample
        b = compiled(z, timestep=t, class_labels=y).sample
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_set_sdpa_passes_over_only_the_no_sdpa_error():
    """A class without SDPA keeps its attention; any other error from the setter reaches the caller."""
    from types import SimpleNamespace

    from actors.gpu_defaults import set_sdpa

    def model(err: Exception | None) -> SimpleNamespace:
        cfg = SimpleNamespace(_attn_implementation="eager")

        def setter(impl: str) -> None:
            if err is not None:
                raise err
            cfg._attn_implementation = impl
        return SimpleNamespace(config=cfg, set_attn_implementation=setter)

    assert set_sdpa(model(None)) == "sdpa"
    no_sdpa = ValueError("Tiny does not support an attention implementation through "
                         "torch.nn.functional.scaled_dot_product_attention yet.")
    assert set_sdpa(model(no_sdpa)) == "eager"
    with pytest.raises(ValueError, match="bad head size"):
        set_sdpa(model(ValueError("bad head size")))
    assert set_sdpa(object()) is None
