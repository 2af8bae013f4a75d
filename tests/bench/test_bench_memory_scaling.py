"""Scale by streaming and resume after a kill: the EDITS front half (caption, embed, cluster).

Small sizes for the default run; ``bench/memory_scaling.py`` gives the real figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import memory_scaling as ms


class Killed(RuntimeError):
    """Stands in for the driver being killed mid-stage."""


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


def _no_temp_files(out: Path) -> None:
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".")
                 and (".tmp" in p.name or p.suffix == ".tmp")]
    assert leftovers == [], leftovers


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return ms.make_synthetic_dataset(tmp_path_factory.mktemp("scale") / "data", 36, n_classes=3)


def test_synthetic_dataset_layout(tmp_path):
    root = ms.make_synthetic_dataset(tmp_path / "d", 7, n_classes=3, size=16)
    counts = {d.name: len(list(d.glob("*.png"))) for d in sorted(root.iterdir())}
    assert counts == {"c000": 3, "c001": 2, "c002": 2}
    from PIL import Image

    a, b = (Image.open(root / "c000" / f) for f in ("000000.png", "000001.png"))
    assert a.size == (16, 16) and a.tobytes() != b.tobytes()


def test_resume_after_kills_skips_finished_work(zoo_dir, ray_local, small_data, tmp_path, monkeypatch):
    """Kill the run in each front-half stage in turn; every re-run keeps finished work and does the rest."""
    from pipeline.core.read import read_parquet
    from pipeline.edits import buffer, caption, embed

    out = tmp_path / "run"
    cfg = ms.front_half_config(small_data, out)
    art = out / "artefacts"
    quiet = lambda _s: None

    def die_after(module, name: str, n_ok: int) -> None:
        real = getattr(module, name)
        calls = {"n": 0}

        def wrapper(*a, **kw):
            if calls["n"] >= n_ok:
                raise Killed(f"killed in {module.__name__}.{name}")
            calls["n"] += 1
            return real(*a, **kw)

        monkeypatch.setattr(module, name, wrapper)

    # 1. killed at the end of caption: every caption is in the cache, the stage is not marked complete
    die_after(caption, "load_captions", 0)
    with pytest.raises(Killed):
        ms.run_front_half(cfg, log=quiet)
    monkeypatch.undo()
    assert json.loads((art / "caption.state.json").read_text())["complete"] is False
    assert sum(len(read_parquet(p)["path"]) for p in _parts(art / "captions")) == 36

    # 2. killed in embed after one class was written
    die_after(embed, "_write_class", 1)
    with pytest.raises(Killed):
        ms.run_front_half(cfg, log=quiet)
    monkeypatch.undo()
    cap = json.loads((art / "caption.state.json").read_text())
    assert cap["complete"] is True and cap["info"]["captioned_now"] == 0 and cap["info"]["cached"] == 36
    first = sorted(p.name for p in (art / "features").glob("*.parquet"))
    assert len(first) == 1
    first_bytes = (art / "features" / first[0]).read_bytes()

    # 3. killed in cluster after one class was saved
    die_after(buffer, "_save_class", 1)
    with pytest.raises(Killed):
        ms.run_front_half(cfg, log=quiet)
    monkeypatch.undo()
    emb = json.loads((art / "embed.state.json").read_text())
    assert emb["complete"] is True and emb["info"]["embedded_now"] == 24  # the two classes left, not three
    assert (art / "features" / first[0]).read_bytes() == first_bytes  # finished work untouched
    done = sorted(p.name for p in (art / "clusters").glob("*.json"))
    assert len(done) == 1 and not (art / "clusters.json").exists()
    done_bytes = (art / "clusters" / done[0]).read_bytes()

    # 4. the re-run finishes the rest and redoes nothing
    info = ms.run_front_half(cfg, log=quiet)
    assert info["caption"]["reused"] and info["embed"]["reused"]
    assert info["cluster"]["clustered_now"] == 2 and info["cluster"]["classes"] == 3
    assert info["cluster"]["clusters"] == 3 * cfg.edits.ipc
    assert (art / "clusters" / done[0]).read_bytes() == done_bytes
    rows = [p for part in _parts(art / "captions") for p in read_parquet(part)["path"]]
    assert len(rows) == len(set(rows)) == 36  # no duplicate captions
    assert sorted(p.name for p in (art / "buffer").glob("*.parquet")) == [
        "c000.parquet", "c001.parquet", "c002.parquet"]
    _no_temp_files(out)
    again = ms.run_front_half(cfg, log=quiet)  # a fifth run is a no-op
    assert all(again[s].get("reused") for s in ms.FRONT_HALF)


def test_front_half_memory_is_flat_in_dataset_size(zoo_dir, ray_local, tmp_path):
    """N and 8N images in this process: driver and largest Ray worker peak RSS within 1.3x."""
    peaks = []
    for n in (24, 192):
        data = ms.make_synthetic_dataset(tmp_path / f"d{n}", n, n_classes=3)
        cfg = ms.front_half_config(data, tmp_path / f"o{n}")
        sampler = ms.RssSampler(interval_s=0.1)
        sampler.start()
        info = ms.run_front_half(cfg, log=lambda _s: None)
        sampler.stop()
        assert info["caption"]["captioned"] == n and info["cluster"]["clusters"] == 3 * cfg.edits.ipc
        peaks.append((sampler.peak_self, sampler.worker_peak()))
    (d1, w1), (d8, w8) = peaks
    assert d1 > 0 and w1 > 0
    assert d8 / d1 <= 1.3, f"driver peak grew {d8 / d1:.2f}x for 8x the images"
    assert w8 / w1 <= 1.3, f"largest worker peak grew {w8 / w1:.2f}x for 8x the images"


@pytest.mark.slow
def test_memory_scaling_bench_prints_ratio(capsys):
    assert ms.main(["--images", "100"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("ratio: ") and float(last.split()[1]) <= 1.3
