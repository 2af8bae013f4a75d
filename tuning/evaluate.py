"""Cross-architecture evaluation on Ray Train: every (set, student, seed) run in one TorchTrainer.

``evaluate_sets({name: distilled_dir}, val_root, eval_cfg, out_dir)`` loads each distilled
set and the real validation set once (into the object store), launches one
``TorchTrainer`` whose workers (``max_concurrent``, else cluster CPUs / ``cpus_per_job``) pull the
(set, student, seed) runs from a queue (``eval.pack_runs``, the default), or one ``TorchTrainer`` per
run with ``ScalingConfig(num_workers, use_gpu, resources_per_worker={"CPU": cpus_per_job})`` (DDP when
``num_workers > 1``; at most ``max_concurrent`` in flight), and gathers the runs into one table of
dataset x method x IPC x student rows, one per preset, reported accuracy, protocol and augmentation
(``ROW_KEY``; ``top1_mean``/``top1_std`` over the seeds = the preset's reported number, final or best;
``best_*`` = best test accuracy seen while training; ``recipe`` = the resolved protocol). ``write_results``
writes ``results.json``, ``results.csv`` and ``results.md``, merging with rows already there.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import EvalConfig, RayConfig
from pipeline.core.console import progress
from pipeline.core.image_index import scan_image_folder
from pipeline.core.pixels import normalize, u8_hwc_to_unit_chw
from pipeline.core.read import load_image_arrays, load_rgb
from pipeline.core.write import MANIFEST, atomic_write_bytes, atomic_write_json, read_manifest
from pipeline.errors import ConfigError, DataError
from tuning.checkpoints import fit_or_disk_full, report_checkpoint
from tuning.ddranking import scores, scores_markdown
from tuning.eval_inputs import apply_zca, dataset_norm, fit_zca, learned_lr
from tuning.protocols import TrainSpec, resolve_preset, train_student, train_teacher
from tuning.report_protocol import protocol_markdown, protocol_record
from tuning.row_values import run_value
from tuning.stream import scan_stream
from tuning.students import STUDENTS, build_student, check_students
from tuning.teacher_ckpt import load_into, read_state_dict

# A row is one (set, student) under one recipe: two presets, or a final and a best top-1, never share a row;
# distill_seed: the seed a set was made with, when one method's set is made with several (the demo)
ROW_KEY = ("dataset", "method", "ipc", "distill_seed", "student", "preset", "reported", "protocol", "augment")


# ----------------------------------------------------------------------------- data
def val_resize_for(size: int, resize: int | str | None = None) -> int | None:
    """The short side the real val images are resized to before the center crop: ``resize``, else
    256 at 224 px (the ImageNet Resize(256) + CenterCrop(224)), else none (short side = ``size``);
    ``"size"``: the short side to ``size`` itself (IDC/Minimax/EDITS's Resize(size) + CenterCrop(size))."""
    if resize == "size":
        return None
    return int(resize) if resize is not None else (256 if size == 224 else None)


def load_distilled(root: str | os.PathLike, classes: list[str], size: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A distilled set (manifest entries, or a plain ImageFolder) labelled in the real set's class order.

    Returns images, labels and ``{"method", "ipc"}`` read from the manifest (ipc = most
    common per-class count). A class id the real set lacks is a ``DataError``.
    """
    root = Path(root)
    label_of = {c: i for i, c in enumerate(classes)}
    man_path = root / MANIFEST
    if man_path.is_file():
        man = read_manifest(root)  # with a killed run's journal folded in
        items = [(root / e["file"], str(e["class_id"])) for e in man.get("images", [])]
        method = man.get("method") or root.name
    else:
        index = scan_image_folder(root)
        items = [(Path(r.path), r.class_id) for r in index.records]
        method = root.name
    if not items:
        raise DataError(f"distilled set {root} has no images")
    unknown = sorted({c for _, c in items if c not in label_of})
    if unknown:
        raise DataError(f"distilled set {root} has classes the real set lacks: {unknown[:10]}")
    if size is None:
        size = min(load_rgb(str(items[0][0])).shape[:2])
    xs = [load_rgb(str(p), size) for p, _ in items]
    ys = np.asarray([label_of[c] for _, c in items], dtype=np.int64)
    ipc = Counter(ys.tolist()).most_common(1)[0][1]
    return np.stack(xs), ys, {"method": method, "ipc": int(ipc), "image_size": int(size)}


def to_tensor(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> normalised float ``[N, C, H, W]``."""
    return normalize(u8_hwc_to_unit_chw(x), mean, std)


def dataset_name(val_root: str | os.PathLike) -> str:
    p = Path(val_root).resolve()
    return p.parent.name if p.name.lower() in ("val", "valid", "validation", "test", "train") else p.name


# ----------------------------------------------------------------------------- one job
def _job_payload(data: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The set and the real val set as tensors, normalised with the dataset's statistics (and ZCA-whitened
    when the data carries a fitted ``zca``)."""
    mean, std = data["mean"], data["std"]
    train_x, val_x = to_tensor(data["train_x"], mean, std), to_tensor(data["val_x"], mean, std)
    if data.get("zca") is not None:
        train_x, val_x = apply_zca(train_x, data["zca"]), apply_zca(val_x, data["zca"])
    return {"train_x": train_x, "train_y": torch.from_numpy(data["train_y"]),
            "val_x": val_x, "val_y": torch.from_numpy(data["val_y"])}


def _teacher_from(state: dict[str, Any] | None, device: Any) -> torch.nn.Module | None:
    if not state:
        return None
    t = build_student(state["arch"], state["channels"], state["num_classes"], state["im_size"])
    t.load_state_dict(state["weights"])
    return t.to(device).eval()


def run_local_job(job: dict[str, Any], data: dict[str, np.ndarray],
                  teacher_state: dict[str, Any] | None = None, device: str = "cpu") -> dict[str, Any]:
    """One (set, student, seed) run in this process (``eval.backend=local``)."""
    d = _job_payload(data)
    res = train_student(job["spec"], d["train_x"], d["train_y"], d["val_x"], d["val_y"],
                        int(data["num_classes"]),
                        teacher=_teacher_from(teacher_state, device), device=device,
                        norm=(data["mean"], data["std"]))
    return {**{k: v for k, v in job.items() if k != "spec"}, **res}


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: train one student, report its metrics with a small checkpoint (result.json)."""
    # heavy: ray (not loaded when this module is imported)
    import ray
    import ray.train
    import ray.train.torch

    data = ray.get(config["data"][0])
    teacher_state = ray.get(config["teacher"][0]) if config.get("teacher") else None
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    d = _job_payload(data)
    wrap = ray.train.torch.prepare_model if world > 1 else None
    res = train_student(config["spec"], d["train_x"], d["train_y"], d["val_x"], d["val_y"],
                        int(data["num_classes"]),
                        teacher=_teacher_from(teacher_state, device), device=device, rank=rank,
                        world_size=world, wrap_model=wrap, norm=(data["mean"], data["std"]))
    metrics = {k: res[k] for k in ("final", "best", "reported", "best_epoch", "train_loss", "seconds",
                                   "epochs")}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        atomic_write_json(Path(tmp, "result.json"), res)
        report_checkpoint(metrics, tmp)


def _fit_job(job: dict[str, Any], refs: list[Any], cfg: dict[str, Any], storage: str) -> dict[str, Any]:
    """Driver side of one job (runs as a Ray task): build the TorchTrainer, fit, read result.json."""
    # heavy: ray (not loaded when this module is imported)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"spec": job["spec"], "data": refs[:1], "teacher": refs[1:],
                           "use_gpu": cfg["use_gpu"]},
        scaling_config=ScalingConfig(num_workers=cfg["num_workers"], use_gpu=cfg["use_gpu"],
                                     resources_per_worker={"CPU": cfg["cpus_per_job"]}),
        run_config=RunConfig(storage_path=storage, name=job["name"],
                             failure_config=FailureConfig(max_failures=cfg["max_failures"])),
    )
    result = fit_or_disk_full(trainer, storage)
    if result.checkpoint is None:
        raise RuntimeError(f"evaluation job {job['name']} finished without a result ({result.error})")
    with result.checkpoint.as_directory() as d:
        res = json.loads(Path(d, "result.json").read_text())
    return {**{k: v for k, v in job.items() if k != "spec"}, **res, "storage": result.path}


def run_ray_jobs(jobs: list[dict[str, Any]], data_refs: dict[str, Any], cfg: EvalConfig, storage: Path,
                 teacher_ref: Any = None, max_failures: int = 0, log=print) -> list[dict[str, Any]]:
    """Run ``jobs`` as TorchTrainer fits, at most ``max_concurrent`` at a time; results in job order."""
    # heavy: ray (not loaded when this module is imported)
    import ray

    fit = ray.remote(num_cpus=0, max_retries=0)(_fit_job)
    limit = concurrent_jobs(len(jobs), cfg, float(ray.cluster_resources().get("CPU", 1.0)))
    common = {"use_gpu": cfg.use_gpu, "num_workers": cfg.num_workers, "cpus_per_job": cfg.cpus_per_job,
              "max_failures": max_failures}
    storage.mkdir(parents=True, exist_ok=True)
    pending: dict[Any, int] = {}
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    nxt = 0
    while nxt < len(jobs) or pending:
        while nxt < len(jobs) and len(pending) < limit:
            job = jobs[nxt]
            refs = [data_refs[job["set"]]] + ([teacher_ref] if teacher_ref is not None else [])
            pending[fit.remote(job, refs, common, str(storage.resolve()))] = nxt
            nxt += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done[0])
        results[i] = ray.get(done[0])
        r = results[i]
        log(f"  eval {r['name']}: top-1 {r['final']:.2f}% (best {r['best']:.2f}%) in {r['seconds']:.0f}s")
    return [r for r in results if r is not None]


def longest_first(jobs: list[dict[str, Any]]) -> list[int]:
    """Job indices by training work (images x epochs), largest first, ties in job order: the greedy
    longest-processing-time order, so a long run (the full real set) never starts last beside idle workers."""
    def work(i: int) -> int:
        return int(jobs[i].get("images") or 0) * int(jobs[i]["spec"].get("epochs", 1))

    return sorted(range(len(jobs)), key=lambda i: -work(i))


class RunQueue:
    """Ray actor of a packed evaluation: hands out run indices (in ``order``, default job order) and keeps
    each finished run."""

    def __init__(self, n: int, order: list[int] | None = None) -> None:
        self.order = list(range(n)) if order is None else list(order)
        self.next_i, self.results = 0, {}

    def take(self) -> int | None:
        if self.next_i >= len(self.order):
            return None
        self.next_i += 1
        return self.order[self.next_i - 1]

    def put(self, i: int, result: dict[str, Any]) -> None:
        self.results[i] = result

    def finished(self) -> int:
        return len(self.results)

    def all(self) -> dict[int, dict[str, Any]]:
        return self.results


def _packed_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker of a packed evaluation: take runs from the queue until it is empty (no DDP: each
    worker trains its own students, one at a time, with ``spec.threads`` torch threads)."""
    # heavy: ray (not loaded when this module is imported)
    import ray

    queue, jobs, cache = config["queue"][0], config["jobs"], {}
    teacher_state = ray.get(config["teacher"][0]) if config.get("teacher") else None
    while (i := ray.get(queue.take.remote())) is not None:
        job = jobs[i]
        if job["set"] not in cache:
            raw = ray.get(config["data"][job["set"]][0])
            cache[job["set"]] = (_job_payload(raw), raw)
        d, raw = cache[job["set"]]
        res = train_student(job["spec"], d["train_x"], d["train_y"], d["val_x"], d["val_y"],
                            int(raw["num_classes"]), teacher=_teacher_from(teacher_state, "cpu"),
                            device="cpu", norm=(raw["mean"], raw["std"]))
        ray.get(queue.put.remote(i, {**{k: v for k, v in job.items() if k != "spec"}, **res}))


def _fit_packed(jobs: list[dict[str, Any]], refs: dict[str, list[Any]], teacher: list[Any], queue: list[Any],
                workers: int, cpus: float, storage: str, max_failures: int) -> str:
    """Driver side of a packed evaluation (a Ray task): one TorchTrainer with ``workers`` workers."""
    # heavy: ray (not loaded when this module is imported)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _packed_loop_per_worker,
        train_loop_config={"jobs": jobs, "data": refs, "teacher": teacher, "queue": queue},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(storage_path=storage, name="eval-packed",
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    result = fit_or_disk_full(trainer, storage)
    if result.error is not None:
        raise RuntimeError(f"packed evaluation failed: {result.error}")
    return str(result.path)


def concurrent_jobs(n_jobs: int, cfg: EvalConfig, total_cpus: float,
                    workers_per_job: int | None = None) -> int:
    """How many jobs run at once: ``max_concurrent``, else as many as the cores hold, at most one per job.

    A job has ``workers_per_job`` workers (default ``num_workers``; DDP when > 1), each running
    ``cfg.threads`` torch threads and holding at least ``cpus_per_job`` Ray CPUs, so without
    ``max_concurrent`` ``jobs x workers x threads <= total_cpus``: the CPU is never oversubscribed
    (a fractional ``cpus_per_job`` still runs a whole thread). At least one job always runs.
    """
    workers = cfg.num_workers if workers_per_job is None else workers_per_job
    per_job = max(cfg.cpus_per_job, cfg.threads) * workers
    slots = cfg.max_concurrent or max(1, int(total_cpus // per_job + 1e-9))
    return max(1, min(n_jobs, slots))


def packed_workers(n_jobs: int, cfg: EvalConfig, total_cpus: float) -> int:
    """Workers of the one packed TorchTrainer: ``max_concurrent``, else as many as the cluster's CPUs hold at
    ``cfg.threads`` torch threads each (``concurrent_jobs`` with one worker per job), at most one per
    run."""
    return concurrent_jobs(n_jobs, cfg, total_cpus, workers_per_job=1)


def run_packed_jobs(jobs: list[dict[str, Any]], data_refs: dict[str, Any], cfg: EvalConfig, storage: Path,
                    teacher_ref: Any = None, max_failures: int = 0, log=print) -> list[dict[str, Any]]:
    """Every job in one TorchTrainer (start-up paid once); results in job order, a progress bar meanwhile."""
    # heavy: ray (not loaded when this module is imported)
    import ray

    if cfg.use_gpu:
        raise DataError("eval.pack_runs runs on CPU workers; set eval.pack_runs=false for eval.use_gpu")
    workers = packed_workers(len(jobs), cfg, float(ray.cluster_resources().get("CPU", 1.0)))
    queue = ray.remote(num_cpus=0)(RunQueue).remote(len(jobs), longest_first(jobs))
    fit = ray.remote(num_cpus=0, max_retries=0)(_fit_packed)
    storage.mkdir(parents=True, exist_ok=True)
    ref = fit.remote(jobs, {n: [r] for n, r in data_refs.items()},
                     [teacher_ref] if teacher_ref is not None else [],
                     [queue], workers, cfg.cpus_per_job, str(storage.resolve()), max_failures)
    log(f"  eval: {len(jobs)} runs in one TorchTrainer with {workers} worker(s) x {cfg.cpus_per_job} CPU")
    shown = 0
    progress("evaluation", 0, len(jobs))
    while not ray.wait([ref], timeout=1.0)[0]:
        done = ray.get(queue.finished.remote())
        if done != shown:
            progress("evaluation", done, len(jobs))
            shown = done
    ray.get(ref)  # raises the trainer's error
    got = ray.get(queue.all.remote())
    if shown != len(got):  # the bar closes at its total; a second call would open a new one
        progress("evaluation", len(got), len(jobs))
    ray.kill(queue)
    for i in sorted(got):
        r = got[i]
        log(f"  eval {r['name']}: top-1 {r['final']:.2f}% (best {r['best']:.2f}%) in {r['seconds']:.0f}s")
    missing = [jobs[i]["name"] for i in range(len(jobs)) if i not in got]
    if missing:
        raise RuntimeError(f"packed evaluation finished without runs {missing[:5]}")
    return [got[i] for i in range(len(jobs))]


# ----------------------------------------------------------------------------- many sets
def eval_seeds(cfg: EvalConfig) -> list[int]:
    """The evaluation seeds: ``cfg.seed + r`` for r < repeats."""
    return [cfg.seed + r for r in range(cfg.repeats)]


def make_jobs(sets: dict[str, dict[str, Any]], cfg: EvalConfig) -> list[dict[str, Any]]:
    """One job per (set, student, seed); seeds are ``eval_seeds(cfg)``, or a per-seed draw's own seed
    (``info["seeds"]``; ``info["row"]`` names the table row the draws share)."""
    jobs = []
    for set_name, info in sets.items():
        for student in cfg.students:
            for seed in info.get("seeds") or eval_seeds(cfg):
                spec = TrainSpec.from_config(cfg, student, seed, ipc=info.get("ipc"),
                                             num_classes=info.get("num_classes"),
                                             set_lr=info.get("learned_lr")).to_dict()
                jobs.append({"set": set_name, "row": info.get("row", set_name), "student": student,
                             "seed": seed,
                             "images": info.get("n_images"), "name": f"{set_name}-{student}-s{seed}",
                             "spec": spec})
    return jobs


def aggregate(runs: list[dict[str, Any]], sets: dict[str, dict[str, Any]], cfg: EvalConfig,
              dataset: str, recipe: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per (set, student): mean and std over seeds (population std, as DC/MTT report); ``recipe``: the
    resolved protocol (``tuning.report_protocol.protocol_record``) each row carries into the reports."""
    rows = []
    for row_name in dict.fromkeys(info.get("row", k) for k, info in sets.items()):
        parts = {k: info for k, info in sets.items() if info.get("row", k) == row_name}
        info = next(iter(parts.values()))
        draws = {str(s): p["dir"] for p in parts.values() for s in p.get("seeds") or []}
        for student in cfg.students:
            mine = sorted((r for r in runs if r["set"] in parts and r["student"] == student),
                          key=lambda r: r["seed"])
            if not mine:
                continue
            final = np.asarray([r["final"] for r in mine])
            best = np.asarray([r["best"] for r in mine])
            shown = np.asarray([r.get("reported", r["final"]) for r in mine])  # the protocol's number
            rows.append({
                "dataset": dataset, "method": info["method"], "ipc": info["ipc"], "student": student,
                "student_kwargs": dict(cfg.student_kwargs.get(student, {})),
                "protocol": cfg.protocol, "augment": cfg.augment,
                "in_mean": student not in cfg.exclude_from_mean, "top1_mean": round(float(shown.mean()), 2),
                "top1_std": round(float(shown.std()), 2), "reported": mine[0].get("report", "final"),
                "repeats": len(mine),
                "best_mean": round(float(best.mean()), 2), "best_std": round(float(best.std()), 2),
                "final_mean": round(float(final.mean()), 2), "final_std": round(float(final.std()), 2),
                "epochs": mine[0].get("epochs", cfg.epochs), "preset": cfg.preset, "images": info["n_images"],
                "normalization": info.get("normalization"),
                "distilled": info["dir"], "seconds": round(float(sum(r["seconds"] for r in mine)), 1),
                "runs": [{"seed": r["seed"], "final": round(r["final"], 2), "best": round(r["best"], 2),
                          "reported": round(float(r.get("reported", r["final"])), 2),
                          "best_epoch": r["best_epoch"], "epochs": r.get("epochs"), "lr": r.get("lr"),
                          "batch_size": r.get("batch_size"),
                          "final_per_class": [None if a is None else round(a, 2)
                                              for a in r.get("final_per_class", [])]}
                         for r in mine],
                "recipe": recipe, **({"draws": draws} if draws else {}),
            })
    return rows


def set_parts(sets: dict[str, Any], cfg: EvalConfig) -> dict[str, tuple[str, Any, list[int] | None]]:
    """``{job set key: (row name, folder, seeds or None)}``: a set given as a folder runs every seed; one
    given as
    ``{seed: folder}`` (per-seed draws, e.g. random real drawn afresh per seed as DD-Ranking does) runs each
    draw at its own seed only, and its draws must be exactly the evaluation seeds."""
    out: dict[str, tuple[str, Any, list[int] | None]] = {}
    for name, d in sets.items():
        if not isinstance(d, dict):
            out[name] = (name, d, None)
            continue
        given, want = sorted(int(s) for s in d), eval_seeds(cfg)
        if given != want:
            raise DataError(f"set {name!r} has draws for seeds {given}, but the evaluation runs seeds {want} "
                            "(eval.seed, eval.repeats): give one draw per seed")
        out.update({f"{name}@seed{s}": (name, f, [int(s)]) for s, f in d.items()})
    return out


def evaluate_sets(sets: dict[str, Any], val_root: str | os.PathLike, cfg: EvalConfig,
                  out_dir: str | os.PathLike, train_root: str | os.PathLike | None = None,
                  ray_cfg: RayConfig | None = None, methods: dict[str, str] | None = None,
                  write: bool = True, classes: list[str] | None = None, log=print) -> list[dict[str, Any]]:
    """Evaluate every distilled set in ``sets`` (name -> folder, or name -> {seed: folder} for per-seed draws,
    ``set_parts``) with every student; return rows.

    ``methods`` optionally renames a set's method in the table (default: the manifest's);
    ``classes`` restricts the real val set to a class subset (sweeps on a few classes).
    Results are written (merged) to ``out_dir/results.{json,csv,md}`` when ``write``.
    """
    cfg = check_eval(cfg)
    out = Path(out_dir)
    t0 = time.time()
    # the real val set first: its classes define the labels; its size follows the first set
    parts = set_parts(sets, cfg)
    size = cfg.image_size or load_distilled_size(next(iter(parts.values()))[1])
    val_x, val_y, classes, _ = load_image_arrays(val_root, size, classes=classes, skip_bad=True,
                                                 resize=val_resize_for(size, cfg.val_resize))
    # one for every set, never a set's own
    norm = dataset_norm(cfg, classes, train_root, val_x, size, log=log)
    zca = fit_dataset_zca(cfg, train_root, classes, size, norm) if cfg.zca else None
    loaded: dict[str, dict[str, Any]] = {}
    arrays: dict[str, dict[str, Any]] = {}
    for key, (name, d, seeds) in parts.items():
        x, y, meta = load_distilled(d, classes, size)
        method = (methods or {}).get(name, meta["method"])
        loaded[key] = {"method": method, "ipc": meta["ipc"], "dir": str(d), "n_images": len(y),
                       "num_classes": len(classes), "row": name, "normalization": norm["source"],
                       "learned_lr": learned_lr(d) if cfg.lr_from_set else None,
                       **({"seeds": seeds} if seeds else {})}
        arrays[key] = {"train_x": x, "train_y": y, "val_x": val_x, "val_y": val_y, "mean": norm["mean"],
                       "std": norm["std"], "num_classes": len(classes), "zca": zca}
        lr_note = (f", learned lr {loaded[key]['learned_lr']:g}" if loaded[key]["learned_lr"] is not None
                   else "")
        if cfg.lr_from_set and not lr_note:
            lr_note = f", no learned lr beside the images: DC's evaluate_synset with its fixed lr {cfg.lr:g}"
        log(f"eval set {key}: {len(y)} images ({method}, IPC {meta['ipc']}{lr_note}) from {d}")
    dataset = cfg.dataset or dataset_name(val_root)
    teacher_state = None
    if cfg.protocol == "soft" and cfg.teacher_checkpoint and cfg.teacher_checkpoint != SCRATCH:
        teacher_state = load_teacher_checkpoint(cfg, len(classes), size)
        log(f"teacher {cfg.teacher}: loaded from {cfg.teacher_checkpoint}")
    elif cfg.protocol == "soft":
        if train_root is None:
            raise DataError("eval.protocol=soft needs the real training set for the teacher (--train / "
                            "data.root) or a pretrained one (eval.teacher_checkpoint)")
        teacher_state = fit_teacher(train_root, classes, size, cfg, (val_x, val_y), log=log)
    recipe = protocol_record(cfg, size, len(val_y), val_resize_for(size, cfg.val_resize),
                             normalisation_label(teacher_state, norm))
    jobs = make_jobs(loaded, cfg)
    log(f"evaluating {len(loaded)} set(s) x {len(cfg.students)} student(s) x {cfg.repeats} seed(s) = "
        f"{len(jobs)} job(s) on {cfg.backend}")
    if cfg.backend == "local":
        runs = [run_local_job(j, _teacher_normalised(arrays[j["set"]], teacher_state), teacher_state)
                for j in jobs]
    else:
        # imported when called: tests replace it on its module
        from pipeline.core.ray_setup import ray_session

        with ray_session(ray_cfg):
            import ray

            refs = {n: ray.put(_teacher_normalised(a, teacher_state)) for n, a in arrays.items()}
            teacher_ref = ray.put(teacher_state) if teacher_state else None
            run = run_packed_jobs if cfg.pack_runs and cfg.num_workers == 1 else run_ray_jobs
            runs = run(jobs, refs, cfg, out / "ray_train", teacher_ref,
                       max_failures=(ray_cfg.max_restarts if ray_cfg else 0), log=log)
    rows = aggregate(runs, loaded, cfg, dataset, recipe)
    log(f"evaluation took {time.time() - t0:.0f}s")
    if write:
        write_results(rows, out)
    return rows


SCRATCH = "scratch"  # eval.teacher_checkpoint: train the soft-label teacher on the real train split


def check_eval(cfg: EvalConfig) -> EvalConfig:
    """The preset-resolved eval section, checked before anything loads or trains: student names, the
    headline's exclusions, and the pretrained teacher a preset requires (rded / sre2l)."""
    cfg = resolve_preset(cfg)
    check_students(cfg.students)
    check_students(cfg.channels_last, key="eval.channels_last")
    check_excluded(cfg.exclude_from_mean)
    if cfg.protocol == "soft" and cfg.teacher_required and not cfg.teacher_checkpoint:
        raise ConfigError(f"eval.preset {cfg.preset!r} relabels with a pretrained teacher: set "
                          f"eval.teacher_checkpoint to a ResNet-18 state dict (ours, torchvision's or timm's "
                          f"layout) for eval.teacher={cfg.teacher!r}, or eval.teacher_checkpoint={SCRATCH} "
                          "to train one on the real train split first (not the peers' protocol)")
    ckpt = cfg.teacher_checkpoint
    if cfg.protocol == "soft" and ckpt and ckpt != SCRATCH and not Path(ckpt).is_file():
        raise DataError(f"eval.teacher_checkpoint {ckpt}: no such file (a ResNet-18 state dict, or "
                        f"eval.teacher_checkpoint={SCRATCH} to train the teacher on the real train split)")
    if cfg.zca and cfg.normalize == "imagenet":
        raise ConfigError("eval.zca whitens with the real train split's statistics (MTT's CIFAR option); "
                          "it contradicts eval.normalize=imagenet: drop one of the two")
    return cfg


def fit_dataset_zca(cfg: EvalConfig, train_root: str | os.PathLike | None, classes: list[str], size: int,
                    norm: dict[str, Any]) -> dict[str, torch.Tensor]:
    """ZCA fitted on the real train split, normalised like every input (``tuning.eval_inputs``)."""
    if not train_root:
        raise ConfigError("eval.zca fits on the real train split: give data.root (or --train)")
    x, _, _, _ = load_image_arrays(train_root, size, classes=classes, skip_bad=True)
    return fit_zca(to_tensor(x, norm["mean"], norm["std"]), cfg.zca_eps)


def load_distilled_size(root: str | os.PathLike) -> int:
    root = Path(root)
    man = root / MANIFEST
    if man.is_file():
        entries = read_manifest(root)["images"]
        if entries:
            return int(min(load_rgb(str(root / entries[0]["file"])).shape[:2]))
    index = scan_image_folder(root)
    return int(min(load_rgb(index.records[0].path).shape[:2]))


def normalisation_label(teacher_state: dict[str, Any] | None, norm: dict[str, Any]) -> str:
    """How ``evaluate_sets`` normalises each set's training images and the real val set (the protocol table's
    ``normalisation``; say here what the code there does)."""
    if teacher_state:
        mean, std = (np.round(np.asarray(teacher_state[k]), 3).tolist() for k in ("mean", "std"))
        return f"the soft-label teacher's mean {mean} and std {std}, for every set and the real val set"
    mean, std = ([round(float(v), 3) for v in norm[k]] for k in ("mean", "std"))
    return (f"the dataset's {norm['source']} statistics (mean {mean}, std {std}), the same for every set and "
            f"the real val set")


def _teacher_normalised(arrays: dict[str, Any], teacher_state: dict[str, Any] | None) -> dict[str, Any]:
    """With a teacher, inputs use the teacher's normalisation (it labels the student's inputs)."""
    if not teacher_state:
        return arrays
    return {**arrays, "mean": teacher_state["mean"], "std": teacher_state["std"]}


def load_teacher_checkpoint(cfg: EvalConfig, num_classes: int, size: int) -> dict[str, Any]:
    """The soft-label teacher from ``eval.teacher_checkpoint``: a state dict of
    ``build_student(eval.teacher)``
    in our names or, for ``resnet18_imagenet_*``, torchvision's / timm's (``tuning.teacher_ckpt``; a
    ``module.``
    prefix from DDP is dropped); inputs use ``eval.teacher_mean`` / ``teacher_std``."""
    path = Path(cfg.teacher_checkpoint or "")
    state = read_state_dict(path)
    net = build_student(cfg.teacher, 3, num_classes, size)
    try:
        load_into(net, state)
    except RuntimeError as err:
        raise DataError(f"eval.teacher_checkpoint {path} does not fit eval.teacher={cfg.teacher!r} with "
                        f"{num_classes} classes at {size} px: {str(err).splitlines()[0]}") from None
    return {"arch": cfg.teacher, "channels": 3, "num_classes": num_classes, "im_size": size,
            "weights": net.state_dict(), "mean": np.asarray(cfg.teacher_mean, dtype=np.float32),
            "std": np.asarray(cfg.teacher_std, dtype=np.float32), "top1": None}


def fit_teacher(train_root: str | os.PathLike, classes: list[str], size: int, cfg: EvalConfig,
                val: tuple[np.ndarray, np.ndarray], log=print) -> dict[str, Any]:
    """Train the soft-label teacher on the real training set (in this process); return its state.

    The set is streamed from its files (``tuning.stream``): one pass for the channel statistics, then each
    batch decoded when it is trained on (``eval.teacher_workers`` processes), so memory holds a few batches.
    """
    data = scan_stream(train_root, size, classes=classes, workers=cfg.teacher_workers)
    if data.classes != list(classes):
        raise DataError(f"the real train set {train_root} has classes {data.classes[:10]}, the val set "
                        f"{list(classes)[:10]}: give both the same class folders")
    vx = to_tensor(val[0], data.mean, data.std)
    model, info = train_teacher(cfg.teacher, data, len(classes), cfg.teacher_epochs,
                                val=(vx, torch.from_numpy(val[1])), seed=cfg.seed,
                                threads=max(1, int(cfg.cpus_per_job)))
    log(f"teacher {cfg.teacher}: {info['final']:.2f}% on real val after {cfg.teacher_epochs} epochs "
        f"({len(data)} images streamed from {train_root})")
    return {"arch": cfg.teacher, "channels": data.channels, "num_classes": len(classes), "im_size": size,
            "weights": {k: v.cpu() for k, v in model.state_dict().items()}, "mean": data.mean,
            "std": data.std, "top1": info["final"]}


# ----------------------------------------------------------------------------- results files
def _key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in ROW_KEY) + (json.dumps(row.get("student_kwargs") or {}, sort_keys=True),)


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``new`` replace rows of ``old`` with the same ``ROW_KEY`` (and student arguments): a run with
    another preset or another reported accuracy adds rows beside them."""
    keys = {_key(r) for r in new}
    return [r for r in old if _key(r) not in keys] + list(new)


def student_label(row: dict[str, Any]) -> str:
    """``resnet18`` or, with non-default constructor arguments, ``resnet18 (width=16)``."""
    kw = row.get("student_kwargs") or {}
    return row["student"] + (" (" + ", ".join(f"{k}={v}" for k, v in sorted(kw.items())) + ")" if kw else "")


GROUP_KEY = ("preset", "reported", "protocol", "augment")


def _group_key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row.get(k) or ("final" if k == "reported" else "")) for k in GROUP_KEY)


def table_groups(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows split by (preset, reported accuracy, protocol, augment) for the method x student tables: a set
    evaluated with two presets, or with and without augmentation (DD-Ranking's ARS), gets a row in each
    table, never one cell overwriting or averaging the other. Runs with augmentation first; one group with an
    empty title when all rows share all four; a title names the preset and the reported accuracy only when
    they differ between groups."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_group_key(r), []).append(r)
    keys = sorted(groups, key=lambda k: (k[3] == "none", k))
    if len(keys) == 1:
        return [("", groups[keys[0]])]
    presets, reported = len({k[0] for k in keys}) > 1, len({k[1] for k in keys}) > 1

    def title(k: tuple[str, ...]) -> str:
        parts = ([f"preset {k[0] or 'none'}"] if presets else []) + [f"protocol {k[2]}, augment {k[3]}"]
        parts += [f"top-1 {k[1]}"] if reported else []
        return ", ".join(parts) + (" (DD-Ranking ARS)" if k[3] == "none" else "")

    return [(title(k), groups[k]) for k in keys]


def headline_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the first table group: one preset and reported accuracy, with augmentation (the report's
    bar chart)."""
    return table_groups(rows)[0][1] if rows else []


def ipc_label(rows: list[dict[str, Any]]) -> str:
    """The IPCs that ran, for a heading: ``IPC 10``, ``IPC 1 and 10``, ``IPC 1, 10 and 50``."""
    ipcs = [str(i) for i in sorted({int(r["ipc"]) for r in rows})]
    return "IPC " + (", ".join(ipcs[:-1]) + " and " + ipcs[-1] if len(ipcs) > 1 else "".join(ipcs))


def headline_by_seed(rows: list[dict[str, Any]]) -> dict[tuple[int, int], float]:
    """Per (distillation seed, evaluation seed), the headline of one set: the mean over its students in the
    headline (``in_mean``; all of them when none is) of that seed's reported top-1. Only the seed pairs every
    such student ran (a set made once has distillation seed 0)."""
    counted = [r for r in rows if in_mean(r)] or list(rows)
    students = {student_label(r) for r in counted}
    by_seed: dict[tuple[int, int], list[float]] = {}
    for r in counted:
        for run in r.get("runs") or []:
            by_seed.setdefault((int(r.get("distill_seed") or 0), int(run["seed"])),
                               []).append(run_value(run, r))
    return {s: float(np.mean(v)) for s, v in sorted(by_seed.items()) if len(v) == len(students)}


def headline_cell(rows: list[dict[str, Any]]) -> str:
    """The headline mean of one set with its std over seeds (population, as the table's other cells: the
    std of the per-seed headlines); the mean alone for rows that kept no runs or ran one seed."""
    seeds = headline_by_seed(rows)
    mean = f"{mean_top1(rows):.2f}"
    return mean + (f" ± {float(np.std(list(seeds.values()))):.2f}" if len(seeds) > 1 else "")


def student_cell(rows: list[dict[str, Any]]) -> str:
    """One student's top-1 on one set, mean ± std (population) over every run of ``rows``: the row's own
    numbers when the set was made once, else pooled over its distillation seeds."""
    if len(rows) == 1:
        return f"{rows[0]['top1_mean']:.2f} ± {rows[0]['top1_std']:.2f}"
    values = [run_value(run, r) for r in rows for run in r.get("runs") or []]
    if not values:
        return f"{np.mean([r['top1_mean'] for r in rows]):.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def _pivot_markdown(rows: list[dict[str, Any]], title: str) -> list[str]:
    """One method x student table of rows sharing preset, reported accuracy, protocol and augmentation
    (``title`` names them)."""
    students = sorted({student_label(r) for r in rows})
    counted = sorted({student_label(r) for r in rows if in_mean(r)})
    what = (f"mean over {', '.join(counted)} (eval.exclude_from_mean leaves out "
            f"{', '.join(sorted({student_label(r) for r in rows if not in_mean(r)})) or 'none'})"
            if counted else "mean over all students († every student is in eval.exclude_from_mean)")
    what += " ± the std over seeds of the per-seed mean (with two seeds or more)"
    shown = ", ".join(sorted({str(r.get("reported", "final")) for r in rows}))
    pivot = ["", (f"**{title}.** " if title else "") + f"Top-1 (%) = {shown}, mean ± std over seeds; "
             f"last column: {what}.", "",
             "| dataset | IPC | method | " + " | ".join(students) + " | mean |",
             "|---|---:|---|" + "---:|" * (len(students) + 1)]
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:  # a set made with several distillation seeds: one cell over all of its runs
        groups.setdefault((r["dataset"], r["ipc"], r["method"]),
                          {}).setdefault(student_label(r), []).append(r)
    for (ds, ipc, method), by in sorted(groups.items()):
        cells = [student_cell(by[s]) if s in by else "-" for s in students]
        mean = headline_cell([r for rs in by.values() for r in rs]) + ("" if counted else " †")
        pivot.append(f"| {ds} | {ipc} | {method} | " + " | ".join(cells) + f" | {mean} |")
    return pivot


def results_markdown(rows: list[dict[str, Any]], protocol: bool = True) -> str:
    """The evaluation protocol of every preset (``protocol``), a markdown table (one row per
    dataset/method/IPC/student/preset/reported/protocol/augment), a method x student pivot per table group and
    the DD-Ranking scores."""
    if not rows:
        return "_no results_\n"
    head = protocol_markdown(rows) if protocol else []
    lines = [("| dataset | method | IPC | student | protocol | augment | top-1 (%) | best (%) | repeats | "
             "top-1 is | preset |"),
             "|---|---|---:|---|---|---|---:|---:|---:|---|---|"]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["ipc"], r["method"], r["student"],
                                         _group_key(r)[3] == "none", _group_key(r))):
        lines.append(f"| {r['dataset']} | {r['method']} | {r['ipc']} | {student_label(r)} | "
                     f"{r.get('protocol', '')} | {r.get('augment', '')} | {r['top1_mean']:.2f} ± "
                     f"{r['top1_std']:.2f} | {r.get('best_mean', float('nan')):.2f} | {r['repeats']} | "
                     f"{r.get('reported', 'final')} | {r.get('preset') or ''} |")
    pivot = [line for title, group in table_groups(rows) for line in _pivot_markdown(group, title)]
    return "\n".join(head + lines + pivot + scores_markdown(scores(rows))) + "\n"


CSV_FIELDS = ["dataset", "method", "ipc", "student", "protocol", "augment", "top1_mean", "top1_std",
              "reported", "repeats",
              "best_mean", "best_std", "final_mean", "final_std", "epochs", "preset", "images", "distilled",
              "distill_seed"]


def write_results(rows: list[dict[str, Any]], out_dir: str | os.PathLike,
                  merge: bool = True) -> list[dict[str, Any]]:
    """Write ``results.json`` (list of rows), ``results.csv`` and ``results.md``; return all rows."""
    out = Path(out_dir)
    path = out / "results.json"
    if merge and path.is_file():
        try:
            rows = merge_rows(json.loads(path.read_text()), rows)
        except (json.JSONDecodeError, TypeError):
            pass  # a broken old file is replaced
    atomic_write_json(path, rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    heading = f"# Results: {ipc_label(rows)}" if rows else "# Results"
    atomic_write_bytes(out / "results.md", (heading + "\n\n" + results_markdown(rows)).encode())
    return rows


def in_mean(row: dict[str, Any]) -> bool:
    """Whether a row counts in the headline mean: its ``in_mean`` flag (from ``eval.exclude_from_mean``);
    rows written before the flag existed count, as they did (the table's caption names the students
    averaged)."""
    return bool(row.get("in_mean", True))


def mean_top1(rows: list[dict[str, Any]]) -> float:
    """The headline mean (table and sweep): final top-1 averaged over the rows' students that are not in
    ``eval.exclude_from_mean`` (DIVER's mean over unseen architectures); over all of them when none is
    left."""
    vals = [r["top1_mean"] for r in rows if in_mean(r)] or [r["top1_mean"] for r in rows]
    return float(np.mean(vals)) if vals else math.nan


def check_excluded(names: list[str]) -> None:
    """``eval.exclude_from_mean`` names must be students (a typo would silently keep the proxy in the
    mean)."""
    bad = [n for n in names if n not in STUDENTS]
    if bad:
        raise ConfigError(f"eval.exclude_from_mean: unknown student(s) {bad}; choose from "
                          f"{', '.join(STUDENTS)}")


def stage1_images(entry: dict[str, Any]) -> Path | None:
    """The folder of a DIVER set's input as images, which the evaluation trains on beside DIVER's output: a
    tensor input written as images by the DIVER run (``input_images``), a folder with a manifest (DM), or an
    ImageFolder input; None when the run predates ``input_images`` and its input is a tensor file."""
    if entry.get("input_images"):
        return Path(entry["input_images"])
    stage1 = Path(entry.get("stage1", ""))
    if (stage1 / MANIFEST).is_file() or (entry.get("input_format") == "imagefolder" and stage1.is_dir()):
        return stage1
    return None


def sets_from_summary(summary: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The distilled sets a ``run`` produced (EDITS: one; DIVER: its input, whatever its format, and the
    recovered set, per IPC), as ``{set name: folder}`` and ``{set name: method name}``."""
    sets: dict[str, str] = {}
    methods: dict[str, str] = {}
    if summary.get("method") == "diver" and summary.get("sets"):
        for name, entry in summary["sets"].items():
            stage1 = stage1_images(entry)
            if stage1 is not None:  # DIVER's input (DM, an ImageFolder, a tensor set as images): its own row
                method = (json.loads((stage1 / MANIFEST).read_text()).get("method")
                          if (stage1 / MANIFEST).is_file()
                          else None) or "stage1"
                sets[f"{method}_{name}"], methods[f"{method}_{name}"] = str(stage1), method
            sets[f"diver_{name}"], methods[f"diver_{name}"] = entry["recovered"], "diver"
    else:
        name = str(summary.get("method") or "distilled")
        sets[name], methods[name] = str(summary["output"]), name
    return sets, methods


def set_ipc(root: str | os.PathLike) -> int:
    """Images per class of a distilled set (the most common count), from its manifest or folder."""
    man = Path(root) / MANIFEST
    if man.is_file():
        ids = [str(e["class_id"]) for e in read_manifest(root)["images"]]
    else:
        ids = [r.class_id for r in scan_image_folder(root).records]
    if not ids:
        raise DataError(f"distilled set {root} has no images")
    return Counter(ids).most_common(1)[0][1]


def random_real_draws(train_root: str | os.PathLike, out: Path, ipc: int, seeds: list[int],
                      size: int | None = None, classes: list[str] | None = None) -> dict[int, str]:
    """``{seed: folder}``: a random-real set drawn afresh per evaluation seed (DD-Ranking draws its random
    reference per evaluation round, ``_get_random_data_helper(eval_iter=i)`` in ddranking/metrics)."""
    # imported when called: tests replace it on its module
    from tuning.baselines import build_baseline

    return {s: build_baseline("random_real", train_root, out / f"seed{s}", ipc, seed=s, size=size,
                              classes=classes)["output"] for s in seeds}


def baseline_sets(ev: EvalConfig, train_root: str | os.PathLike | None, out: Path, ipc: int,
                  classes: list[str] | None = None, log=print) -> tuple[dict[str, Any], dict[str, str]]:
    """Build ``ev.baselines`` (tuning/baselines.py) from the real train split at ``ipc``; ``({name: folder},
    {name:
    method})``. Random real is drawn afresh per evaluation seed (``{seed: folder}``), the others once."""
    # imported when called: tests replace it on its module
    from tuning.baselines import build_baseline

    if not train_root:
        raise ConfigError("eval.baselines needs the real training split (data.root)")
    sets: dict[str, Any] = {}
    for name in ev.baselines:
        key = name if name == "full_real" else f"{name}_ipc{ipc}"
        if name == "random_real":
            sets[key] = random_real_draws(train_root, out / key, ipc, eval_seeds(resolve_preset(ev)),
                                          size=ev.image_size, classes=classes)
            log(f"baseline {key}: one draw per seed {sorted(sets[key])}")
            continue
        res = build_baseline(name, train_root, out / key, ipc, seed=ev.seed, size=ev.image_size,
                             classes=classes)
        sets[key] = res["output"]
        log(f"baseline {key}: {res['images']} images")
    return sets, {k: k.rsplit("_ipc", 1)[0] for k in sets}


def evaluate_run(cfg: Any, summary: dict[str, Any], log=print) -> list[dict[str, Any]]:
    """``semdistill run`` with an ``eval`` section: evaluate what the run wrote, results in output.dir."""
    if not cfg.data.val_root:
        raise ConfigError("the eval section needs data.val_root (the real validation set)")
    sets, methods = sets_from_summary(summary)
    ev = cfg.eval if cfg.eval.image_size else cfg.eval.model_copy(update={"image_size": cfg.data.image_size})
    if ev.baselines:
        more, more_methods = baseline_sets(ev, cfg.data.root, Path(cfg.output.dir) / "baselines",
                                           ev.baseline_ipc or set_ipc(next(iter(sets.values()))),
                                           classes=cfg.data.classes, log=log)
        sets, methods = {**sets, **more}, {**methods, **more_methods}
    return evaluate_sets(sets, cfg.data.val_root, ev, cfg.output.dir, train_root=cfg.data.root,
                         ray_cfg=cfg.ray, methods=methods, classes=cfg.data.classes, log=log)
