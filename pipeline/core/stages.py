"""A method's stages, run in order by one runner: each stage is skipped, reused when an earlier run left it
up to date, or run, and forced (its outputs cleared and remade) from ``--from-stage`` on.

Both methods describe their stages with ``Stage`` and run them with ``StageRunner``: EDITS records each
stage's settings key in a state file and reuses a stage whose key is unchanged; DIVER's stages resume image
by image inside themselves (manifests), so they have nothing to reuse at the stage level.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.keys import stage_index
from pipeline.errors import DataError


@dataclass(frozen=True)
class Stage:
    """One stage: what it is called, what its outputs depend on, what it reads and writes, how it resumes."""

    name: str  # as ``--from-stage`` names it
    # does the stage's work; its argument says the run is forced; returns its result
    run: Callable[[bool], Any]
    key: Mapping[str, Any] | None = None  # the settings its outputs depend on (recorded by ``record``)
    # what must exist before it runs, by the setting naming it
    inputs: Mapping[str, Path] = field(default_factory=dict)
    outputs: Sequence[Path] = ()  # removed before a forced run (a stage that keeps caches clears its own)
    reuse: Callable[[], Any] | None = None  # an earlier run's result when that run is up to date, else None
    # records a finished run, so that ``reuse`` finds it next time
    record: Callable[[Any], None] | None = None
    skip: str | None = None  # why the stage does not run this time, if it does not


class StageRunner:
    """Runs the stages of one method in order, keeping each stage's result and wall time.

    ``order`` names every stage in execution order, so that ``from_stage`` forces that stage and every later
    one; ``redo_all`` forces every stage when no ``from_stage`` is given (``output.overwrite``). ``say``, when
    given, gets one line per stage: running, done, or reused.
    """

    def __init__(self, order: Sequence[str], from_stage: str | None = None, *, redo_all: bool = False,
                 say: Callable[[str], None] | None = None) -> None:
        start = stage_index(order, from_stage)
        self.order = tuple(order)
        self.start = 0 if redo_all and start is None else start
        self.say = say or (lambda _line: None)
        self.results: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}

    def forced(self, name: str) -> bool:
        """Whether stage ``name`` is re-run from scratch (``from_stage`` or an earlier one)."""
        return self.start is not None and self.order.index(name) >= self.start

    def __call__(self, stage: Stage) -> Any:
        """Run ``stage`` (or skip it, or reuse it); returns its result."""
        if stage.skip:
            self.results[stage.name] = {"skipped": stage.skip}
            return self.results[stage.name]
        force = self.forced(stage.name)
        if not force and stage.reuse is not None and (earlier := stage.reuse()) is not None:
            self.say(f"{stage.name}: up to date, reusing artefacts")
            self.results[stage.name], self.seconds[stage.name] = earlier, 0.0
            return earlier
        for setting, path in stage.inputs.items():
            if not Path(path).exists():
                raise DataError(f"{setting} not found: {path}")
        if force:
            for path in stage.outputs:
                _remove(Path(path))
        t0 = time.perf_counter()
        self.say(f"{stage.name}: running")
        result = stage.run(force)
        self.seconds[stage.name] = time.perf_counter() - t0
        if stage.record is not None:
            stage.record(result)
        self.results[stage.name] = result
        self.say(f"{stage.name}: done in {round(self.seconds[stage.name], 2):.1f} s")
        return result


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
