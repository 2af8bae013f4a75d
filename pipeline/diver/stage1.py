"""DIVER's stage 1: the built-in distiller (DM, dm.py, or gradient matching, gm.py) writes each set's
``images.pt`` + ImageFolder; a set given as ``diver.input`` is used as it is and only has to exist."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.config import Config
from pipeline.core.stages import Stage
from pipeline.diver.dm import run_dm
from pipeline.diver.gm import run_gm
from pipeline.diver.sets import DiverSet, log


def stage1_distiller(method: str) -> Callable[..., dict[str, Any]]:
    """The built-in stage-1 distiller ``diver.stage1.method`` names: DM (dm.py) or gradient matching
    (gm.py)."""
    return run_gm if method == "gm" else run_dm


def distil(cfg: Config, sets: list[DiverSet]) -> None:
    """Distil each built-in set from ``data.root`` (a finished one with the same settings is reused)."""
    dm = cfg.diver.stage1
    for s in sets:
        if s.built_in:
            stage1_distiller(dm.method)(cfg.data.root, s.input, dm, ipc=s.ipc, image_size=cfg.data.image_size,
                                        max_per_class=dm.max_per_class, classes=cfg.data.classes, log=log)


def stage1(cfg: Config, sets: list[DiverSet]) -> Stage:
    """The stage: a forced run distils the built-in sets afresh; ``diver.input`` (a set not built in) must
    exist."""
    given = [s.input for s in sets if not s.built_in]
    return Stage("stage1", lambda _force: distil(cfg, sets),
                 inputs={"diver.input": given[0]} if given else {},
                 outputs=[s.input for s in sets if s.built_in])
