"""ray_cluster.yaml is a valid cluster-launcher file, and `semdistill submit` runs on a real Ray head.

The end-to-end test is marked ``cluster`` (run with ``pytest -m cluster``): it starts its own
``ray start --head --block`` on free ports with a private temp dir and token auth, submits
``configs/demo_edits.yaml`` with ``semdistill submit``, and stops that head by its process id
(never ``ray stop``, which would stop every Ray instance on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_cluster_yaml_is_valid_for_the_launcher():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    full = prepare_config(raw)
    validate_config(full)  # Ray's own schema: raises on unknown or missing fields
    types = full["available_node_types"]
    assert full["head_node_type"] == "head" and "gpu_worker" in types
    assert types["head"]["resources"] == {"GPU": 0}
    assert types["gpu_worker"]["max_workers"] >= 1
    # the nodes install the project with the gpu and vllm extras, which pyproject.toml defines
    from cluster.runtime_env import project_extras

    install = [c for c in raw["setup_commands"] if "pip install -e" in c]
    assert install and '".[gpu,vllm]"' in install[0]
    assert {"gpu", "vllm"} <= set(project_extras())
    # token auth on every node, the same way
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token" in c and "HF_HOME=" in c for c in raw[key])
    assert ".venv" in raw["rsync_exclude"] and "data" in raw["rsync_exclude"]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _wait_http(url: str, timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError as err:  # 401 means it is up (token auth); HTTPError and URLError are OSErrors
            if getattr(err, "code", None) in (401, 403):
                return
            time.sleep(1)
    raise TimeoutError(f"no Ray dashboard at {url} after {timeout_s} s")


def _our_leftovers(temp_dir: str) -> list:
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


@pytest.fixture
def ray_head(tmp_path):
    """A private Ray head (``ray start --head --block``) on free ports; stopped by pid afterwards."""
    gcs, dash, client, agent_http, agent_grpc, metrics, node_mgr, obj_mgr, rt_env = _free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="sdc", dir="/tmp")  # short: Unix socket paths are limited
    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"PATH": f"{bindir}:{env.get('PATH', '')}", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(16), "PYTHONPATH": str(REPO)})
    cmd = [str(Path(bindir) / "ray"), "start", "--head", "--block", "--port", str(gcs), "--num-cpus", "2",
           "--num-gpus", "0", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port",
           str(dash), "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
           "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
           "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
           "--runtime-env-agent-port", str(rt_env), "--min-worker-port", "0", "--max-worker-port", "0",
           "--temp-dir", temp_dir, "--object-store-memory", str(300 * 1024 * 1024), "--disable-usage-stats"]
    log = open(tmp_path / "ray_head.log", "w")  # noqa: SIM115 (open for the head's whole life, closed below)
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path),
                            start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_http(f"{address}/api/version", timeout_s=180)
        yield {"address": address, "env": env, "pid": head.pid, "temp_dir": temp_dir}
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)
        time.sleep(2)
        import psutil

        for p in _our_leftovers(temp_dir):  # only processes of this head (its private temp dir)
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                p.kill()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.cluster
def test_submit_demo_edits_to_a_local_head(ray_head, zoo_dir, demo_root, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline.cli", "submit", str(REPO / "configs" / "demo_edits.yaml"),
           f"data.root={demo_root / 'train'}", f"data.val_root={demo_root / 'val'}",
           f"data.class_names={demo_root / 'class_names.json'}", f"output.dir={out}", "data.max_per_class=12",
           "models.llm=zoo:llm", "edits.finetune.enabled=false", "edits.num_inference_steps=10",
           "--address", ray_head["address"]]
    env = {**ray_head["env"], "SEMDISTILL_ZOO_DIR": str(zoo_dir), "HF_HUB_OFFLINE": "1", "SEMDISTILL_PROGRESS": "0"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=str(tmp_path), check=False)
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
