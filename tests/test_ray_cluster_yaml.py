"""ray_cluster.yaml: a valid Ray cluster-launcher file (Ray's own schema), with the project's extras and token
auth."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_valid_for_the_launcher():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    full = prepare_config(raw)
    validate_config(full)  # Ray's own schema: raises on unknown or missing fields
    types = full["available_node_types"]
    assert full["head_node_type"] == "head" and "gpu_worker" in types
    assert types["head"]["resources"] == {"GPU": 0}
    assert types["gpu_worker"]["max_workers"] >= 1
    # the nodes install the project with the vllm extra, which pyproject.toml defines
    from cluster.runtime_env import project_extras

    install = [c for c in raw["setup_commands"] if "pip install -e" in c]
    assert install and '".[vllm]"' in install[0]
    assert "vllm" in project_extras()
    # token auth on every node, the same way
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token" in c and "HF_HOME=" in c for c in raw[key])
    assert ".venv" in raw["rsync_exclude"] and "data" in raw["rsync_exclude"]
