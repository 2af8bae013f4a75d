"""The sets one DIVER run recovers: one per IPC of the built-in stage-1 distiller, else ``diver.input``.

Layout: with the built-in distiller, ``<output.dir>/ipc<K>/{stage1,diver,side_by_side.png}``; with
``diver.input``, ``<output.dir>/{diver,side_by_side.png}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.diver.inputs import Stage1Set
from pipeline.errors import ConfigError


def log(msg: str) -> None:
    """One line of DIVER's output, shown at once."""
    print(msg, flush=True)


@dataclass(frozen=True)
class DiverSet:
    """One set to recover: where its stage-1 images are and where its outputs go."""

    name: str  # ``ipc<K>`` or ``input``
    ipc: int | None  # the built-in distiller's images per class (None for diver.input)
    base: Path  # the set's output folder
    input: Path  # its stage-1 set
    format: str  # ``diver.input_format`` (``pt`` for the built-in distiller's images.pt)
    built_in: bool  # made by the built-in distiller (else diver.input, read as given)

    @property
    def recovered(self) -> Path:
        """The recovered set: ImageFolder + ``manifest.json``."""
        return self.base / "diver"

@dataclass(frozen=True)
class LoadedSet:
    """A set with its stage-1 images read: what the recovery and the report of the set need."""

    set: DiverSet
    data: Stage1Set  # pixels in [0, 1], labels, class ids, sources
    keys: list[str]  # ``c<class>_i<index>`` per image, the manifest key
    dit_classes: list[int]  # the DiT class index per image
    settings: dict[str, Any]  # the set's manifest settings (a change never resumes its old images)
    fingerprint: str  # sha256 of the input pixels, labels and class ids
    expected_classes: int | None  # the class count the actors must find (None: the DiT's own, checked here)


def plan_sets(cfg: Config, out: Path) -> list[DiverSet]:
    """The sets of this run under ``out``; a config with neither a stage-1 distiller nor an input is an
    error."""
    d = cfg.diver
    if d.stage1 is not None:
        if not cfg.data.root:
            raise ConfigError("diver.stage1 (built-in DM) needs data.root, the real training set")
        return [DiverSet(f"ipc{k}", k, out / f"ipc{k}", out / f"ipc{k}" / "stage1", "pt", True)
                for k in d.stage1.ipcs or [d.stage1.ipc]]
    if not d.input:
        raise ConfigError("set diver.input (a distilled set: ImageFolder, .pt, or images_best.pt folder) "
                          "or diver.stage1 (run the built-in DM first)")
    return [DiverSet("input", None, out, Path(d.input), d.input_format, False)]
