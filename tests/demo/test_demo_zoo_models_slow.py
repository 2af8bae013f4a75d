"""Slow: each demo model retrains from its recipe and passes its check's threshold (minutes each)."""

import pytest

from actors import shipped
from pipeline.demo.zoo import models

pytestmark = pytest.mark.slow


def test_demo_vlm_retrains_to_its_threshold(tmp_path, demo_root):
    r = models.train_demo_vlm(tmp_path / "demo_vlm", demo_root)
    assert r["class_name_share"] >= r["recipe"]["min_class_name_share"]
    assert r["mean_attribute_match"] >= r["recipe"]["min_mean_attribute_match"]
    assert (tmp_path / "demo_vlm" / "demo_vlm.json").is_file()


def test_demo_clip_retrains_to_its_threshold(tmp_path, demo_root):
    r = models.train_demo_clip(tmp_path / "demo_clip", demo_root)
    assert r["zero_shot_accuracy"] >= r["recipe"]["min_zero_shot_accuracy"]
    assert r["recall_at_5_image_to_caption"] >= r["recipe"]["min_recall_at_5"]


def test_demo_sd_retrains_to_its_threshold(tmp_path, demo_root):
    """Text-to-image samples recognised as the prompt's class >= 80% (text tower from the shipped demo
    CLIP)."""
    r = models.train_demo_sd(tmp_path / "demo_sd", shipped.WEIGHTS_DIR / "demo_clip", demo_root)
    assert r["sample_accuracy"] >= r["recipe"]["min_sample_accuracy"] == 0.8
    assert r["img2img_class_prompt_accuracy"] >= r["recipe"]["min_img2img_class_prompt_accuracy"] == 0.95
