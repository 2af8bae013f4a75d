"""The local zoo: every role builds offline, reloads through from_pretrained, and runs."""

import numpy as np
import torch
from PIL import Image

from actors import zoo
from actors.loading import load_pretrained
from pipeline.errors import ModelLoadError


def test_second_build_is_a_noop(zoo_dir):
    before = {r: (zoo.zoo_path(r) / zoo.MARKER).stat().st_mtime for r in ("clip", "dit", "sd")}
    logs = []
    zoo.build_zoo(roles=("clip", "dit", "sd"), log=logs.append)
    assert all("cached" in line for line in logs)
    assert before == {r: (zoo.zoo_path(r) / zoo.MARKER).stat().st_mtime for r in ("clip", "dit", "sd")}


def test_clip_reload_and_features(zoo_dir):
    from transformers import AutoProcessor, CLIPModel

    proc = load_pretrained("clip", "zoo:clip", AutoProcessor.from_pretrained)
    model = load_pretrained("clip", "zoo:clip", CLIPModel.from_pretrained).eval()
    img = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
    inp = proc(images=[img, img], text=["a photo of digit seven", "digit one"], return_tensors="pt",
               padding=True)
    with torch.no_grad():
        f = model.get_image_features(pixel_values=inp.pixel_values)
        f = getattr(f, "pooler_output", f)
    assert f.shape == (2, model.config.projection_dim)
    torch.testing.assert_close(f[0], f[1])


def test_dit_pipeline_reload_samples(zoo_dir):
    from diffusers import DiTPipeline

    pipe = load_pretrained("dit", "zoo:dit", DiTPipeline.from_pretrained)
    assert pipe.transformer.config.num_embeds_ada_norm == 1000
    out = pipe(class_labels=[1, 2], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    assert out.shape == (2, 32, 32, 3) and np.isfinite(out).all()


def test_sd_img2img_reload_runs(zoo_dir):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = load_pretrained("sd", "zoo:sd", StableDiffusionImg2ImgPipeline.from_pretrained)
    img = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    out = pipe(prompt=["handwritten digit seven"], image=img, strength=0.7, num_inference_steps=4,
               guidance_scale=10.0, negative_prompt=["cartoon, anime, painting"], output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 32, 3)


def test_vlm_and_llm_reload_generate(zoo_dir):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    proc = load_pretrained("vlm", "zoo:vlm", AutoProcessor.from_pretrained)
    vlm = load_pretrained("vlm", "zoo:vlm", AutoModelForImageTextToText.from_pretrained)
    ids = vlm.generate(**proc(images=[Image.new("RGB", (32, 32))], return_tensors="pt"), max_new_tokens=5)
    assert isinstance(proc.batch_decode(ids, skip_special_tokens=True)[0], str)
    tok = load_pretrained("llm", "zoo:llm", AutoTokenizer.from_pretrained)
    llm = load_pretrained("llm", "zoo:llm", AutoModelForCausalLM.from_pretrained)
    prompt = tok.apply_chat_template([{"role": "user", "content": "describe digit seven"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = llm.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= prompt["input_ids"].shape[1] + 4


def test_tokenizer_loads_with_autotokenizer(zoo_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(zoo.zoo_path("tokenizer"))
    ids = tok("A photo of digit SEVEN").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids


def test_missing_local_path_names_role_and_says_no_download(tmp_path):
    import pytest
    from transformers import CLIPModel

    with pytest.raises(ModelLoadError,
                       match=r"models\.clip: local model path does not exist: .*nowhere.*no download"):
        load_pretrained("clip", str(tmp_path / "nowhere"), CLIPModel.from_pretrained)
    with pytest.raises(ModelLoadError, match="unknown zoo role"):
        load_pretrained("clip", "zoo:nonsense", CLIPModel.from_pretrained)


def test_offline_hub_id_fails_clearly():
    import pytest
    from transformers import CLIPModel

    with pytest.raises(ModelLoadError,
                       match=r"models\.clip: could not load 'openai/clip-vit-large-patch14'.*HF_HUB_OFFLINE"):
        load_pretrained("clip", "openai/clip-vit-large-patch14", CLIPModel.from_pretrained)
