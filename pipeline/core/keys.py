"""Settings keys: a stable hash of the settings a stage ran with, and ``--from-stage`` checks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from pipeline.errors import ConfigError


def settings_hash(obj: Any) -> str:
    """A short, stable hash of JSON-able settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_index(stages: Sequence[str], from_stage: str | None) -> int | None:
    """Position of ``from_stage`` in ``stages`` (``None`` for none); an unknown name is a ``ConfigError``."""
    if from_stage is None:
        return None
    if from_stage not in stages:
        raise ConfigError(f"--from-stage must be one of {', '.join(stages)}; got {from_stage!r}")
    return list(stages).index(from_stage)
