"""Private Ray nodes for ``cluster`` tests: ``ray start`` on free ports, stopped by process id.

Never ``ray stop``: it stops every Ray instance on the machine, and other developers run Ray here.
Each node gets its own short ``--temp-dir`` (Unix socket paths are limited), so its processes can be
found by that path in their command lines and killed by pid.
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
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BINDIR = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_http(url: str, timeout_s: float) -> None:
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


def processes_with(marker: str) -> list:
    """Live processes whose command line mentions ``marker`` (a node's private temp dir or port flag)."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in part for part in (p.info["cmdline"] or [])):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def ray_env() -> dict[str, str]:
    """The environment of a private Ray: no inherited RAY_*, token auth with a fresh token, the repo
    importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"PATH": f"{BINDIR}:{env.get('PATH', '')}", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(16), "PYTHONPATH": str(REPO)})
    return env


@dataclass
class RayNode:
    """One ``ray start --block`` process (its own process group) and what identifies its processes."""

    proc: subprocess.Popen
    temp_dir: str
    node_manager_port: int
    log: Any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def own_processes(self) -> list:
        """Its raylet, agents and workers: they carry its node manager port (workers) or temp dir."""
        found = {p.pid: p for p in processes_with(f"={self.node_manager_port}")}
        found.update({p.pid: p for p in processes_with(self.temp_dir)})
        return [p for p in found.values() if p.pid != os.getpid()]

    def kill_now(self) -> None:
        """SIGKILL the node's process group and every process of the node (a machine that died)."""
        import psutil

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in self.own_processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                p.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (``ray start --block`` then stops what it started), then SIGKILL leftovers by pid."""
        import psutil

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
            time.sleep(2)
        for p in self.own_processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                p.kill()
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _node_ports() -> list[str]:
    agent_http, agent_grpc, metrics, node_mgr, obj_mgr, rt_env = free_ports(6)
    return ["--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
            "--metrics-export-port", str(metrics), "--node-manager-port", str(node_mgr),
            "--object-manager-port", str(obj_mgr), "--runtime-env-agent-port", str(rt_env),
            "--min-worker-port", "0", "--max-worker-port", "0"]


def start_node(args: list[str], env: dict[str, str], log_path: Path, num_cpus: int, num_gpus: int) -> RayNode:
    """``ray start --block ARGS`` with private ports, temp dir and a 300 MB object store."""
    temp_dir = tempfile.mkdtemp(prefix="sdc", dir="/tmp")  # short: Unix socket paths are limited
    ports = _node_ports()
    cmd = [str(BINDIR / "ray"), "start", "--block", *args, "--num-cpus", str(num_cpus), "--num-gpus",
           str(num_gpus), *ports, "--temp-dir", temp_dir, "--object-store-memory", str(300 * 1024 * 1024),
           "--disable-usage-stats"]
    log = open(log_path, "w")  # noqa: SIM115 (open for the node's whole life, closed in stop())
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(log_path.parent),
                            start_new_session=True)
    return RayNode(proc, temp_dir, int(ports[ports.index("--node-manager-port") + 1]), log)


def start_head(tmp_path: Path, env: dict[str, str], num_cpus: int = 2) -> RayNode:
    """A private head without GPUs, its dashboard (Jobs API) on a free port; waits until it answers."""
    gcs, dash, client = free_ports(3)
    head = start_node(["--head", "--port", str(gcs), "--include-dashboard", "true", "--dashboard-host",
                       "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client)],
                      env, tmp_path / "ray_head.log", num_cpus=num_cpus, num_gpus=0)
    head.extra.update(address=f"http://127.0.0.1:{dash}", gcs=f"127.0.0.1:{gcs}")
    try:
        wait_http(f"{head.extra['address']}/api/version", timeout_s=180)
    except BaseException:
        head.stop()
        raise
    return head


def state_api(address: str, env: dict[str, str], what: str, **params: str) -> list[dict]:
    """Rows of the dashboard's state API (``/api/v0/<what>``), authenticated with the node's token."""
    query = "&".join(f"{k}={v}" for k, v in {"limit": "10000", "detail": "1", **params}.items())
    req = urllib.request.Request(f"{address}/api/v0/{what}?{query}",
                                 headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.loads(resp.read())
    return body["data"]["result"]["result"]


def alive_nodes(address: str, env: dict[str, str]) -> list[dict]:
    return [n for n in state_api(address, env, "nodes") if n["state"] == "ALIVE"]


def start_worker(tmp_path: Path, head: RayNode, env: dict[str, str], num_gpus: int, num_cpus: int = 2,
                 name: str = "worker") -> RayNode:
    """A second node joining ``head`` (``ray start --address``) declaring ``num_gpus`` logical GPUs."""
    node = start_node(["--address", head.extra["gcs"]], env, tmp_path / f"ray_{name}.log", num_cpus, num_gpus)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        nodes = alive_nodes(head.extra["address"], env)
        heads = [n for n in nodes if n["is_head_node"]]
        new = [n for n in nodes if not n["is_head_node"]
               and n["node_id"] not in head.extra.get("workers", ())]
        if heads and new:
            head.extra["node_id"] = heads[0]["node_id"]
            head.extra.setdefault("workers", []).append(new[0]["node_id"])
            node.extra["node_id"] = new[0]["node_id"]
            return node
        if node.proc.poll() is not None:
            break
        time.sleep(1)
    node.stop()
    raise TimeoutError(f"the {name} node never joined {head.extra['gcs']}; "
                       f"see {tmp_path / f'ray_{name}.log'}")


@pytest.fixture
def ray_head(tmp_path) -> Iterator[dict]:
    """A private Ray head (``ray start --head --block``) on free ports; stopped by pid afterwards."""
    env = ray_env()
    head = start_head(tmp_path, env)
    try:
        yield {"address": head.extra["address"], "env": env, "pid": head.pid, "temp_dir": head.temp_dir}
    finally:
        head.stop()


@pytest.fixture
def two_nodes(tmp_path) -> Iterator[dict]:
    """A private head (no GPUs) and a second node with 2 logical GPUs; both stopped by pid afterwards."""
    env = ray_env()
    head = start_head(tmp_path, env)
    nodes = [head]
    try:
        nodes.append(start_worker(tmp_path, head, env, num_gpus=2))
        yield {"head": head, "worker": nodes[1], "env": env, "address": head.extra["address"],
               "gcs": head.extra["gcs"], "state": lambda what: state_api(head.extra["address"], env, what)}
    finally:
        for n in reversed(nodes):
            n.stop()
