"""Demo caption attributes, measured by code, against hand-computed values on drawn images."""

import itertools

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.demo.zoo import captions as dc


def _canvas(draw) -> np.ndarray:
    im = Image.new("L", (32, 32), 255)
    draw(ImageDraw.Draw(im))
    return np.asarray(im.convert("RGB"))


def test_holes_of_a_ring_a_disk_and_two_rings():
    ring = _canvas(lambda d: d.ellipse((8, 8, 24, 24), outline=0, width=3))
    disk = _canvas(lambda d: d.ellipse((8, 8, 24, 24), fill=0))
    eight = _canvas(lambda d: (d.ellipse((10, 2, 22, 15), outline=0, width=2),
                               d.ellipse((10, 14, 22, 29), outline=0, width=2)))
    assert [dc.measure(x).loops for x in (ring, disk, eight)] == [1, 0, 2]
    assert "one closed loop" in dc.describe(dc.measure(ring))
    assert "two closed loops" in dc.describe(dc.measure(eight))


def test_slant_sign_of_slanted_bars():
    right = _canvas(lambda d: d.line((10, 28, 22, 4), fill=0, width=3))  # top leans right: "/"
    left = _canvas(lambda d: d.line((10, 4, 22, 28), fill=0, width=3))  # "\"
    upright = _canvas(lambda d: d.rectangle((15, 4, 17, 28), fill=0))
    assert dc.measure(right).slant > 0.3 and dc.measure(left).slant < -0.3
    assert dc.measure(upright).slant == pytest.approx(0.0, abs=1e-9)
    assert dc.levels(dc.measure(right))["slant"] == 2 and dc.levels(dc.measure(left))["slant"] == 0


def test_stroke_width_of_1px_and_3px_lines():
    thin = _canvas(lambda d: d.rectangle((16, 4, 16, 28), fill=0))
    thick = _canvas(lambda d: d.rectangle((15, 4, 17, 28), fill=0))
    assert dc.measure(thin).thickness == 1.0
    assert dc.measure(thick).thickness == 3.0
    assert dc.describe(dc.measure(thin)).startswith("thin strokes")


def test_size_and_position_of_a_small_blob_on_the_left():
    blob = _canvas(lambda d: d.rectangle((2, 12, 9, 19), fill=0))  # 8x8 box, centre x = 5.5
    m = dc.measure(blob)
    assert m.size == pytest.approx(64 / 1024)
    assert m.position == pytest.approx(5.5 - 15.5)
    assert dc.levels(m)["size"] == 0 and dc.levels(m)["position"] == 0


def test_caption_is_deterministic_names_the_class_and_parses_back():
    img = _canvas(lambda d: d.ellipse((8, 8, 24, 24), outline=0, width=3))
    text = dc.caption(img, "handwritten digit zero")
    assert text == dc.caption(img, "handwritten digit zero")
    assert text.startswith("a handwritten digit zero, ")
    assert dc.parse_levels(text) == dc.levels(dc.measure(img))
    with pytest.raises(KeyError, match="class_name"):
        dc.caption(img, "x", lead="a digit")


def test_every_attribute_word_is_in_the_tiny_tokenizers_vocabulary():
    from actors.zoo import build_tokenizer

    tok = build_tokenizer()
    for words in itertools.product(*dc.WORDS.values()):
        ids = tok(f"a photo of handwritten digit eight, {', '.join(words)}")["input_ids"]
        assert tok.unk_token_id not in ids, words
