"""Captions, class names and LLM output are data, never instructions.

- ``quote_for_prompt``: one line, control and chat-template tokens removed, length-capped,
  inside double quotes, so a caption cannot end the quote, open a new chat turn, or
  smuggle in a newline with "Ignore the above".
- ``fill_template``: one-pass substitution of ``{name}`` placeholders with quoted values.
  It never calls ``str.format`` on text that contains user data, so braces in a caption
  are inert and ``{0.__class__}``-style lookups are impossible.
- ``clean_llm_output``: strip template tokens, role labels, chatty preambles ("Here is a
  description of the beagle:"), markdown and wrapping quotes, keep the first answer line, cap it by tokens
  (with the tokenizer that will consume it) and characters.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

# chat-template / special tokens of common model families: <|im_start|>, <|eot_id|>, </s>, [INST], <<SYS>> ...
_SPECIAL = re.compile(
    r"<\|[^|<>]{0,40}\|>|</?s>|<unk>|<pad>|\[/?INST\]|<</?SYS>>|<start_of_turn>|<end_of_turn>|<image>",
    re.IGNORECASE,
)
_ROLE = re.compile(r"^\s*(?:assistant|system|user|answer|output|description|caption|text "
                   r"prototype)\s*(?:[:\-]\s*|$)",
                   re.IGNORECASE)
# a chatty lead-in before the answer: "Here is a representative description of the beagle:", "Sure! ..."
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok|absolutely)(?:\s*[!,.:]+\s*|\s+(?=here\b)))*"
    r"(?:(?:here(?:'s|\u2019s| is| are)|below is|the following is)\b[^:\n]{0,160}:)?\s*",
    re.IGNORECASE,
)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"


def _visible(text: str) -> str:
    """Drop control/format characters (zero-width, bidi overrides); whitespace becomes spaces."""
    out = []
    for ch in str(text):
        if ch in "\t\n\r\v\f" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        else:
            out.append(ch)
    return "".join(out)


def one_line(text: str) -> str:
    """Special tokens and control characters removed, whitespace collapsed to single spaces."""
    return " ".join(_visible(_SPECIAL.sub(" ", unicodedata.normalize("NFC", str(text)))).split())


def truncate_words(text: str, max_chars: int) -> str:
    """At most ``max_chars`` characters, cut at a word boundary when one is near."""
    if max_chars <= 0:
        return ""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    if space >= max_chars // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-")


def quote_for_prompt(text: str, max_chars: int = 300) -> str:
    """``text`` as a safe quoted literal for an instruction: ``"a red fox in snow"``.

    Double quotes inside become single quotes, so the literal cannot be closed early.
    """
    body = truncate_words(one_line(text).replace('"', "'").replace("\u201c", "'").replace("\u201d", "'"),
                          max_chars)
    return f'"{body}"'


def fill_template(template: str, max_chars: int = 300, **values: Any) -> str:
    """Replace each ``{name}`` in ``template`` with ``quote_for_prompt(values[name])``.

    Lists become a numbered block of quoted lines. ``{{`` and ``}}`` stay literal braces.
    A placeholder without a value is an error (a typo in a custom prompt must not pass silently).
    """
    parts = re.split(r"(\{\{|\}\})", template)  # keep escaped braces out of the substitution
    missing = sorted({m for p in parts for m in _PLACEHOLDER.findall(p) if m not in values})
    if missing:
        raise KeyError(f"prompt template has placeholders without values: {missing}")

    def one(match: re.Match[str]) -> str:
        v = values[match.group(1)]
        if isinstance(v, (list, tuple)):
            return "\n".join(f"{i}. {quote_for_prompt(x, max_chars)}" for i, x in enumerate(v, 1))
        return quote_for_prompt(v, max_chars)

    return "".join(p[0] if p in ("{{", "}}") else _PLACEHOLDER.sub(one, p) for p in parts)


def clean_llm_output(text: str, max_tokens: int | None = None, max_chars: int | None = 1000,
                     tokenizer: Any | None = None, fallback: str = "") -> str:
    """A generated description as one clean line, within limits; ``fallback`` when nothing is left.

    ``max_tokens`` counts with ``tokenizer`` when given (e.g. the CLIP tokenizer of the
    generator, whose limit is 77 including BOS/EOS), otherwise whitespace words.
    """
    t = _SPECIAL.sub("\n", unicodedata.normalize("NFC", str(text)))
    t = re.sub(r"```[a-zA-Z]*", "\n", t)
    # first non-empty paragraph that is not only a role label
    lines = [ln for ln in (x.strip() for x in t.splitlines()) if ln]
    lines = [_ROLE.sub("", _ROLE.sub("", ln)).strip() for ln in lines]  # "assistant: Description: ..."
    lines = [ln for ln in (strip_preamble(ln) for ln in lines) if ln]
    t = one_line(lines[0] if lines else "")
    t = re.sub(r"(?<!\w)(\*{1,3}|_{1,3})(?!\s)([^*_]+?)(?<!\s)\1(?!\w)", r"\2", t)  # **bold**, _italic_
    t = re.sub(r"^(?:[-*#>]+|\d+[.)])\s+", "", t)  # markdown bullet / heading / numbering
    t = t.strip()
    while len(t) >= 2 and t[0] in _QUOTES and t[-1] in _QUOTES:
        t = t[1:-1].strip()
    t = t.strip(_QUOTES + " ")
    if max_tokens is not None:
        t = truncate_tokens(t, max_tokens, tokenizer)
    if max_chars is not None:
        t = truncate_words(t, max_chars)
    return t or one_line(fallback)


def strip_preamble(line: str) -> str:
    """``line`` without a lead-in such as "Sure! Here is a description of the beagle:" (empty if only
    that)."""
    out = _PREAMBLE.sub("", line, count=1).strip()
    return _ROLE.sub("", out).strip()


def truncate_tokens(text: str, max_tokens: int, tokenizer: Any | None = None) -> str:
    """At most ``max_tokens`` tokens: the tokenizer's (special tokens included) or whitespace words."""
    if tokenizer is None:
        words = text.split()
        return " ".join(words[:max_tokens]).rstrip(" ,;:-") if len(words) > max_tokens else text
    if len(tokenizer(text)["input_ids"]) <= max_tokens:
        return text
    words = text.split()
    lo, hi = 0, len(words)  # longest word prefix that fits: keeps whole words
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer(" ".join(words[:mid]))["input_ids"]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo]).rstrip(" ,;:-")

