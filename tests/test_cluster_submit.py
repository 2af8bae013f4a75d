"""`semdistill submit`: the job request it builds, the runtime env, the job entrypoint, clear errors."""

from __future__ import annotations

import json
import shlex
import socket
import zipfile
from pathlib import Path

import pytest
import yaml

from cluster import job_entry
from cluster.runtime_env import (
    DEFAULT_EXCLUDES,
    PROJECT_ROOT,
    build_runtime_env,
    pip_requirements,
    project_extras,
)
from cluster.submit import (
    CONFIG_ENV,
    DEFAULT_ADDRESS,
    FROM_STAGE_ENV,
    SUMMARY_PREFIX,
    dashboard_address,
    equivalent_command,
    job_request,
    summary_from_logs,
    warnings_for,
)
from pipeline.cli import main as cli_main
from pipeline.config import JobConfig, config_from_dict
from pipeline.errors import ConfigError


def _cfg(**over):
    raw = {"method": "edits", "name": "t", "output": {"dir": "/shared/runs/t"},
           "data": {"root": "/shared/data/train"}}
    raw.update(over)
    return config_from_dict(raw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_address_precedence():
    cfg = _cfg(ray={"address": "10.0.0.5:8265"})
    assert dashboard_address("http://head:8265", cfg,
                             {"RAY_ADDRESS": "http://env:8265"}) == "http://head:8265"
    assert dashboard_address(None, cfg, {"RAY_ADDRESS": "http://env:8265"}) == "http://env:8265"
    assert dashboard_address(None, cfg, {}) == "http://10.0.0.5:8265"
    # "auto" and ray:// client addresses are not dashboard addresses
    assert dashboard_address(None, _cfg(ray={"address": "ray://h:10001"}),
                             {"RAY_ADDRESS": "auto"}) == DEFAULT_ADDRESS


def test_job_request_carries_the_resolved_config_and_env(tmp_path):
    cfg = _cfg(ray={"job": {"hf_home": "/mnt/hf", "env_vars": {"FOO": "1"}, "entrypoint_num_cpus": 1}})
    req = job_request(cfg, from_stage="cluster", sub_id="semdistill-x", environ={"SEMDISTILL_ZOO_DIR": "/z",
                                                                                "UNRELATED": "no"})
    env = req["runtime_env"]
    assert req["entrypoint"] == "python -m cluster.job_entry"
    assert req["submission_id"] == "semdistill-x" and req["entrypoint_num_cpus"] == 1
    assert env["working_dir"] == str(PROJECT_ROOT)
    assert ".venv/" in env["excludes"] and "data/" in env["excludes"]
    ev = env["env_vars"]
    assert ev["HF_HOME"] == "/mnt/hf" and ev["FOO"] == "1" and ev["SEMDISTILL_ZOO_DIR"] == "/z"
    assert "UNRELATED" not in ev and ev[FROM_STAGE_ENV] == "cluster"
    assert config_from_dict(yaml.safe_load(ev[CONFIG_ENV])) == cfg  # the exact config travels
    assert "pip" not in env  # nodes have the project installed; no per-job pip by default
    assert req["metadata"]["output"] == "/shared/runs/t"


def test_pip_extras_come_from_pyproject(tmp_path):
    pp = tmp_path / "pyproject.toml"
    pp.write_text('[project]\nname = "x"\n[project.optional-dependencies]\ngpu = ["faiss-gpu==1.2"]\n'
                  'vllm = ["vllm", "faiss-gpu==1.2"]\n')
    assert project_extras(pp) == {"gpu": ["faiss-gpu==1.2"], "vllm": ["vllm", "faiss-gpu==1.2"]}
    job = JobConfig(pip_extras=["gpu", "vllm"], pip=["einops"])
    assert pip_requirements(job, pp) == ["faiss-gpu==1.2", "vllm", "einops"]
    with pytest.raises(ConfigError, match="unknown extra 'cuda'"):
        pip_requirements(JobConfig(pip_extras=["cuda"]), pp)
    # the real pyproject's vllm extra reaches the runtime env
    env = build_runtime_env(_cfg(ray={"job": {"pip_extras": ["vllm"]}}), environ={})
    assert env["pip"] == project_extras()["vllm"]


def test_excludes_keep_the_upload_small(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    env = build_runtime_env(_cfg(), environ={})
    target = tmp_path / "pkg.zip"
    create_package(env["working_dir"], target, include_gitignore=True, excludes=env["excludes"])
    names = zipfile.ZipFile(target).namelist()
    assert "cluster/job_entry.py" in names and "pipeline/cli.py" in names
    assert not [n for n in names if n.startswith((".venv/", ".git/", ".cache/", "runs/"))]
    assert target.stat().st_size < 20 * 1024 * 1024
    assert set(DEFAULT_EXCLUDES) <= set(env["excludes"])


def test_equivalent_command_is_a_valid_ray_job_submit():
    cfg = _cfg()
    req = job_request(cfg, sub_id="semdistill-y", environ={})
    argv = shlex.split(equivalent_command("http://h:8265", req))
    assert argv[:3] == ["ray", "job", "submit"]
    assert argv[argv.index("--address") + 1] == "http://h:8265"
    assert json.loads(argv[argv.index("--runtime-env-json") + 1]) == req["runtime_env"]
    assert argv[argv.index("--") + 1:] == ["python", "-m", "cluster.job_entry"]


def test_relative_paths_warn():
    ws = warnings_for(config_from_dict({"method": "diver", "output": {"dir": "runs/x"},
                                        "data": {"root": "d"}}))
    assert any("output.dir" in w for w in ws) and any("data.root" in w for w in ws)
    assert warnings_for(_cfg()) == []


def test_cli_dry_run_and_errors(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: diver\nname: dry\noutput: {dir: /abs/out}\n")
    assert cli_main(["submit", str(cfg), "diver.gamma=0.05", "--dry-run", "--address", "http://h:1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ray job submit --address http://h:1")
    assert "gamma: 0.05" in json.loads(shlex.split(out)[shlex.split(out).index("--runtime-env-json") + 1])[
        "env_vars"][CONFIG_ENV]
    # a typo fails here, before anything reaches a cluster
    assert cli_main(["submit", str(cfg), "diver.gamm=0.05", "--dry-run"]) == 2
    assert "diver.gamm: unknown key" in capsys.readouterr().err
    cfg.write_text("method: none\n")
    assert cli_main(["submit", str(cfg), "--dry-run"]) == 2
    assert "method must be edits or diver" in capsys.readouterr().err


def test_unreachable_cluster_is_a_clean_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: diver\noutput: {dir: /abs/out}\n")
    rc = cli_main(["submit", str(cfg), "--address", f"http://127.0.0.1:{_free_port()}", "--no-wait"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "could not reach the Ray dashboard at http://127.0.0.1:" in err and "Traceback" not in err


def test_summary_is_read_back_from_the_logs():
    logs = f"noise\n{SUMMARY_PREFIX}{json.dumps({'output': '/o', 'images': 3})}\nmore\n"
    assert summary_from_logs(logs) == {"output": "/o", "images": 3}
    assert summary_from_logs("nothing here") is None


def test_job_entry_runs_the_submitted_config(tmp_path, monkeypatch, capsys):
    import pipeline.run

    out = tmp_path / "out"
    cfg = config_from_dict({"method": "diver", "name": "je", "output": {"dir": str(out)}})
    seen = {}

    def fake_run(c, from_stage=None):
        seen.update(cfg=c, from_stage=from_stage)
        return {"output": str(out / "distilled"), "images": 7}

    monkeypatch.setattr(pipeline.run, "run_config", fake_run)
    monkeypatch.setenv(CONFIG_ENV, yaml.safe_dump(cfg.model_dump(mode="json")))
    monkeypatch.setenv(FROM_STAGE_ENV, "recover")
    assert job_entry.main() == 0
    assert seen["cfg"] == cfg and seen["from_stage"] == "recover"
    assert config_from_dict(yaml.safe_load((out / "config.yaml").read_text())) == cfg
    assert summary_from_logs(capsys.readouterr().out) == {"output": str(out / "distilled"), "images": 7}

    monkeypatch.delenv(CONFIG_ENV)
    assert job_entry.main() == 2
    assert CONFIG_ENV in capsys.readouterr().err


def test_job_entry_reports_config_errors(monkeypatch, capsys):
    monkeypatch.setenv(CONFIG_ENV, "method: diver\ndiver: {gamma: -1}\n")
    assert job_entry.main() == 2
    assert "diver.gamma" in capsys.readouterr().err


def test_project_root_is_the_repo():
    assert (Path(PROJECT_ROOT) / "pyproject.toml").is_file()
