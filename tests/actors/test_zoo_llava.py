"""The zoo's tiny LLaVA-1.5-architecture captioner (``zoo:llava``): built offline, deterministic, loaded and
run by the transformers backend; its chat template renders vLLM's string content like the parts list."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from actors import zoo
from actors.loading import load_pretrained


def test_llava_has_the_real_classes_and_sixteen_image_tokens(zoo_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = load_pretrained("vlm", "zoo:llava", AutoProcessor.from_pretrained)
    model = load_pretrained("vlm", "zoo:llava", AutoModelForImageTextToText.from_pretrained).eval()
    assert type(proc).__name__ == "LlavaProcessor" and type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(proc.image_processor).__name__.startswith("CLIPImageProcessor")
    cfg = model.config
    assert cfg.architectures == ["LlavaForConditionalGeneration"]
    assert (cfg.vision_config.model_type, cfg.text_config.model_type) == ("clip_vision_model", "llama")
    assert cfg.vision_feature_layer == -2 and cfg.vision_feature_select_strategy == "default"
    image_id = proc.tokenizer.convert_tokens_to_ids("<image>")
    assert cfg.image_token_index == image_id and proc.image_token_id == image_id
    assert cfg.text_config.hidden_size // cfg.text_config.num_attention_heads == 32  # a vLLM CPU head size
    assert cfg.text_config.max_position_embeddings == 4096

    prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                      "text": "a digit"}]}],
                                      add_generation_prompt=True)
    assert prompt == "USER: <image>\na digit ASSISTANT:"
    inp = proc(images=[Image.new("RGB", (50, 40), (9, 9, 9))], text=[prompt], return_tensors="pt")
    ids = inp["input_ids"][0].tolist()
    assert tuple(inp["pixel_values"].shape) == (1, 3, 32, 32)
    assert ids.count(image_id) == (32 // 8) ** 2 and ids[0] == proc.tokenizer.bos_token_id
    assert proc.tokenizer.eos_token_id not in ids  # a decoder-only prompt: BOS only
    with torch.no_grad():
        out = model.generate(**inp, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, len(ids) + 4) and torch.equal(out[0, : len(ids)], inp["input_ids"][0])


def test_llava_template_renders_vllm_string_content_like_the_parts():
    """vLLM's "string" content format hands the template ``"<image>\\n" + text``; the transformers captioner
    hands it a parts list: both render LLaVA-1.5's prompt, so both backends send the model the same text."""
    from jinja2 import Template

    tpl = Template(zoo.LLAVA_CHAT_TEMPLATE)
    text = "Describe this image of 'handwritten digit seven' in one sentence."
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    string = [{"role": "user", "content": "<image>\n" + text}]
    want = f"USER: <image>\n{text} ASSISTANT:"
    assert tpl.render(messages=parts, add_generation_prompt=True) == want
    assert tpl.render(messages=string, add_generation_prompt=True) == want
    assert tpl.render(messages=string, add_generation_prompt=False) == want[: -len("ASSISTANT:")]


def test_llava_checkpoint_has_the_hub_layout_and_loads_whole(zoo_dir):
    """Keys as in llava-hf/llava-1.5-7b-hf (what vLLM's LLaVA and transformers<5.20 read); transformers
    5.24 loads every weight from them (nothing missing, unexpected or freshly initialised)."""
    from safetensors import safe_open
    from transformers import LlavaForConditionalGeneration

    folder = zoo.resolve_model_ref("zoo:llava")
    with safe_open(f"{folder}/model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert "language_model.model.embed_tokens.weight" in keys and "language_model.lm_head.weight" in keys
    assert {k.split(".")[0] for k in keys} == {"vision_tower", "language_model", "multi_modal_projector"}
    assert not [k for k in keys if k.startswith("vision_tower.") and ".vision_model." not in f".{k}"]
    _model, info = LlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))


def test_llava_build_is_deterministic(zoo_dir, tmp_path):
    from safetensors.torch import load_file

    built = zoo.resolve_model_ref("zoo:llava")
    again, made = zoo.build_role("llava", tmp_path)
    assert made
    a, b = load_file(f"{built}/model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and len(a) > 20
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("config.json", "processor_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (again / name).read_text() == (zoo.zoo_path("llava") / name).read_text()


def test_transformers_captioner_runs_llava_instruct(zoo_dir):
    from actors.captioner import Captioner

    cap = Captioner("zoo:llava", {"3": "handwritten digit three"}, max_tokens=12,
                    count_tokenizer_ref="zoo:clip", micro_batch=2)
    assert cap.style == "instruct"  # the LLaVA processor has a chat template
    images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    out = cap({"path": np.array(["a", "b", "bad"], dtype=object),
               "class_id": np.array(["3"] * 3, dtype=object),
               "image": images, "error": np.array(["", "", "cannot decode: x"], dtype=object)})
    assert out["caption"][2] == "" and out["error"].tolist() == ["", "", "cannot decode: x"]
    for c in out["caption"][:2]:
        assert "handwritten digit three" in c and 0 < len(cap.count_tok(c)["input_ids"]) <= 12
