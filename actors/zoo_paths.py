"""Where the local model zoo lives: its folder, its roles, and whether a role is built."""

from __future__ import annotations

import os
from pathlib import Path

ZOO_VERSION = "v1"
ROLES = ("tokenizer", "clip", "vlm", "llm", "vae", "dit", "sd", "smollm2", "demo_dit", "demo_vlm", "demo_clip",
         "demo_sd")
MARKER = ".complete"


def default_zoo_dir() -> Path:
    """``$SEMDISTILL_ZOO_DIR`` or the user cache dir (``~/.cache/semdistill/zoo-v1``)."""
    env = os.environ.get("SEMDISTILL_ZOO_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("semdistill")) / f"zoo-{ZOO_VERSION}"


def zoo_path(role: str, zoo_dir: str | os.PathLike | None = None) -> Path:
    if role not in ROLES:
        raise KeyError(f"unknown zoo role {role!r}; known: {', '.join(ROLES)}")
    return Path(zoo_dir or default_zoo_dir()) / role


def is_built(role: str, zoo_dir: str | os.PathLike | None = None) -> bool:
    return (zoo_path(role, zoo_dir) / MARKER).exists()
