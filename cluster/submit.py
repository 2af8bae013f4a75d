"""``semdistill submit CONFIG``: run a config on a Ray cluster through the Jobs API (``ray job submit``).

The config and its overrides are resolved and validated *here*, before anything reaches
the cluster; the resolved YAML travels in the job's runtime env and ``cluster.job_entry``
runs it on the cluster (``ray.init`` there joins the cluster through ``RAY_ADDRESS``).
The source tree goes along as the ``working_dir``; see ``cluster.runtime_env``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from cluster.runtime_env import build_runtime_env
from pipeline.config import Config, dump_config, load_config
from pipeline.errors import SemdistillError

CONFIG_ENV = "SEMDISTILL_JOB_CONFIG"  # the resolved config YAML, read by cluster.job_entry
FROM_STAGE_ENV = "SEMDISTILL_FROM_STAGE"
ENTRYPOINT = "python -m cluster.job_entry"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
SUMMARY_PREFIX = "semdistill-summary: "
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class ClusterError(SemdistillError):
    """The cluster could not be reached, or refused the job."""


def dashboard_address(cli_address: str | None, cfg: Config, environ: dict[str, str] | None = None) -> str:
    """``--address``, else ``$RAY_ADDRESS``, else an http ``ray.address`` of the config, else
    localhost:8265."""
    environ = os.environ if environ is None else environ
    for cand in (cli_address, environ.get("RAY_ADDRESS"), cfg.ray.address):
        if cand and cand != "auto" and not cand.startswith("ray://"):
            return cand if "://" in cand else f"http://{cand}"
    return DEFAULT_ADDRESS


def submission_id(cfg: Config, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"semdistill-{cfg.name}-{cfg.method}-{stamp}-{uuid.uuid4().hex[:6]}"


def job_request(cfg: Config, from_stage: str | None = None, sub_id: str | None = None,
                environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments of ``JobSubmissionClient.submit_job`` for this config."""
    extra = {CONFIG_ENV: dump_config(cfg)}
    if from_stage:
        extra[FROM_STAGE_ENV] = from_stage
    job = cfg.ray.job
    req: dict[str, Any] = {
        "entrypoint": ENTRYPOINT,
        "submission_id": sub_id or submission_id(cfg),
        "runtime_env": build_runtime_env(cfg, environ=environ, extra_env=extra),
        "metadata": {"semdistill_name": cfg.name, "method": cfg.method, "output": cfg.output.dir},
    }
    if job.entrypoint_num_cpus:
        req["entrypoint_num_cpus"] = job.entrypoint_num_cpus
    if job.entrypoint_num_gpus:
        req["entrypoint_num_gpus"] = job.entrypoint_num_gpus
    return req


def equivalent_command(address: str, req: dict[str, Any]) -> str:
    """The same submission as a ``ray job submit`` command line (for --dry-run and the docs)."""
    parts = ["ray", "job", "submit", "--address", address, "--submission-id", req["submission_id"],
             "--runtime-env-json", json.dumps(req["runtime_env"])]
    if req.get("entrypoint_num_cpus"):
        parts += ["--entrypoint-num-cpus", str(req["entrypoint_num_cpus"])]
    if req.get("entrypoint_num_gpus"):
        parts += ["--entrypoint-num-gpus", str(req["entrypoint_num_gpus"])]
    parts += ["--no-wait", "--"] + shlex.split(req["entrypoint"])
    return " ".join(shlex.quote(p) for p in parts)


def follow_hint(address: str, sub_id: str) -> str:
    return (f"  follow logs:  ray job logs --address {address} --follow {sub_id}\n"
            f"  status:       ray job status --address {address} {sub_id}\n"
            f"  stop:         ray job stop --address {address} {sub_id}\n"
            f"  dashboard:    {address}/#/jobs/{sub_id}")


def warnings_for(cfg: Config) -> list[str]:
    """Paths that will not mean on the cluster what they mean here."""
    out = []
    if not Path(cfg.output.dir).is_absolute():
        out.append(f"output.dir={cfg.output.dir!r} is relative: on the cluster it resolves inside the job's "
                   "temporary working dir; give an absolute path on shared storage")
    if cfg.data.root and not Path(cfg.data.root).is_absolute():
        out.append(f"data.root={cfg.data.root!r} is relative: data/ is not uploaded with the job; give a "
                   "path that exists on every node")
    return out


def make_client(address: str):
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as err:  # pragma: no cover - ray[default] is a dependency
        raise ClusterError(f"the Ray Jobs client needs ray[default]: {err}") from None
    try:
        return JobSubmissionClient(address)
    except Exception as err:  # noqa: BLE001 (connection refused, auth, version mismatch: all become one clear error)
        reason = " ".join(str(err).split())[:400]
        raise ClusterError(
            f"could not reach the Ray dashboard at {address}: {reason}. Is the cluster up (`ray start "
            "--head` serves it on port 8265)? Pass --address http://HEAD:8265 or set RAY_ADDRESS; with token "
            "auth set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token)."
        ) from None


async def _tail(client, sub_id: str, out) -> None:
    async for chunk in client.tail_job_logs(sub_id):
        out.write(chunk)
        out.flush()


def wait_for(client, sub_id: str, out=sys.stdout, poll_s: float = 1.0, timeout_s: float | None = None) -> str:
    """Stream the job's logs to ``out`` until it ends; return its final status name."""
    try:
        asyncio.run(_tail(client, sub_id, out))
    except Exception as err:  # noqa: BLE001 (websocket dropped, any cause: fall back to polling the status)
        print(f"[submit] log stream ended early ({type(err).__name__}); polling the job status",
              file=sys.stderr)
    start = time.monotonic()
    while True:
        status = str(client.get_job_status(sub_id).value)
        if status in TERMINAL:
            return status
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return status
        time.sleep(poll_s)


def summary_from_logs(logs: str) -> dict[str, Any] | None:
    """The run summary ``cluster.job_entry`` printed as its last ``semdistill-summary:`` line."""
    for line in reversed(logs.splitlines()):
        if line.startswith(SUMMARY_PREFIX):
            try:
                return json.loads(line[len(SUMMARY_PREFIX):])
            except json.JSONDecodeError:
                return None
    return None


def main(args: argparse.Namespace) -> int:
    # paths: the job's working dir
    cfg = load_config(args.config, getattr(args, "overrides", None) or [], resolve=False)
    if cfg.method not in ("edits", "diver"):
        raise SemdistillError(f"method must be edits or diver to submit, got {cfg.method!r} ({args.config})")
    address = dashboard_address(getattr(args, "address", None), cfg)
    req = job_request(cfg, from_stage=getattr(args, "from_stage", None))
    for w in warnings_for(cfg):
        print(f"[submit] warning: {w}", file=sys.stderr)
    if getattr(args, "dry_run", False):
        print(equivalent_command(address, req))
        return 0
    client = make_client(address)
    try:
        sub_id = client.submit_job(**req)
    except Exception as err:  # noqa: BLE001 (any refusal of the Jobs API becomes one clear error)
        raise ClusterError(f"the cluster at {address} refused the job: "
                           f"{' '.join(str(err).split())[:600]}") from None
    print(f"submitted job {sub_id} to {address}")
    print(follow_hint(address, sub_id))
    sys.stdout.flush()
    if getattr(args, "no_wait", False):
        return 0
    try:
        status = wait_for(client, sub_id)
    except KeyboardInterrupt:
        print(f"\n[submit] stopped following; the job keeps running.\n{follow_hint(address, sub_id)}")
        return 130
    summary = summary_from_logs(client.get_job_logs(sub_id)) if status == "SUCCEEDED" else None
    print(f"job {sub_id}: {status}")
    if summary:
        print(f"output: {summary.get('output')}")
    return 0 if status == "SUCCEEDED" else 1
