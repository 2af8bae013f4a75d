"""The demo SD's training texts (varied phrasings, LLM-style sentences, the negative prompt) and its EDITS
check."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from actors import shipped, zoo
from pipeline.demo.zoo import captions, models, sd_check, sd_text

NEGATIVE = "cartoon, anime, painting"


@pytest.fixture(scope="module")
def demo_data(demo_root):
    return models.load_demo_data(demo_root)


def test_every_synonym_list_starts_with_the_caption_words():
    for k, words in captions.WORDS.items():
        assert tuple(s[0] for s in sd_text.SYNONYMS[k]) == words


def test_varied_captions_name_the_class_state_only_the_measured_levels_and_vary(demo_data):
    image, name = demo_data.train_images[0], demo_data.names[int(demo_data.train_labels[0])]
    level = captions.levels(captions.measure(image))
    rng = np.random.default_rng(0)
    texts = [sd_text.varied_caption(image, name, rng) for _ in range(50)]
    assert all(name in t for t in texts)
    assert len(set(texts)) > 30  # many phrasings, not one template
    for k in ("slant", "loops"):  # their phrases are no substrings of another level's (but one, masked)
        wrong = [w for lv, words in enumerate(sd_text.SYNONYMS[k]) if lv != level[k] for w in words]
        said = [t.replace("without a closed loop", "without-loop") for t in texts]
        assert not [(t, w) for t in said for w in wrong if w in t and w != "without a closed loop"]
    assert sd_text.varied_caption(image, name, np.random.default_rng(0)) == texts[0]  # seeded


def test_llm_style_sentences_have_smollm2s_shape_and_the_zoo_tokenizer_reads_the_class_name(demo_data):
    image, name = demo_data.train_images[5], demo_data.names[int(demo_data.train_labels[5])]
    rng = np.random.default_rng(1)
    texts = [sd_text.llm_style_caption(image, name, rng) for _ in range(40)]
    assert any(t.startswith(f'The class is named "{name.title()}" and is depicted as') for t in texts)
    tok = zoo.build_tokenizer()
    unk = tok.unk_token_id
    for t in texts:
        ids = tok(t)["input_ids"]
        words = tok.convert_ids_to_tokens([i for i in ids if i != unk])
        assert name.split()[-1] in words  # "zero" ... "nine" are in the vocabulary, never [UNK]


def test_negative_text_uses_only_the_negative_prompts_words():
    rng = np.random.default_rng(2)
    outs = {sd_text.negative_text(NEGATIVE, rng) for _ in range(60)}
    assert all(set(o.split(", ")) <= {"cartoon", "anime", "painting"} for o in outs)
    assert NEGATIVE in outs or len(outs) > 5


def test_training_texts_follow_the_mix_and_the_dropout(demo_data):
    recipe = models.DemoSDRecipe()
    only_captions = models.TrainingTexts(demo_data, replace(recipe, text_mix=(1, 0, 0, 0), caption_dropout=0),
                                         [])
    assert only_captions([0, 3]) == [only_captions.captions[0], only_captions.captions[3]]
    dropped = models.TrainingTexts(demo_data, replace(recipe, caption_dropout=1.0, negative_share=1.0), [])
    assert all(set(t.split(", ")) <= {"cartoon", "anime", "painting"} for t in dropped(list(range(20))))
    empty = models.TrainingTexts(demo_data, replace(recipe, caption_dropout=1.0, negative_share=0.0), [])
    assert empty([1, 2]) == ["", ""]
    summary = [{"members": [4], "text": "the cached summary"}]
    llm = models.TrainingTexts(demo_data, replace(recipe, text_mix=(0, 0, 0, 1), caption_dropout=0), summary)
    out = llm([4, 5])
    # no summary of image 5: an LLM-style sentence
    assert out[0] == "the cached summary" and out[1].endswith(".")


def test_summary_groups_are_seeded_groups_of_one_class(demo_data):
    y = demo_data.train_labels
    groups = sd_text.summary_groups(y, 2, 5, seed=7)
    assert len(groups) == 20 and all(len(g) == 5 and len({int(y[i]) for i in g}) == 1 for g in groups)
    assert groups == sd_text.summary_groups(y, 2, 5, seed=7)


def test_check_clusters_are_edits_lsa_on_raw_concat_gsq(demo_data):
    """IPC 1: the centre is the class mean of [I, softmax(I T^T / 0.01) T] (raw projections); its 5
    nearest."""
    from PIL import Image

    from actors.clip_embedder import ClipEmbedder

    clip_dir = str(shipped.WEIGHTS_DIR / "demo_clip")
    clusters = sd_check.clusters_of(demo_data, clip_dir, ipc=1, seed=0)
    assert [cl.label for cl in clusters] == list(range(10))
    emb = ClipEmbedder(clip_dir, device="cpu", dtype="float32")
    idx = np.flatnonzero(demo_data.train_labels == 3)
    img = emb.image_features([Image.fromarray(im) for im in demo_data.train_images[idx]]).astype(np.float64)
    txt = emb.text_features(models.captions_for(demo_data.train_images[idx], demo_data.train_labels[idx],
                                                     demo_data.names,
                                                     sd_check.CAPTION_LEAD)).astype(np.float64)
    logits = img @ txt.T / 0.01
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    fused = np.concatenate([img, w @ txt], axis=1)
    dist = ((fused - fused.mean(0)) ** 2).sum(1)
    assert clusters[3].members == [int(i) for i in idx[np.argsort(dist, kind="stable")[:5]]]


def test_image_prototype_is_the_mean_scaled_latent_of_the_members(demo_data):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(shipped.WEIGHTS_DIR / "demo_sd", subfolder="vae").eval()
    cl = sd_check.Cluster(label=0, cluster=0, members=[0, 7, 9])
    proto = sd_check.image_prototypes(vae, demo_data, [cl])
    x = torch.from_numpy(demo_data.train_images[[0, 7, 9]]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        lat = [vae.encode(x[i:i + 1]).latent_dist.mode()[0] for i in range(3)]
    assert torch.allclose(proto[0], torch.stack(lat).mean(0) * vae.config.scaling_factor, atol=1e-5)


def test_summaries_written_for_another_train_split_are_refused_with_the_fix(demo_data, tmp_path):
    import json

    x, y = demo_data.train_images, demo_data.train_labels
    path = tmp_path / "sd_summaries.json"
    entry = [{"members": [0, 1, 2, 3, 4], "text": "x"}]
    path.write_text(json.dumps({"train_fingerprint": sd_text.train_fingerprint(x, y), "summaries": entry}))
    assert sd_text.load_summaries(sd_text.train_fingerprint(x, y), path) == (entry, "")
    other = x.copy()
    other[0, 0, 0, 0] ^= 1  # one pixel of one image
    got, why = sd_text.load_summaries(sd_text.train_fingerprint(other, y), path)
    assert got == [] and "another train split" in why and "write_summaries_file" in why
    assert sd_text.load_summaries(sd_text.train_fingerprint(x[:-1], y[:-1]), path)[0] == []
    assert sd_text.load_summaries("f", tmp_path / "absent.json") == ([], "absent.json is absent")


def test_the_shipped_summaries_are_smollm2s_of_one_class_groups_of_the_demo_train_split(demo_data):
    fingerprint = sd_text.train_fingerprint(demo_data.train_images, demo_data.train_labels)
    summaries, why = sd_text.load_summaries(fingerprint)
    assert why == "" and len(summaries) == 200  # 20 groups of 5 per class
    y = demo_data.train_labels
    assert [s["members"] for s in summaries] == sd_text.summary_groups(y, 20, 5, seed=100)
    named = [demo_data.names[int(y[s["members"][0]])].lower() in s["text"].lower() for s in summaries]
    assert sum(named) >= 190  # SmolLM2's texts name the group's class (cleaning puts it back if not)
    assert len({s["text"] for s in summaries}) > 150  # free-form texts, not a template


def test_cached_smollm2_prototypes_summarise_the_current_check_clusters(demo_data):
    texts = sd_text.load_check_texts()
    # every IPC 1 cluster
    assert {k for k in texts if k.startswith("ipc1/")} == {f"ipc1/{c}/0" for c in range(10)}
    for ipc in (1, 10):
        for cl in sd_check.clusters_of(demo_data, str(shipped.WEIGHTS_DIR / "demo_clip"), ipc, seed=0):
            entry = texts.get(sd_check.cluster_key(ipc, cl))
            if entry is not None:  # cached: the summary of these very members, naming their class
                assert entry["members"] == cl.members and demo_data.names[cl.label] in entry["text"].lower()


def test_a_stale_cached_prototype_is_refused_with_the_fix():
    cl = sd_check.Cluster(label=0, cluster=0, members=[1, 2, 3, 4, 5])
    with pytest.raises(KeyError, match="write_summaries_file"):
        sd_check._cached_text({"ipc1/0/0": {"members": [9, 9, 9, 9, 9], "text": "x"}}, 1, cl)


def test_sd_checks_line_names_each_recorded_check():
    line = models.sd_checks_line({"sample_accuracy": 0.98, "img2img_text_prototype_accuracy": 0.975,
                                       "img2img_class_prompt_accuracy": 0.96})
    assert line == ("checks: text-to-image 98.0%, img2img + SmolLM2 prototypes 97.5%, img2img + class prompt "
                    "96.0% recognised")
    assert models.sd_checks_line({}) == "checks: none recorded"


def test_zoo_list_shows_the_shipped_demo_sds_checks(tmp_path, capsys):
    import argparse
    import json

    from pipeline.demo.commands import zoo_list

    assert zoo_list(argparse.Namespace(dir=str(tmp_path))) == 0
    report = json.loads((shipped.WEIGHTS_DIR / "demo_sd" / "demo_sd.json").read_text())
    assert models.sd_checks_line(report) in capsys.readouterr().out
    assert "img2img + SmolLM2 prototypes" in models.sd_checks_line(report)


def test_the_text_stage_needs_a_learning_rate_for_the_text_encoder_it_trains():
    recipe = replace(models.DemoSDRecipe(), text_lr=0.0)
    with pytest.raises(ValueError, match="text_lr must be > 0 .*stage 2 trains only the text encoder"):
        models.train_text_stage(None, None, None, None, None, None, recipe, print)


@pytest.mark.slow
def test_write_summaries_file_reproduces_the_shipped_file(demo_data, tmp_path):
    """SmolLM2 (greedy) over the 110 check clusters and the 200 train groups: about 7 min on 2 cores."""
    import json

    out = tmp_path / "sd_summaries.json"
    sd_check.write_summaries_file(demo_data, str(shipped.WEIGHTS_DIR / "demo_clip"),
                                  str(shipped.WEIGHTS_DIR / "demo_sd"), log=lambda _m: None, path=out)
    assert json.loads(out.read_text()) == json.loads(sd_text.SUMMARIES_FILE.read_text())
