"""The shipped demo zoo: checkpoints match SHA256SUMS, load through the pipeline's actors, carry their
checks."""

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from actors import shipped, zoo
from pipeline.demo.zoo import captions, models
from pipeline.errors import ModelLoadError

NAMES = {str(c): f"handwritten digit {n}" for c, n in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])}


@pytest.fixture(scope="module")
def demo_zoo(tmp_path_factory):
    """The three shipped roles built (copied after the sha256 check) into a fresh zoo folder."""
    d = tmp_path_factory.mktemp("demo-zoo")
    for role in shipped.SHIPPED_ROLES:
        path, built = zoo.build_role(role, d)
        assert built and (path / zoo.MARKER).is_file()
    return d


def _val_images(demo_root, n=4):
    from pipeline.core.read import load_image_arrays

    images, labels, _, _ = load_image_arrays(demo_root / "val", 32)
    pick = np.linspace(0, len(images) - 1, n).astype(int)
    return images[pick], labels[pick]


def test_shipped_files_match_their_sums_and_every_file_is_listed():
    sums = shipped.read_sums()
    on_disk = {p.relative_to(shipped.WEIGHTS_DIR).as_posix() for p in shipped.WEIGHTS_DIR.rglob("*")
               if p.is_file() and p.name != shipped.SUMS_FILE}
    assert on_disk == set(sums)
    total = 0
    for role in shipped.SHIPPED_ROLES:
        names = shipped.verify_role(role)
        assert f"{role}/{role}.json" in names
        total += sum((shipped.WEIGHTS_DIR / n).stat().st_size for n in names)
    assert total < 20 * 2**20  # small files: under 20 MB in all


def test_zoo_build_copies_the_shipped_files(demo_zoo):
    for name in shipped.verify_role("demo_clip"):
        rel = name.split("/", 1)[1]
        assert (demo_zoo / "demo_clip" / rel).read_bytes() == (shipped.WEIGHTS_DIR / name).read_bytes()


def test_a_tampered_file_is_refused_with_the_file_and_the_fix(tmp_path):
    weights = tmp_path / "w"
    shutil.copytree(shipped.WEIGHTS_DIR, weights)
    shipped.verify_role("demo_clip", weights)  # the copy is intact
    target = weights / "demo_clip" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.*train-demo --roles demo_clip"):
        shipped.copy_role("demo_clip", tmp_path / "out", weights)
    target.unlink()
    with pytest.raises(ModelLoadError, match="is missing"):
        shipped.verify_role("demo_clip", weights)
    (weights / shipped.SUMS_FILE).unlink()
    with pytest.raises(ModelLoadError, match="SHA256SUMS is missing"):
        shipped.verify_role("demo_vlm", weights)


def test_captioner_actor_writes_measured_attribute_sentences(demo_zoo, demo_root):
    from actors.captioner import Captioner

    images, labels = _val_images(demo_root)
    cap = Captioner("zoo:demo_vlm", NAMES, zoo_dir=str(demo_zoo), style="prefix", max_tokens=32, device="cpu")
    out = cap({"path": np.array([f"v{i}" for i in range(len(images))], dtype=object),
               "class_id": np.array([str(int(y)) for y in labels], dtype=object), "image": images})
    for text, y in zip(out["caption"], labels):
        assert text.startswith(f"a photo of {NAMES[str(int(y))]},")
        stated = captions.parse_levels(text)
        assert all(v is not None for v in stated.values()), text  # one level of every attribute


def test_clip_embedder_zero_shot_on_val_images(demo_zoo, demo_root):
    from PIL import Image

    from actors.clip_embedder import ClipEmbedder

    images, labels = _val_images(demo_root, 10)
    emb = ClipEmbedder("zoo:demo_clip", zoo_dir=str(demo_zoo), device="cpu")
    img = emb.image_features([Image.fromarray(x) for x in images])
    txt = emb.text_features([f"a {NAMES[str(c)]}" for c in range(10)])
    assert img.shape == (10, 32) and txt.shape == (10, 32)
    img, txt = img / np.linalg.norm(img, axis=1,
                                    keepdims=True), txt / np.linalg.norm(txt, axis=1, keepdims=True)
    assert ((img @ txt.T).argmax(1) == labels).mean() >= 0.5  # chance is 0.1


def test_sd_generator_runs_img2img_with_the_demo_sd(demo_zoo):
    from actors.sd import SDGenerator

    gen = SDGenerator("zoo:demo_sd", {"num_inference_steps": 4, "image_size": 32}, zoo_dir=str(demo_zoo),
                      device="cpu")
    assert gen.pipe.text_encoder.config.hidden_size == gen.pipe.unet.config.cross_attention_dim
    assert gen.pipe.vae_scale_factor == 4 and gen.pipe.unet.config.sample_size == 8  # 32 px -> 8x8x4 latents
    batch = {"key": np.array(["a", "b"], dtype=object), "latent": np.zeros((2, 4, 8, 8), np.float32),
             "prompt": np.array([("a handwritten digit one, thin strokes, upright, small size, centered, "
                                  "no closed loop")] * 2, dtype=object), "seed": np.array([1, 2])}
    out = gen(batch)
    assert out["image"].shape == (2, 32, 32, 3) and out["image"].dtype == np.uint8


def test_recorded_checks_have_their_shape_and_pass_their_thresholds():
    vlm = json.loads((shipped.WEIGHTS_DIR / "demo_vlm" / "demo_vlm.json").read_text())
    assert set(vlm["attribute_match"]) == set(captions.ATTRIBUTES)
    assert all(0 <= v <= 1 for v in vlm["attribute_match"].values()) and vlm["val_images"] == 359
    assert models.training_fields(vlm["recipe"]) == models.training_fields(
        models.asdict(models.DemoVLMRecipe()))
    vlm_min = models.DemoVLMRecipe()
    assert vlm["class_name_share"] >= vlm_min.min_class_name_share
    assert vlm["mean_attribute_match"] >= vlm_min.min_mean_attribute_match
    clip = json.loads((shipped.WEIGHTS_DIR / "demo_clip" / "demo_clip.json").read_text())
    assert models.training_fields(clip["recipe"]) == models.training_fields(
        models.asdict(models.DemoCLIPRecipe()))
    assert clip["zero_shot_accuracy"] >= models.DemoCLIPRecipe().min_zero_shot_accuracy
    assert clip["recall_at_5_image_to_caption"] >= models.DemoCLIPRecipe().min_recall_at_5
    assert clip["recall_at_5_image_to_caption"] > 10 * clip["recall_at_5_chance_about"]
    sd = json.loads((shipped.WEIGHTS_DIR / "demo_sd" / "demo_sd.json").read_text())
    assert models.training_fields(sd["recipe"]) == models.training_fields(
        json.loads(json.dumps(models.asdict(models.DemoSDRecipe()))))  # tuples as JSON lists
    assert sd["samples_checked"] == 10 * sd["recipe"]["check_per_class"]
    assert sd["sample_accuracy"] >= models.DemoSDRecipe().min_sample_accuracy
    assert sd["latent_shape"] == [4, 8, 8]
    assert set(sd["sample_accuracy_per_class"]) == set(NAMES.values())
    sd_min = models.DemoSDRecipe()
    # EDITS's own path: img2img from its image prototypes of train clusters at IPC 1 and 10
    assert sd["img2img_class_prompt_accuracy"] >= sd_min.min_img2img_class_prompt_accuracy
    assert set(sd["img2img_class_prompt_accuracy_per_ipc"]) == {"1", "10"}
    assert set(sd["img2img_class_prompt_accuracy_per_class"]) == set(NAMES.values())
    # SmolLM2's prompts
    assert sd["img2img_text_prototype_accuracy"] >= sd_min.min_img2img_text_prototype_accuracy
    assert sd["img2img_text_prototype_clusters_checked"] == {"1": 10, "10": 100}  # every check cluster
    assert sd["img2img_class_prompt_clusters_checked"] == {"1": 10, "10": 100}
    assert sd["llm_summaries"] == 200  # the text stage saw SmolLM2's summaries of train caption groups


def test_train_demo_skips_present_weights_and_rejects_unknown_roles(tmp_path, capsys):
    from pipeline.demo.commands import train_demo

    (tmp_path / "demo_clip").mkdir()
    args = argparse.Namespace(roles=["demo_clip"], data=None, dir=str(tmp_path / "zoo"),
                              weights_dir=str(tmp_path), force=False)
    assert train_demo(args) == 0 and "use --force to retrain" in capsys.readouterr().out
    args.roles = ["demo_unet"]
    assert train_demo(args) == 2 and "unknown role(s) demo_unet" in capsys.readouterr().out


def test_tokenizer_ids_of_the_original_words_are_unchanged():
    tok = zoo.build_tokenizer()
    # ids before the attribute words were added (sorted original word list after 4 specials)
    assert tok.convert_tokens_to_ids(["a", "digit", "handwritten", "zero"]) == [20, 54, 69, 149]
    assert len(tok) == 150 + len(zoo._WORDS_ADDED)
    assert torch.tensor(tok("slanted upright")["input_ids"][1:-1]).min() >= 150


def test_a_zoo_copy_of_older_shipped_weights_is_rebuilt(tmp_path):
    """A demo role copied before the weights were re-shipped (old marker) is stale: rebuilt from the shipped
    files."""
    from actors import zoo_paths

    path, built = zoo.build_role("demo_sd", tmp_path)
    assert built and zoo.is_built("demo_sd", tmp_path)
    assert not zoo.build_role("demo_sd", tmp_path)[1]  # current: a no-op
    unet = path / "unet" / "diffusion_pytorch_model.safetensors"
    # before digests; older weights
    for old_marker in (zoo.ZOO_VERSION, f"{zoo.ZOO_VERSION} shipped {'0' * 64}"):
        unet.write_bytes(b"older weights")
        (path / zoo.MARKER).write_text(old_marker)
        assert not zoo.is_built("demo_sd", tmp_path)
        assert zoo.build_role("demo_sd", tmp_path)[1]
        assert unet.read_bytes() == (shipped.WEIGHTS_DIR / "demo_sd" / unet.relative_to(path)).read_bytes()
    (path / zoo.MARKER).write_text(zoo_paths.TRAINED_HERE)  # trained into the zoo by hand: kept
    assert zoo.is_built("demo_sd", tmp_path)
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / zoo.MARKER).write_text(zoo.ZOO_VERSION)  # random-init roles: the version alone
    assert zoo.is_built("clip", tmp_path)
