"""The evaluation's concurrency plan: jobs x workers x torch threads never exceed the cores."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from pipeline.config import EvalConfig
from tuning.evaluate import concurrent_jobs, packed_workers, run_ray_jobs
from tuning.protocols import TrainSpec


def test_worker_threads_are_the_train_spec_threads():
    for c, want in ((0.25, 1), (0.5, 1), (1.0, 1), (1.5, 1), (2.0, 2), (3.0, 3)):
        cfg = EvalConfig(cpus_per_job=c)
        assert cfg.threads == TrainSpec.from_config(cfg, "convnet", 0).threads == want


def test_the_plan_never_oversubscribes_the_cores():
    for cpus, per_job, workers, n_jobs in itertools.product((1, 2, 3, 4, 8, 16, 64),
                                                            (0.25, 0.5, 1.0, 1.5, 2.0, 4.0),
                                                            (1, 2, 4), (1, 3, 7, 100)):
        cfg = EvalConfig(cpus_per_job=per_job, num_workers=workers)
        jobs = concurrent_jobs(n_jobs, cfg, float(cpus))
        assert 1 <= jobs <= n_jobs
        if jobs > 1:  # one job always runs, even when it alone is bigger than the machine
            assert jobs * workers * cfg.threads <= cpus, (cpus, per_job, workers, n_jobs, jobs)
            assert jobs * workers * per_job <= cpus + 1e-9
        packed = packed_workers(n_jobs, cfg, float(cpus))
        assert 1 <= packed <= n_jobs and (packed == 1 or packed * cfg.threads <= cpus)


def test_the_plan_fills_the_cores():
    assert concurrent_jobs(24, EvalConfig(cpus_per_job=0.5), 2.0) == 2
    assert concurrent_jobs(24, EvalConfig(cpus_per_job=1.0, num_workers=2), 16.0) == 8
    assert concurrent_jobs(24, EvalConfig(cpus_per_job=0.5, num_workers=2), 2.0) == 1
    assert concurrent_jobs(24, EvalConfig(cpus_per_job=2.0), 16.0) == 8
    assert concurrent_jobs(24, EvalConfig(cpus_per_job=1.0, max_concurrent=3), 2.0) == 3  # asked for: kept


@pytest.mark.parametrize(("per_job", "workers", "peak"), [(0.5, 1, 2), (0.5, 2, 1), (1.0, 1, 2), (2.0, 1, 1)])
def test_unpacked_runs_keep_in_flight_trainers_within_the_cores(monkeypatch, tmp_path: Path, per_job, workers,
                                                                peak):
    """One TorchTrainer per run on 2 CPUs: at most cores / (workers x threads) trainers in flight
    (the old limit, CPUs / cpus_per_job, put 4 one-thread trainers on 2 cores at cpus_per_job 0.5)."""
    import ray

    in_flight: list[object] = []
    seen = {"peak": 0}

    class Ref:
        def __init__(self, job: dict) -> None:
            self.job = job

    def fake_remote(**_kw):
        def wrap(_fn):
            class Task:
                @staticmethod
                def remote(job, *_args):
                    ref = Ref(job)
                    in_flight.append(ref)
                    seen["peak"] = max(seen["peak"], len(in_flight))
                    return ref
            return Task
        return wrap

    def fake_wait(refs, num_returns=1):
        in_flight.remove(refs[0])
        return [refs[0]], refs[1:]

    monkeypatch.setattr(ray, "remote", fake_remote)
    monkeypatch.setattr(ray, "wait", fake_wait)
    monkeypatch.setattr(ray, "get", lambda ref: {"name": ref.job["name"], "final": 50.0, "best": 50.0,
                                                 "seconds": 1})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    cfg = EvalConfig(cpus_per_job=per_job, num_workers=workers, pack_runs=False)
    jobs = [{"set": "s", "name": f"s-convnet-s{i}", "spec": {}} for i in range(6)]
    out = run_ray_jobs(jobs, {"s": object()}, cfg, tmp_path / "ray_train", log=lambda _m: None)
    assert [r["name"] for r in out] == [j["name"] for j in jobs]
    assert seen["peak"] == peak
    assert seen["peak"] * workers * cfg.threads <= 2


def _makespan(order: list[int], seconds: list[float], workers: int) -> float:
    """Two-or-more workers each taking the next run when free (what the packed queue does)."""
    free = [0.0] * workers
    for i in order:
        w = free.index(min(free))
        free[w] += seconds[i]
    return max(free)


def test_packed_queue_hands_out_the_longest_runs_first_and_shortens_the_makespan():
    from tuning.evaluate import RunQueue, longest_first, make_jobs

    cfg = EvalConfig(students=["convnet", "resnet18", "mobilenetv2"], repeats=1, epochs=20)
    sets = {"random_real": {"method": "random_real", "ipc": 10, "n_images": 100, "num_classes": 10},
            "dm": {"method": "dm", "ipc": 10, "n_images": 100, "num_classes": 10},
            "full_real": {"method": "full_real", "ipc": 143, "n_images": 1437, "num_classes": 10}}
    jobs = make_jobs(sets, cfg)
    order = longest_first(jobs)
    assert sorted(order) == list(range(len(jobs)))
    assert [jobs[i]["set"] for i in order[:3]] == ["full_real"] * 3  # the 14x runs go first
    assert order[3:] == [i for i in range(len(jobs)) if jobs[i]["set"] != "full_real"]  # ties keep job order
    q = RunQueue(len(jobs), order)
    assert [q.take() for _ in jobs] == order and q.take() is None
    assert RunQueue(3).take() == 0  # no order given: job order
    seconds = [14.0 if j["set"] == "full_real" else 1.0 for j in jobs]
    # job order: 3 + 3 short runs, then the long ones 14 + 14 and a third alone: 3 + 14 + 14 = 31;
    # longest first: 14 + 14 on one worker, 14 + six short runs on the other: 28
    assert _makespan(list(range(len(jobs))), seconds, 2) == 31.0
    assert _makespan(order, seconds, 2) == 28.0
