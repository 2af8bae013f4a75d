"""The driver (``semdistill run``) killed with SIGKILL in the middle of each stage.

Each case starts ``semdistill run`` in its own process group, watches the stage's own progress
(its state file, then its first output), kills the whole group with ``os.killpg`` and re-runs.
The re-run must keep what had finished (earlier stages' state files untouched), duplicate
nothing, pass ``semdistill verify`` and give images byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipeline.checks.verify import verify_set
from pipeline.core.write import read_manifest
from pipeline.errors import DataError
from tests.run_configs import diver_config, edits_config

EDITS_STAGES = ("caption", "embed", "cluster", "finetune", "prototype", "generate")
REPO = Path(__file__).resolve().parents[1]


# the killed run's driver sleeps after each output it writes, so the kill lands between two outputs even in a
# stage that writes them all within milliseconds (cluster); it is in no stage key, the re-run goes at full
# speed
PAUSE = {"debug": {"pause_after_write_s": 0.5}}


def start_run(cfg: dict, where: Path) -> subprocess.Popen:
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{Path(cfg['output']['dir']).name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    code = "import sys; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    with open(_log(path), "ab") as log:  # each run's output, appended (the killed run, then the re-run)
        return subprocess.Popen([sys.executable, "-c", code, "run", str(path)], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _log(config_path: Path) -> Path:
    return config_path.with_suffix(".log")


def _tail(proc: subprocess.Popen) -> str:
    return _log(Path(proc.args[-1])).read_text(errors="replace")[-3000:]


def run(cfg: dict, where: Path, timeout: float = 900) -> None:
    proc = start_run(cfg, where)
    try:
        assert proc.wait(timeout) == 0, f"semdistill run {cfg['output']['dir']} failed:\n{_tail(proc)}"
    finally:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def kill_when(cfg: dict, where: Path, ready: Callable[[], bool], timeout: float = 900) -> None:
    """Start the run, SIGKILL its process group as soon as ``ready()``; fails if it finished first."""
    proc = start_run(cfg, where)
    t0 = time.time()
    try:
        while not ready():
            assert proc.poll() is None, f"the run ended before the kill point:\n{_tail(proc)}"
            assert time.time() - t0 < timeout, "the kill point never came"
            time.sleep(0.05)
    finally:
        _kill_group(proc)


# where each EDITS stage writes the outputs that count as done (under artefacts/): a caption part, a class's
# features, a class's cluster file (written after its buffer), a cluster's prototype latent
STAGE_OUTPUTS = {"caption": ["captions"], "embed": ["features"], "cluster": ["clusters"],
                 "prototype": ["prototypes/latents"]}


SET_STAGES = {"generate": "distilled", "recover": "diver"}  # stages whose outputs are a manifest's images


def _newer_than(folders: list[Path], ref: Path) -> bool:
    """A finished output file (not a temp file) in ``folders`` written after ``ref``."""
    t = ref.stat().st_mtime_ns
    for p in (p for f in folders if f.is_dir() for p in f.rglob("*")):
        try:
            if (p.is_file() and not p.name.startswith(".") and not p.name.endswith(".tmp")
                    and p.stat().st_mtime_ns > t):
                return True
        except FileNotFoundError:  # a temp file renamed meanwhile
            continue
    return False


def edits_stage_started_work(out: Path, stage: str) -> Callable[[], bool]:
    """The stage has begun (state file, not complete) and written something since; fails at once if the
    stage finished before the kill point was seen."""
    def ready() -> bool:
        st = out / "artefacts" / f"{stage}.state.json"
        try:
            info = json.loads(st.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        assert info.get("complete") is False, f"{stage} finished before the kill point was seen"
        return _newer_than([out / "artefacts" / f for f in STAGE_OUTPUTS.get(stage, [])], st)
    return ready


def ray_train_checkpoint(out: Path) -> Callable[[], bool]:
    """Fine-tuning is under way and Ray Train has written its first whole checkpoint (renamed in)."""
    def ready() -> bool:
        try:
            info = json.loads((out / "artefacts" / "finetune.state.json").read_text())
        except (OSError, json.JSONDecodeError):
            return False
        assert info.get("complete") is False, "finetune finished before the kill point was seen"
        return any((out / "artefacts" / "ray_train").glob("finetune-*/checkpoint_*"))
    return ready


def manifest_has_some(folder: Path, n_total: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return 0 < len(json.loads((folder / "manifest.json").read_text())["images"]) < n_total
        except (OSError, json.JSONDecodeError, KeyError):
            return False
    return ready


def any_file(folder: Path) -> Callable[[], bool]:
    return lambda: folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def images(folder: Path) -> dict[str, bytes]:
    man = read_manifest(folder)
    keys = [e["key"] for e in man["images"]]
    assert len(keys) == len(set(keys)), "a duplicated manifest entry"
    return {e["key"]: (folder / e["file"]).read_bytes() for e in man["images"]}


def stage_files(out: Path, stage: str) -> dict[str, int]:
    """The stage's finished per-item output files: path -> mtime (an image set's: those in its manifest)."""
    if stage in SET_STAGES:
        try:
            man = read_manifest(out / SET_STAGES[stage])
        except DataError:  # no manifest yet
            return {}
        return {f"{SET_STAGES[stage]}/{e['file']}": (out / SET_STAGES[stage] / e["file"]).stat().st_mtime_ns
                for e in man["images"]}
    folders = [out / "artefacts" / f for f in STAGE_OUTPUTS.get(stage, [])]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for f in folders if f.is_dir() for p in f.rglob("*")
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".tmp")}


def finished_states(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "artefacts").glob("*.state.json")
            if json.loads(p.read_text()).get("complete")}


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """Uninterrupted runs, made once per module on first use: name -> output folder."""
    made: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("refs")

    def get(name: str, cfg_of: Callable[[Path], dict]) -> Path:
        if name not in made:
            made[name] = root / name
            run(cfg_of(made[name]), root)
        return made[name]
    return get


CASES = [pytest.param(s, marks=pytest.mark.slow) for s in EDITS_STAGES] + [
    pytest.param("recover", marks=pytest.mark.slow), pytest.param("evaluation", marks=pytest.mark.slow)]


@pytest.mark.parametrize("stage", CASES)
def test_sigkill_mid_stage_then_rerun(stage, zoo_dir, demo_root, stage1_pt, refs, tmp_path):
    out = tmp_path / "run"
    if stage in EDITS_STAGES:
        def cfg_of(o: Path) -> dict:
            return edits_config(demo_root, zoo_dir, o)
        ready, sets = edits_stage_started_work(out, stage), ["distilled"]
        if stage == "generate":
            ready = manifest_has_some(out / "distilled", 4)
        if stage == "finetune":
            ready = ray_train_checkpoint(out)
    else:
        def cfg_of(o: Path) -> dict:
            return diver_config(stage1_pt, zoo_dir, o, demo_root if stage == "evaluation" else None)
        sets = ["diver"]
        ready = manifest_has_some(out / "diver", 6) if stage == "recover" else any_file(out / "ray_train")
    ref = refs(f"{'edits' if stage in EDITS_STAGES else stage}", cfg_of)
    kill_when(cfg_of(out) | PAUSE, tmp_path, ready)
    kept = finished_states(out) if stage in EDITS_STAGES else {}
    partial = stage_files(out, stage)  # what the killed stage had finished
    lock = json.loads((out / ".semdistill.lock").read_text())  # the dead driver's lock is left behind
    assert lock["pid"] > 0
    run(cfg_of(out), tmp_path)  # the re-run takes the stale lock over
    assert not (out / ".semdistill.lock").exists()
    after = finished_states(out) if stage in EDITS_STAGES else {}
    assert {k: after.get(k) for k in kept} == kept  # finished stages were kept, not redone
    now = stage_files(out, stage)
    assert {k: now.get(k) for k in partial} == partial  # the killed stage's finished outputs were kept too
    for s in sets:
        rep = verify_set(out / s)
        assert rep["ok"], rep["problems"]
        got, want = images(out / s), images(ref / s)
        assert got == want  # byte-identical, nothing lost or duplicated
    assert not [p for p in out.rglob("*.tmp")]
    if stage == "evaluation":
        def accs(o: Path) -> list:
            return [{k: v for k,
                     v in r.items() if "acc" in k} for r in json.loads((o / "results.json").read_text())]
        assert accs(out) == accs(ref)
    print(json.dumps({"stage": stage, "faults_injected": 1, "runs_resumed": 1, "files_compared": len(want),
                      "stage_files_kept": len(partial), "files_lost": len(set(want) - set(got))}))
