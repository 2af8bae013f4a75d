"""Ray setup: joins an existing Ray, starts a bounded local one otherwise, stops only its own."""

import subprocess
import sys
import textwrap

from pipeline.config import RayConfig
from pipeline.core.ray_setup import actor_resources, ray_session


def test_session_reuses_running_ray(ray_local):
    with ray_session(RayConfig()):
        assert ray_local.is_initialized()
    assert ray_local.is_initialized()  # not ours to stop


def test_fresh_process_starts_and_stops_its_own_ray():
    code = textwrap.dedent("""
        import ray
        from pipeline.config import RayConfig
        from pipeline.core.ray_setup import ray_session
        with ray_session(RayConfig(num_cpus=1, object_store_memory_mb=100)):
            res = ray.cluster_resources()
            assert res["CPU"] == 1, res
            assert 90e6 < res["object_store_memory"] < 110e6, res
        assert not ray.is_initialized()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                         env={**__import__("os").environ, "RAY_ADDRESS": ""}, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_actor_resources_are_fractional():
    assert actor_resources(RayConfig()) == {"num_cpus": 0.5}
    assert actor_resources(RayConfig(actor_num_cpus=1, actor_num_gpus=1)) == {"num_cpus": 1, "num_gpus": 1}
