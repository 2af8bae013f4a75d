"""Where the local model zoo lives: its folder, its roles, and whether a role is built."""

from __future__ import annotations

import os
from pathlib import Path

ZOO_VERSION = "v1"
ROLES = ("tokenizer", "clip", "vlm", "llava", "llm", "vae", "dit", "sd", "smollm2", "demo_dit", "demo_vlm",
         "demo_clip", "demo_sd")
MARKER = ".complete"


def default_zoo_dir() -> Path:
    """``$SEMDISTILL_ZOO_DIR`` or the user cache dir (``~/.cache/semdistill/zoo-v1``)."""
    env = os.environ.get("SEMDISTILL_ZOO_DIR")
    if env:
        return Path(env)
    # start-up: platformdirs (not loaded when this module is imported)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("semdistill")) / f"zoo-{ZOO_VERSION}"


def zoo_path(role: str, zoo_dir: str | os.PathLike | None = None) -> Path:
    if role not in ROLES:
        raise KeyError(f"unknown zoo role {role!r}; known: {', '.join(ROLES)}")
    return Path(zoo_dir or default_zoo_dir()) / role


# The marker of a demo role trained into the zoo by hand (``zoo train-demo-dit``): kept, never replaced.
TRAINED_HERE = f"{ZOO_VERSION} trained here"


def marker_text(role: str) -> str:
    """What a freshly built role's marker says: the zoo version, and for a shipped demo role the
    digest of its ``SHA256SUMS`` lines, so a copy of older shipped weights reads as stale."""
    from actors import shipped

    if role in shipped.SHIPPED_ROLES:
        return f"{ZOO_VERSION} shipped {shipped.role_digest(role)}"
    return ZOO_VERSION


def zoo_weights_identity(ref: str) -> str | None:
    """What a ``zoo:<role>`` reference loads, as a stage key records it: the zoo version and, for a shipped
    demo role, the digest of its shipped weights (so retrained demo weights redo the stages that used
    them, where the reference alone would not change); None for hub ids and local paths."""
    role = ref[len("zoo:"):] if ref.startswith("zoo:") else None
    return marker_text(role) if role in ROLES else None


def is_built(role: str, zoo_dir: str | os.PathLike | None = None) -> bool:
    """The role's folder is complete and current (a shipped role: a copy of the weights shipped now)."""
    from actors import shipped

    marker = zoo_path(role, zoo_dir) / MARKER
    if not marker.is_file():
        return False
    if role not in shipped.SHIPPED_ROLES:
        return True
    return marker.read_text() in (marker_text(role), TRAINED_HERE)
