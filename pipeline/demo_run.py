"""``semdistill demo``: the whole system offline on a laptop, step by step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors import zoo


def prepare_demo(out: Path) -> dict[str, Any]:
    """Demo digits under ``out/data`` and the local zoo; both are skipped when present."""
    from pipeline.demo_data import write_demo_dataset

    data_dir = out / "data"
    if not (data_dir / "dataset.json").exists():
        write_demo_dataset(data_dir)
    print(f"demo data: {data_dir}")
    print(f"local model zoo: {zoo.default_zoo_dir()}")
    zoo.build_zoo()
    return {"data": str(data_dir), "zoo": str(zoo.default_zoo_dir())}


def run_demo(out: Path, quick: bool = False) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    return prepare_demo(out)
