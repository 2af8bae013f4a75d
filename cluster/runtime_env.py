"""The Ray runtime env of a submitted job: working dir, excludes, pip extras and env vars.

The cluster's nodes install the project once (``ray_cluster.yaml`` ``setup_commands``);
a job ships the current source tree as its ``working_dir`` (so local edits run without a
re-install), optional per-job pip requirements (the project's extras, resolved from
``pyproject.toml``) and the environment variables the models need (``HF_HOME`` for a shared
model cache, ``HF_HUB_OFFLINE``, ``SEMDISTILL_ZOO_DIR`` ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from pipeline.config import Config, JobConfig
from pipeline.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Never uploaded: environments, caches, outputs, datasets (gitignore syntax, relative to working_dir).
DEFAULT_EXCLUDES = [
    ".venv/", ".git/", ".cache/", "runs/", "data/", "__pycache__/", "*.egg-info/", ".pytest_cache/",
    ".ruff_cache/", "build/", "dist/", "*.pt", "*.safetensors", "*.ckpt", "*.parquet",
]

# Forwarded from the submitting shell when set there and not set in the config.
FORWARDED_ENV = ("HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "SEMDISTILL_ZOO_DIR",
                 "SEMDISTILL_PROGRESS")

# Always set in the job: no tokenizer thread storms inside Ray workers, logs deduplicated.
JOB_ENV = {"TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "1", "PYTHONUNBUFFERED": "1"}


def project_extras(pyproject: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """``[project.optional-dependencies]`` of ``pyproject.toml``: extra name -> requirements."""
    path = Path(pyproject) if pyproject else PROJECT_ROOT / "pyproject.toml"
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return {k: list(v) for k, v in data.get("project", {}).get("optional-dependencies", {}).items()}


def pip_requirements(job: JobConfig, pyproject: str | os.PathLike | None = None) -> list[str]:
    """The job's pip list: each named extra's requirements, then ``job.pip``, de-duplicated in order."""
    extras = project_extras(pyproject) if job.pip_extras else {}
    reqs: list[str] = []
    for name in job.pip_extras:
        if name not in extras:
            raise ConfigError(f"ray.job.pip_extras: unknown extra {name!r}; pyproject.toml has "
                              f"{sorted(extras)}")
        reqs.extend(extras[name])
    reqs.extend(job.pip)
    seen: set[str] = set()
    return [r for r in reqs if not (r in seen or seen.add(r))]


def job_env_vars(job: JobConfig, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Env vars of the job: built-ins, then forwarded ones from ``environ``, then ``hf_home``, then
    ``env_vars``."""
    environ = dict(os.environ if environ is None else environ)
    env = dict(JOB_ENV)
    env.update({k: environ[k] for k in FORWARDED_ENV if environ.get(k)})
    if job.hf_home:
        env["HF_HOME"] = job.hf_home
    env.update({str(k): str(v) for k, v in job.env_vars.items()})
    return env


def working_dir(job: JobConfig) -> Path:
    path = Path(job.working_dir).expanduser().resolve() if job.working_dir else PROJECT_ROOT
    if not path.is_dir():
        raise ConfigError(f"ray.job.working_dir does not exist: {path}")
    return path


def build_runtime_env(cfg: Config, environ: dict[str, str] | None = None,
                      extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``runtime_env`` dict for ``JobSubmissionClient.submit_job`` (and ``ray job submit``)."""
    job = cfg.ray.job
    env: dict[str, Any] = {
        "working_dir": str(working_dir(job)),
        "excludes": DEFAULT_EXCLUDES + [e for e in job.excludes if e not in DEFAULT_EXCLUDES],
        "env_vars": {**job_env_vars(job, environ), **(extra_env or {})},
    }
    pip = pip_requirements(job)
    if pip:
        env["pip"] = pip
    return env
