"""Issue 12 (EDITS items 13-20): our steps against the authors' released code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.hygiene import clean_llm_output
from pipeline.edits import prompts

DINGO = "dingo, warrigal, warragal, Canis dingo"  # ImageNet's name table, synonyms comma-separated


# ---- 13. synonym class names -----------------------------------------------------------------


def test_any_synonym_counts_as_a_mention_and_only_the_first_is_prepended():
    assert prompts.synonyms(DINGO) == ["dingo", "warrigal", "warragal", "Canis dingo"]
    assert prompts.mentions("a warrigal trotting on red sand", DINGO)
    assert prompts.mentions("a Canis  dingo at dusk", DINGO)
    assert not prompts.mentions("a wild dog at dusk", DINGO)
    assert prompts.ensure_class_name("a warrigal on sand", DINGO) == "a warrigal on sand"
    assert prompts.ensure_class_name("a wild dog at dusk", DINGO) == "dingo: a wild dog at dusk"
    out = prompts.clean_generated("A wild dog at dusk.", DINGO, max_tokens=77)
    assert out == "dingo: A wild dog at dusk."
    assert prompts.clean_generated("  ", DINGO, max_tokens=77) == "dingo"  # fallback: the first name only
    assert prompts.caption_prefix(DINGO) == "a photo of dingo,"


def test_instructions_say_that_one_of_the_names_is_enough():
    cap = prompts.caption_instruction(DINGO)
    assert "use one of these exact names" in cap and cap.endswith(f'Class name: "{DINGO}"')
    user = prompts.summary_messages(DINGO, ["a dingo"], 77)[1]["content"]
    assert "keep one of the exact class names" in user


# ---- 17. LLM output cleanup drops preambles ------------------------------------------------------


@pytest.mark.parametrize("raw", [
    "Here is a representative description of the beagle:\n\nA beagle with a tricolour coat sniffs the grass.",
    "Sure! Here's a representative description: A beagle with a tricolour coat sniffs the grass.",
    "Certainly.\n\nA beagle with a tricolour coat sniffs the grass.",
    "assistant: Sure, here is the description of \"beagle\":\n**A beagle with a tricolour coat sniffs the grass.**",
])
def test_clean_output_drops_the_preamble_and_keeps_the_description(raw):
    assert clean_llm_output(raw) == "A beagle with a tricolour coat sniffs the grass."


def test_clean_output_keeps_names_that_look_like_fillers():
    assert clean_llm_output("Great Dane lying on a sofa") == "Great Dane lying on a sofa"
    assert clean_llm_output("This is a beagle: small and tricolour") == "This is a beagle: small and tricolour"


# ---- 18. the LLM seeds every row with its own seed -------------------------------------------------


def test_sampled_text_depends_on_the_row_seed_not_on_the_batch(zoo_dir):
    from actors.llm import TransformersChat

    chat = TransformersChat("zoo:llm", device="cpu", pad_to=64)
    a = [{"role": "user", "content": "Describe a tench."}]
    b = [{"role": "user", "content": "Describe a dingo in the desert."}]
    together = chat.generate([a, b], 12, temperature=1.0, seeds=[1, 2])
    alone_b = chat.generate([b], 12, temperature=1.0, seeds=[2])
    alone_a = chat.generate([a], 12, temperature=1.0, seeds=[1])
    assert together == [alone_a[0], alone_b[0]]
    assert chat.generate([b], 12, temperature=1.0, seeds=[3]) != alone_b  # it does sample
    state = torch.random.get_rng_state()
    chat.generate([a], 4, temperature=1.0, seeds=[5])
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone
