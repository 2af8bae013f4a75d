"""Two Ray nodes on this machine: model actors on the GPU node, CPU fallback, node loss, ``ray job submit``.

Each test starts its own head (no GPUs) and a second node (``ray start --address``) declaring 2 logical
GPUs, and stops both by process id (tests/cluster/conftest.py). The real cluster configs run with zoo
models and a small-data override; ``ray.actor_num_gpus: 1`` makes every model actor ask for GPU:1, which
only the second node has. This machine has no CUDA, so each actor falls back to CPU with one warning.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.core.write import read_manifest

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]

WARNING = "sees no CUDA device"
JOB_LINE = "ray job submit --working-dir . -- semdistill run configs/demo_edits.yaml"


def zoo_edits(data: Path, zoo: Path, out: Path) -> list[str]:
    """configs/edits_imagenet1k.yaml on 2 demo digit classes, 6 images each, zoo models, 3 steps."""
    return [f"data.root={data / 'train'}", "data.val_root=null",
            f"data.class_names={data / 'class_names.json'}",
            "data.classes=['0','1']", "data.max_per_class=6", "data.image_size=32",
            *(f"models.{r}=zoo:{r}" for r in ("vlm", "clip", "vae", "sd", "llm")), f"models.zoo_dir={zoo}",
            "models.vlm_backend=transformers", "models.llm_backend=transformers", "models.dtype=float32",
            "edits.ipc=1", "edits.k_image=2", "edits.k_text=2", "edits.num_inference_steps=3",
            "edits.caption_max_tokens=12", "edits.max_tokens=20", "edits.caption_image_size=32",
            "edits.feature_image_size=32", "edits.vae_resolution=32", "edits.kmeans_nredo=2",
            "edits.finetune.enabled=false", "eval=null", "ray.actor_num_cpus=0.5",
            "ray.pool_sizes={caption: 1, embed: 1, vae: 1, llm: 1, generate: 1}",
            "ray.batch_sizes={caption: 4, embed: 4, vae: 2, llm: 2, generate: 1}", f"output.dir={out}"]


def zoo_diver(stage1: Path, zoo: Path, out: Path, pool: int = 1, few_steps: bool = True) -> list[str]:
    """configs/diver_imagenet1k.yaml on a tiny stage-1 set, the zoo DiT, 32 px, 3 steps (else the config's
    50)."""
    steps = ["diver.num_inference_steps=3", "diver.start_step=1",
             "diver.fusion_window=[2, 1]"] if few_steps else []
    return [f"diver.input={stage1}", "data.class_names=null", "data.val_root=null",
            "models.dit=zoo:dit", f"models.zoo_dir={zoo}", "models.dtype=float32", "diver.resolution=32",
            *steps, "diver.null_class=null", "diver.vae_source=auto", "diver.side_by_side=false", "eval=null",
            "ray.actor_num_cpus=0.5", f"ray.pool_sizes={{recover: {pool}}}", "ray.batch_sizes={recover: 1}",
            "ray.micro_batch_sizes={recover: 1}", f"output.dir={out}"]


def semdistill_run(config: str, overrides: list[str], env: dict, log: Path, timeout: float = 1500) -> str:
    """``semdistill run CONFIG OVERRIDES`` in a subprocess; returns its output, fails with its tail."""
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(REPO / "configs" / config), *overrides]
    with open(log, "w") as f:
        r = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                           cwd=str(log.parent), check=False)
    text = log.read_text()
    assert r.returncode == 0, text[-4000:]
    return text


def local_env() -> dict[str, str]:
    """A single local Ray started by the run itself (no RAY_ADDRESS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "SEMDISTILL_PROGRESS": "0"}


def cluster_env(nodes: dict) -> dict[str, str]:
    """A driver joining the private cluster (``RAY_ADDRESS`` = its GCS, the cluster's token)."""
    return {**nodes["env"], "RAY_ADDRESS": nodes["gcs"], "HF_HUB_OFFLINE": "1", "SEMDISTILL_PROGRESS": "0"}


def images(folder: Path) -> dict[str, bytes]:
    """Manifest key -> image bytes; each key once."""
    keys = [e["key"] for e in read_manifest(folder)["images"]]
    assert len(keys) == len(set(keys)), "a duplicated manifest entry"
    return {e["key"]: (folder / e["file"]).read_bytes() for e in read_manifest(folder)["images"]}


def model_actors(nodes: dict) -> list[dict]:
    """Ray Data's actor-pool workers of the cluster's jobs (the model actors), dead or alive."""
    return [a for a in nodes["state"]("actors") if "MapWorker" in a["class_name"]]


def assert_on_gpu_node(nodes: dict, text: str) -> None:
    """Every model actor asked for GPU:1 and ran on the GPU node; each warned about CPU fallback once."""
    actors = model_actors(nodes)
    assert actors, "no model actors were seen"
    assert all(a["required_resources"].get("GPU") == 1.0 for a in actors), actors
    assert {a["node_id"] for a in actors} == {nodes["worker"].extra["node_id"]}
    warn_pids = re.findall(rf"pid=(\d+)[^)]*\).*{WARNING}", text)
    assert warn_pids, text[-3000:]
    assert {int(p) for p in warn_pids} == {a["pid"] for a in actors}  # each model actor warned ...
    assert len(warn_pids) == len(set(warn_pids)), warn_pids  # ... once


def test_edits_imagenet1k_actors_on_the_gpu_node(two_nodes, zoo_dir, demo_root, tmp_path):
    text = semdistill_run("edits_imagenet1k.yaml", zoo_edits(demo_root, zoo_dir, tmp_path / "c"),
                          cluster_env(two_nodes), tmp_path / "cluster.log")
    assert_on_gpu_node(two_nodes, text)
    single = zoo_edits(demo_root, zoo_dir, tmp_path / "s") + ["ray.actor_num_gpus=0", "ray.num_cpus=2"]
    semdistill_run("edits_imagenet1k.yaml", single, local_env(), tmp_path / "single.log")
    got, want = images(tmp_path / "c" / "distilled"), images(tmp_path / "s" / "distilled")
    assert len(got) == 2 and got == want  # 2 classes x IPC 1, byte-identical to one local Ray


def test_diver_imagenet1k_actors_on_the_gpu_node(two_nodes, zoo_dir, stage1_pt, tmp_path):
    text = semdistill_run("diver_imagenet1k.yaml", zoo_diver(stage1_pt, zoo_dir, tmp_path / "c"),
                          cluster_env(two_nodes), tmp_path / "cluster.log")
    assert_on_gpu_node(two_nodes, text)
    single = zoo_diver(stage1_pt, zoo_dir, tmp_path / "s") + ["ray.actor_num_gpus=0", "ray.num_cpus=2"]
    semdistill_run("diver_imagenet1k.yaml", single, local_env(), tmp_path / "single.log")
    got, want = images(tmp_path / "c" / "diver"), images(tmp_path / "s" / "diver")
    assert len(got) == 6 and got == want


def test_worker_node_lost_mid_recovery(two_nodes, zoo_dir, tmp_path):
    """SIGKILL the second node while its recovery actor holds work: the stage finishes on the head."""
    g = torch.Generator().manual_seed(1)
    stage1 = tmp_path / "set.pt"
    n = 48  # the config's 50 steps (25 recovered) per image: long enough to be caught mid-stage
    torch.save({"images": torch.rand(n, 3, 32, 32, generator=g), "labels": torch.arange(n) % 3,
                "classes": ["3", "5", "7"]}, stage1)
    # CPU actors, restartable on the head; the config's own max_restarts 4 and max_task_retries -1 (with a
    # bounded count, the retries are spent in the seconds before Ray declares the node dead, and the stage
    # fails)
    cpu = ["ray.actor_num_gpus=0"]
    ref = zoo_diver(stage1, zoo_dir, tmp_path / "ref", pool=2, few_steps=False) + [*cpu, "ray.num_cpus=2"]
    semdistill_run("diver_imagenet1k.yaml", ref, local_env(), tmp_path / "ref.log")

    out, worker = tmp_path / "run", two_nodes["worker"]
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(REPO / "configs" / "diver_imagenet1k.yaml"),
           *zoo_diver(stage1, zoo_dir, out, pool=2, few_steps=False), *cpu]
    log = open(tmp_path / "run.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=cluster_env(two_nodes), stdout=log, stderr=subprocess.STDOUT,
                            cwd=str(tmp_path), start_new_session=True)
    try:
        deadline, on_worker, done = time.monotonic() + 1200, set(), 0
        while True:
            assert proc.poll() is None, (
                f"the run ended before the worker node was killed ({done} images done, actors "
                f"{[(a['node_id'][:8], a['state']) for a in model_actors(two_nodes)]}, worker "
                f"{worker.extra['node_id'][:8]}):\n" + (tmp_path / "run.log").read_text()[-3000:])
            assert time.monotonic() < deadline, "the recovery never started on the worker node"
            if not on_worker:  # the pool spreads over the nodes: one actor must sit on the worker
                time.sleep(0.5)
                on_worker = {a["actor_id"] for a in model_actors(two_nodes)
                             if a["state"] == "ALIVE" and a["node_id"] == worker.extra["node_id"]}
                continue
            time.sleep(0.05)
            try:
                done = len(json.loads((out / "diver" / "manifest.json").read_text())["images"])
            except (OSError, json.JSONDecodeError, KeyError):
                done = 0
            if 0 < done < n - 8:
                worker.kill_now()  # the node's process group and every process of it, by pid
                break
        assert proc.wait(timeout=1200) == 0, (tmp_path / "run.log").read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
    assert not worker.own_processes()
    # the batches the worker's actor held were lost with it and retried (Ray's own log line)
    assert "so the task will be retried" in (tmp_path / "run.log").read_text()
    assert 0 < done < n - 8
    got, want = images(out / "diver"), images(tmp_path / "ref" / "diver")
    assert len(got) == n and got == want  # every image once, byte-identical to an uninterrupted run


def test_ray_job_submit_as_in_the_readme(two_nodes, zoo_dir, demo_root, tmp_path):
    """Ray's own ``ray job submit --working-dir . -- semdistill run CONFIG ...``, the README's line."""
    readme = (REPO / "README.md").read_text()
    line = next(ln.strip() for ln in readme.splitlines() if ln.strip().startswith(JOB_LINE))
    argv = shlex.split(line)
    out = tmp_path / "out"
    overrides = [f"data.root={demo_root / 'train'}", f"data.val_root={demo_root / 'val'}",
                 f"data.class_names={demo_root / 'class_names.json'}", "data.classes=['0','1']",
                 "data.max_per_class=6", "models.llm=zoo:llm", "edits.finetune.enabled=false",
                 "edits.num_inference_steps=3", f"output.dir={out}"]
    argv = [a for a in argv if not a.startswith("output.dir=")] + overrides
    env = {**two_nodes["env"], "RAY_ADDRESS": two_nodes["address"], "SEMDISTILL_ZOO_DIR": str(zoo_dir),
           "HF_HUB_OFFLINE": "1", "SEMDISTILL_PROGRESS": "0"}
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1500, cwd=str(REPO),
                       check=False)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-4000:]
    assert "succeeded" in text.lower() and f"done: {out / 'distilled'}" in text
    assert len(images(out / "distilled")) == 2 * 2  # 2 classes x the demo config's IPC 2
