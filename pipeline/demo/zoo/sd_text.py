"""The demo SD's training texts: the digits' measured attributes in many phrasings, not one template.

EDITS prompts its generator with a free-form LLM text prototype ('The class is named "Handwritten
Digit Zero" and is depicted as ...') and a negative prompt, so the demo SD and its text encoder
learn the domain's language from:

- ``varied_caption``: the measured attributes (``pipeline.demo.zoo.captions``) in several sentence
  templates, leads, word orders and synonyms, some attributes left out;
- ``llm_style_caption``: the shapes SmolLM2-135M's summaries take (measured on the pipeline's own
  summary prompt: 'The class is named "<Name>" and is depicted as ...', repeated attribute
  words, hyphenated sizes);
- real SmolLM2 summaries of train caption groups (``summary_groups`` and ``llm_summaries``, written
  once with the pipeline's own prompt, cached in ``sd_summaries.json``), paired with each
  image of their group;
- ``negative_text``: the negative prompt's words, trained as an unconditional prompt (they stand in
  for the empty prompt in caption dropout), so classifier-free guidance against them guides away
  from "nothing in particular" and not from an unknown direction.

Randomness only through the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.demo.zoo.captions import ATTRIBUTES, levels, measure

SUMMARIES_FILE = Path(__file__).with_name("sd_summaries.json")

# each attribute level: the caption's words first, then synonyms (mostly words of the zoo's vocabulary)
SYNONYMS: dict[str, tuple[tuple[str, ...], ...]] = {
    "thickness": (("thin strokes", "thin lines", "thin", "thin line strokes", "a thin stroke"),
                  ("medium strokes", "medium lines", "medium stroke", "strokes of medium width"),
                  ("thick strokes", "thick lines", "bold strokes", "thick", "bold lines", "a thick stroke")),
    "slant": (("slanted left", "leaning left", "slanted to the left", "tilted left"),
              ("upright", "straight", "straight upright", "not slanted"),
              ("slanted right", "leaning right", "slanted to the right", "tilted right")),
    "size": (("small size", "small", "a small digit", "small in size"),
             ("medium size", "medium", "medium sized", "of medium size"),
             ("large size", "large", "a large digit", "large in size")),
    "position": (("on the left", "left of center", "on the left side", "at the left"),
                 ("centered", "in the center", "center", "at the center"),
                 ("on the right", "right of center", "on the right side", "at the right")),
    "loops": (("no closed loop", "no loop", "no closed loops", "without a closed loop"),
              ("one closed loop", "a closed loop", "one loop", "a single closed loop", "a single loop"),
              ("two closed loops", "two loops", "two round loops")),
}
LEADS = ("a {name},", "a photo of {name},", "{name},", "an image of {name},", "a picture of a {name} with",
         "{name}:", "this image shows a {name},", "a scanned {name},", "a {name} on white paper,",
         "a simple {name} drawn with", "{name} -", "a low resolution photo of a {name},")
LLM_LEADS = ('The class is named "{title}" and is depicted as a',
             'The class is named "{title}" and is depicted as',
             "The {name} is depicted as a", "A representative {name} is", "This class, {name}, shows a",
             '"{title}" is a', "The image shows a {name} with")
CONNECTORS = (", ", ", ", " and ", " with ", "; ", " ")


def _phrases(lv: dict[str, int], rng: np.random.Generator, keep_min: int) -> list[str]:
    keys = list(ATTRIBUTES)
    n = int(rng.integers(keep_min, len(keys) + 1))
    chosen = [keys[i] for i in sorted(rng.choice(len(keys), size=n, replace=False))]
    if rng.random() < 0.5:
        rng.shuffle(chosen)
    return [str(rng.choice(SYNONYMS[k][lv[k]])) for k in chosen]


def _join(parts: list[str], rng: np.random.Generator) -> str:
    sep = str(rng.choice(CONNECTORS))
    return sep.join(parts)


def varied_caption(image: np.ndarray, class_name: str, rng: np.random.Generator) -> str:
    """The image's measured attributes in a random template, order and choice of synonyms."""
    lv = levels(measure(image))
    lead = str(rng.choice(LEADS)).replace("{name}", class_name)
    body = _join(_phrases(lv, rng, 0), rng)
    if rng.random() < 0.25:  # the class name last: "thin strokes, upright, a handwritten digit zero"
        return f"{body}, a {class_name}" if body else class_name
    return f"{lead} {body}".strip(" ,:-") if body else lead.strip(" ,:-")


def llm_style_caption(image: np.ndarray, class_name: str, rng: np.random.Generator) -> str:
    """The forms SmolLM2's summaries take: a named class 'depicted as' attribute words, some repeated."""
    lv = levels(measure(image))
    lead = str(rng.choice(LLM_LEADS)).replace("{title}", class_name.title()).replace("{name}", class_name)
    words = _phrases(lv, rng, 1)
    if rng.random() < 0.3:  # SmolLM2 repeats itself when it runs long
        words += words[: int(rng.integers(1, len(words) + 1))]
    tail = str(rng.choice(("", " image", " digit", f" {class_name}", " handwritten digit")))
    text = f"{lead} {_join(words, rng)}{tail}."
    if rng.random() < 0.3:
        text += f" The photo is a {class_name}."
    return text


def negative_text(negative_prompt: str, rng: np.random.Generator) -> str:
    """The negative prompt's words, some left out, in random order (an unconditional prompt in training)."""
    words = [w.strip() for w in negative_prompt.split(",") if w.strip()]
    n = int(rng.integers(1, len(words) + 1))
    pick = [words[i] for i in rng.permutation(len(words))[:n]]
    return ", ".join(pick)


def summary_groups(labels: np.ndarray, per_class: int, group_size: int, seed: int) -> list[list[int]]:
    """``per_class`` random groups of ``group_size`` train images of each class (indices), seeded."""
    rng = np.random.default_rng(seed)
    groups = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        groups += [sorted(int(i) for i in rng.choice(idx, size=group_size, replace=False))
                   for _ in range(per_class)]
    return groups


def llm_summaries(groups: list[list[int]], captions: list[str], names: list[str], labels: np.ndarray,
                  chat: Any, tokenizer: Any, max_tokens: int = 77, batch: int = 10) -> list[str]:
    """One text prototype per group, as EDITS's prototype stage writes it (our prompt, greedy, cleaned)."""
    from pipeline.edits import prompts

    out: list[str] = []
    for i in range(0, len(groups), batch):
        part = groups[i:i + batch]
        msgs = [prompts.summary_messages(names[int(labels[g[0]])], [captions[j] for j in g], max_tokens)
                for g in part]
        raw = chat.generate(msgs, max_tokens, 0.0, list(range(i, i + len(part))))
        out += [prompts.clean_generated(r, names[int(labels[g[0]])], max_tokens, tokenizer,
                                        fallback=captions[g[0]])
                for r, g in zip(raw, part)]
    return out


def load_check_texts(path: Path = SUMMARIES_FILE) -> dict[str, dict[str, Any]]:
    """The cached SmolLM2 prototypes of the check's clusters: key -> members, text (empty if none)."""
    return json.loads(path.read_text()).get("check", {}) if path.is_file() else {}


def train_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of a train split's images and labels: the summaries' member indices mean these images only."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(images, dtype=np.uint8), np.ascontiguousarray(labels, dtype=np.int64)):
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def load_summaries(fingerprint: str, path: Path = SUMMARIES_FILE) -> tuple[list[dict[str, Any]], str]:
    """The cached SmolLM2 summaries ``[{"members": [train indices], "text": ...}, ...]`` written for the train
    split of ``fingerprint`` (``train_fingerprint``), and why none when the list is empty."""
    if not path.is_file():
        return [], f"{path.name} is absent"
    cached = json.loads(path.read_text())
    if not cached.get("summaries"):
        return [], f"{path.name} holds none"
    if cached.get("train_fingerprint") != fingerprint:
        return [], (f"{path.name} was written for another train split (its members would name other images);"
                    " rewrite it with pipeline.demo.zoo.sd_check.write_summaries_file")
    return cached["summaries"], ""
