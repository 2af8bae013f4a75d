"""`semdistill submit` (cluster.submit) runs the demo EDITS config on a real Ray head.

The test is marked ``cluster`` (run with ``pytest -m cluster``): it starts its own
``ray start --head --block`` on free ports with a private temp dir and token auth, submits
``configs/demo_edits.yaml`` with ``semdistill submit``, and stops that head by its process id
(never ``ray stop``, which would stop every Ray instance on the machine); the fixture is in conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.cluster
def test_submit_demo_edits_to_a_local_head(ray_head, zoo_dir, demo_root, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline.cli", "submit", str(REPO / "configs" / "demo_edits.yaml"),
           f"data.root={demo_root / 'train'}", f"data.val_root={demo_root / 'val'}",
           f"data.class_names={demo_root / 'class_names.json'}", f"output.dir={out}", "data.max_per_class=12",
           "models.llm=zoo:llm", "edits.finetune.enabled=false", "edits.num_inference_steps=10",
           "--address", ray_head["address"]]
    env = {**ray_head["env"], "SEMDISTILL_ZOO_DIR": str(zoo_dir), "HF_HUB_OFFLINE": "1",
           "SEMDISTILL_PROGRESS": "0"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=str(tmp_path),
                       check=False)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-4000:]
    assert "submitted job semdistill-demo_edits-edits-" in r.stdout
    assert "ray job logs --address" in r.stdout and ": SUCCEEDED" in r.stdout
    manifest = json.loads((out / "distilled" / "manifest.json").read_text())
    assert (out / "config.yaml").is_file()
    images = list((out / "distilled").rglob("*.png"))
    assert len(images) == 10 * 2, manifest  # 10 digit classes x IPC 2
    # the head is ours: it is still alive until the fixture stops it by pid
    assert os.path.exists(f"/proc/{ray_head['pid']}")
