#!/usr/bin/env python
"""Every Ray actor stage vs a plain serial loop over the same model, same rows, same cores.

Stages (the product's own builders, ``pipeline.core.actor_stage.ActorStage``): EDITS caption,
embed, VAE prototypes, LLM text prototypes, generate; DIVER recovery. The Ray side runs
``stage.dataset(cfg, rows)`` exactly as the pipeline does (blocks, decode tasks, pool size,
actor CPUs and threads from the config, here the product defaults on this machine's CPUs).
The serial side builds the same actor class with the same kwargs in this process and calls it
batch by batch (decoding inline) with ``torch.set_num_threads(T)``, for each T in
``--serial-threads`` (default: 1 and all cores; the ratio is against the faster).

Both sides alternate, round by round, in one process, so load hits them alike. Each model call
stamps its rows with the wall time it finished (the Ray side's actor class is wrapped to do it, so
the driver's prefetching cannot bunch arrivals). For each side:
- steady img/s: rows finished after the first model call / time from it to the last one
  (warm-up and start-up excluded);
- start-up s: time to the first finished call minus what that call costs at the steady rate:
  actor creation, imports and model load (Ray init is paid once and reported on its own line).
Ray's output bytes are checked against the serial loop's run at the actor's thread count.

    python bench/pipeline_throughput.py                         # all stages, 2 rounds
    python bench/pipeline_throughput.py --stages caption,embed --images 512 --rounds 3
    python bench/pipeline_throughput.py --set ray.pool_sizes={caption: 1}   # any config override

Ends with ``ratio: <the smallest per-stage steady ratio Ray / best serial>`` (target >= 0.9).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

SIZE = 32  # the demo's image size (captioner, CLIP, VAE, SD and DiT zoo models all work at 32 px)
STAGES = ("caption", "embed", "vae", "llm", "generate", "recover")
LABELS = {"caption": "EDITS caption", "embed": "EDITS embed", "vae": "EDITS VAE prototypes",
          "llm": "EDITS LLM text prototypes", "generate": "EDITS generate", "recover": "DIVER recovery"}
DONE = "_bench_done"  # the column of finish times the wrapped actors add
OUTPUT = {"caption": ("path", "caption"), "embed": ("path", "img_feat"), "vae": ("path", "latent"),
          "llm": ("key", "raw"), "generate": ("key", "image"), "recover": ("key", "recovered")}


@dataclass
class Workload:
    name: str
    stage: Any  # ActorStage
    cfg: Any
    rows: list[dict[str, Any]]


@dataclass
class Timing:
    start: float  # time.time() when the side started
    marks: list[tuple[float, int]] = field(default_factory=list)  # (finish time, rows) per model call
    outputs: dict[str, bytes] = field(default_factory=dict)

    def add(self, batch: dict[str, Any], name: str) -> None:
        done = np.asarray(batch.pop(DONE))
        for t in np.unique(done):
            self.marks.append((float(t), int((done == t).sum())))
        self.marks.sort()
        key, col = OUTPUT[name]
        for k, v in zip(batch[key], batch[col]):
            self.outputs[str(k)] = np.asarray(v).tobytes() if not isinstance(v, str) else v.encode()

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.marks)

    @property
    def total(self) -> float:
        return self.marks[-1][0] - self.start

    def steady(self) -> float | None:
        """img/s after the first output batch (None with a single output batch)."""
        if len(self.marks) < 2:
            return None
        later = sum(n for _, n in self.marks[1:])
        return later / max(1e-9, self.marks[-1][0] - self.marks[0][0])

    def startup(self) -> float:
        rate = self.steady() or self.rows / self.total
        return max(0.0, (self.marks[0][0] - self.start) - self.marks[0][1] / rate)


# ------------------------------------------------------------------ workloads


def base_config(root: Path, out: Path, cpus: int, overrides: list[str], method: str = "edits") -> Any:
    from pipeline.config import apply_overrides, config_from_dict

    raw: dict[str, Any] = {
        "method": method, "name": "throughput",
        "data": {"root": str(root), "image_size": SIZE},
        "models": {"vlm": "zoo:vlm", "clip": "zoo:clip", "vae": "zoo:vae", "sd": "zoo:sd", "llm": "zoo:llm",
                   "dit": "zoo:dit", "dtype": "float32"},
        "edits": {"ipc": 2, "caption_image_size": SIZE, "caption_max_tokens": 16, "feature_image_size": SIZE,
                  "vae_resolution": SIZE, "num_inference_steps": 10, "max_tokens": 16},
        "diver": {"resolution": SIZE},
        "ray": {"num_cpus": cpus, "object_store_memory_mb": 512},
        "output": {"dir": str(out)},
    }
    return config_from_dict(apply_overrides(raw, overrides))


def edits_workloads(work: Path, images: int, clusters: int, cpus: int, overrides: list[str],
                    names: tuple[str, ...]) -> dict[str, Workload]:
    from memory_scaling import make_synthetic_dataset

    from actors.loading import resolve_ref
    from pipeline.edits import caption, embed, generate, prototype
    from pipeline.edits.run import prepare_run

    root = make_synthetic_dataset(work / "data", images, n_classes=10, size=SIZE)
    cfg = base_config(root, work / "out", cpus, overrides)
    run = prepare_run(cfg, log=lambda _m: None)
    recs = run.index.records
    out: dict[str, Workload] = {}
    if "caption" in names:
        out["caption"] = Workload("caption", caption.caption_stage(run), cfg, run.index.rows())
    if "embed" in names:
        rows = [{"path": r.path, "class_id": r.class_id, "label": r.label,
                 "caption": f"a photo of {run.names[r.class_id]}, number {i}"} for i, r in enumerate(recs)]
        out["embed"] = Workload("embed", embed.embed_stage(run), cfg, rows)
    if "vae" in names:
        rows = [{"path": r.path, "key": f"{r.class_id}_{i % 2}"} for i, r in enumerate(recs)]
        out["vae"] = Workload("vae", prototype.vae_stage(run), cfg, rows)
    fake = [{"key": f"c{c:03d}_{j}", "class_id": run.index.classes[c % len(run.index.classes)], "cluster": j,
             "label": c % len(run.index.classes),
             "text_captions": [f"a photo of digit {c % 10}, style {j}, take {t}" for t in range(5)]}
            for c, j in ((i // 2, i % 2) for i in range(clusters))]
    if "llm" in names:
        out["llm"] = Workload("llm", prototype.llm_stage(run), cfg, prototype.text_rows(run, fake))
    if "generate" in names:
        import json

        from pipeline.core.seeds import image_seed

        vae_cfg = json.loads((Path(resolve_ref("sd", "zoo:sd",
                                               run.zoo_dir)) / "vae" / "config.json").read_text())
        side = SIZE // 2 ** (len(vae_cfg["block_out_channels"]) - 1)
        rng = np.random.default_rng(0)
        rows = [{"key": cl["key"], "class_id": cl["class_id"], "label": cl["label"], "cluster": cl["cluster"],
                 "latent": rng.normal(size=(vae_cfg["latent_channels"], side, side)).astype(np.float32),
                 "prompt": cl["text_captions"][0], "seed": image_seed(0, cl["class_id"], cl["cluster"])}
                for cl in fake]
        out["generate"] = Workload("generate", generate.generate_stage(run), cfg, rows)
    return out


def recover_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` distilled-like images: digits with noise, [0, 1] float HWC, a DiT class and a seed each."""
    from pipeline.core.digits import digits_arrays
    from pipeline.core.seeds import image_seed

    images, labels = digits_arrays(SIZE)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = images[i % len(images)].astype(np.float32) / 255.0
        img = np.clip(img + rng.normal(0, 0.15, img.shape), 0, 1).astype(np.float32)
        c = str(int(labels[i % len(labels)]))
        rows.append({"key": f"c{c}_i{i:03d}", "class_id": c, "dit_class": int(c),
                     "seed": image_seed(seed, c, i), "image": img})
    return rows


def diver_workload(work: Path, n: int, cpus: int, overrides: list[str]) -> Workload:
    from actors.dit import variance_usable
    from actors.loading import resolve_ref
    from pipeline.diver.guidance import RecoverSettings
    from pipeline.diver.recover import recover_stage
    from pipeline.diver.recovery import vae_ref_for

    cfg = base_config(work / "none", work / "diver", cpus, overrides, method="diver")
    model_dir = resolve_ref("dit", cfg.models.dit, cfg.models.zoo_dir)
    settings = RecoverSettings.from_mapping(cfg.diver.model_dump(mode="python"))
    settings = settings.for_variance(*variance_usable(model_dir), warn=lambda _m: None)
    return Workload("recover", recover_stage(cfg, model_dir, settings, vae_ref_for(cfg)), cfg,
                    recover_rows(n))


# ------------------------------------------------------------------ the two sides


def batches(rows: list[dict[str, Any]], n: int):
    for i in range(0, len(rows), n):
        part = rows[i:i + n]
        out = {}
        for k in part[0]:
            vals = [r[k] for r in part]
            out[k] = (np.asarray(vals, dtype=object) if isinstance(vals[0], str)
                      else np.stack(vals) if isinstance(vals[0], np.ndarray) else np.asarray(vals))
        yield out


def stamped(cls: type) -> type:
    """``cls`` whose calls add ``DONE``: the wall time each call finished, one value per row."""

    class Stamped(cls):
        def __call__(self, batch):
            out = super().__call__(batch)
            out[DONE] = np.full(len(next(iter(out.values()))), time.time())
            return out

    Stamped.__name__ = Stamped.__qualname__ = cls.__name__  # Ray names the operator after it
    return Stamped


def run_serial(w: Workload, threads: int) -> Timing:
    """The tight loop: the stage's actor built here, called on the stage's Ray batch size, decode inline."""
    import torch

    from pipeline.core.read import decode_batch

    torch.set_num_threads(threads)
    kw = w.stage.pool(w.cfg)
    ctor = {k: v for k, v in kw["fn_constructor_kwargs"].items() if k != "torch_threads"}
    t = Timing(time.time())
    actor = stamped(w.stage.actor)(**ctor)
    for b in batches(w.rows, kw["batch_size"]):
        if w.stage.decode is not None:
            b = decode_batch(b, **w.stage.decode)
        t.add(actor(b), w.name)
    del actor
    return t


def run_ray(w: Workload) -> Timing:
    from dataclasses import replace

    t = Timing(time.time())
    stage = replace(w.stage, actor=stamped(w.stage.actor))
    for b in stage.dataset(w.cfg, w.rows).iter_batches(batch_size=None, batch_format="numpy"):
        t.add(b, w.name)
    return t


def measure(w: Workload, rounds: int, serial_threads: list[int], log=print) -> dict[str, Any]:
    """Alternate serial (each thread count) and Ray for ``rounds`` rounds; per-round steady ratios."""
    plan_threads = w.stage.pool(w.cfg)["fn_constructor_kwargs"].get("torch_threads")
    res: dict[str, Any] = {"serial": {t: [] for t in serial_threads}, "ray": [], "same": None,
                           "pool": w.stage.pool(w.cfg)["compute"].max_size, "threads": plan_threads}
    for r in range(rounds):
        order = ["ray", *serial_threads] if r % 2 else [*serial_threads, "ray"]
        for side in order:
            t = run_ray(w) if side == "ray" else run_serial(w, side)
            (res["ray"] if side == "ray" else res["serial"][side]).append(t)
            log(f"  {w.name} round {r + 1} {'Ray' if side == 'ray' else f'serial x{side}'}: {t.rows} rows, "
                f"{t.total:.1f} s, steady {t.steady() or 0:.2f} img/s, start-up {t.startup():.1f} s, "
                f"load {os.getloadavg()[0]:.1f}")
        if plan_threads in res["serial"]:
            same = res["ray"][-1].outputs == res["serial"][plan_threads][-1].outputs
            res["same"] = same if res["same"] is None else res["same"] and same
    return res


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    def med(ts, f):
        vals = [f(t) for t in ts if f(t) is not None]
        return statistics.median(vals) if vals else None

    serial = {th: med(ts, Timing.steady) for th, ts in res["serial"].items()}
    best = max(serial, key=lambda th: serial[th] or 0)
    ratios = []
    for i, t in enumerate(res["ray"]):
        s_best = max((ts[i].steady() or 0) for ts in res["serial"].values())
        if t.steady() and s_best:
            ratios.append(t.steady() / s_best)
    return {"serial": serial, "best": best, "ray": med(res["ray"], Timing.steady),
            "ratio": statistics.median(ratios) if ratios else None,
            "serial_startup": med(res["serial"][best], Timing.startup),
            "ray_startup": med(res["ray"], Timing.startup),
            "rows": res["ray"][0].rows, "same": res["same"], "pool": res["pool"], "threads": res["threads"],
            "serial_total": sum(t.total for t in res["serial"][best]),
            "ray_total": sum(t.total for t in res["ray"])}


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def report(summ: dict[str, dict[str, Any]], cpus: int, ray_init_s: float) -> float:
    print()
    print(f"{'stage':<27} {'images':>6} {'pool x thr':>10} {'serial img/s (thr)':>22} {'Ray img/s':>10} "
          f"{'Ray/serial':>10} {'start-up s ser/Ray':>19} {'same bytes':>10}")
    for name, s in summ.items():
        ser = " ".join(f"{fmt(v)}({th})" for th, v in s["serial"].items())
        same = "-" if s["same"] is None else ("yes" if s["same"] else "NO")
        print(f"{LABELS[name]:<27} {s['rows']:>6} {s['pool']:>4} x {s['threads'] or '-':<3} {ser:>22} "
              f"{fmt(s['ray']):>10} {fmt(s['ratio']):>10} {fmt(s['serial_startup'], '.1f'):>9}/"
              f"{fmt(s['ray_startup'], '.1f'):<9} {same:>10}")
    pairs = [("EDITS caption + embed", ("caption", "embed")), ("all stages", tuple(summ))]
    for label, names in pairs:
        got = [summ[n] for n in names if n in summ]
        if len(got) == len(names):
            ser, ray = sum(s["serial_total"] for s in got), sum(s["ray_total"] for s in got)
            print(f"{label:<27} wall time start-up included: serial {ser:.1f} s, Ray {ray:.1f} s, "
                  f"Ray/serial throughput {ser / ray:.2f}")
    print(f"(Ray init, paid once: {ray_init_s:.1f} s; {cpus} CPUs; load average now "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; medians over rounds)")
    ratios = [s["ratio"] for s in summ.values() if s["ratio"] is not None]
    return min(ratios) if ratios else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Ray actor stages vs a serial loop, same tiny models, rows and "
                                            "cores")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    p.add_argument("--images", type=int, default=256, help="rows of the caption, embed and VAE stages")
    p.add_argument("--clusters", type=int, default=None,
                   help="rows of the LLM and generate stages (images / 8)")
    p.add_argument("--recover-images", type=int, default=32, help="images for DIVER recovery")
    p.add_argument("--batch", type=int, default=None,
                   help="one Ray batch size for every stage (default: config)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--serial-threads", default=None,
                   help="comma list of torch threads (default: 1 and all cores)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = p.parse_args(argv)
    names = tuple(s for s in args.stages.split(",") if s)
    bad = [s for s in names if s not in STAGES]
    if bad:
        p.error(f"unknown stages {bad}; choose from {STAGES}")
    cpus = os.cpu_count() or 2
    threads = sorted({int(x) for x in (args.serial_threads or f"1,{cpus}").split(",")})
    overrides = list(args.set)
    if args.batch:
        overrides.append("ray.batch_sizes={" + ", ".join(f"{r}: {args.batch}" for r in STAGES) + "}")
    os.environ.setdefault("SEMDISTILL_PROGRESS", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray

    from actors.zoo import build_zoo
    from pipeline.config import RayConfig
    from pipeline.core.ray_setup import init_ray

    build_zoo(roles=("tokenizer", "clip", "vlm", "llm", "vae", "sd", "dit"), log=lambda _m: None)
    work = Path(tempfile.mkdtemp(prefix="throughput_"))
    t0 = time.perf_counter()
    started = init_ray(RayConfig(num_cpus=cpus, object_store_memory_mb=512, log_to_driver=False))
    ray_init_s = time.perf_counter() - t0
    summ: dict[str, dict[str, Any]] = {}
    try:
        clusters = args.clusters or max(2, args.images // 8)
        loads = edits_workloads(work, args.images, clusters, cpus, overrides, names)
        if "recover" in names:
            loads["recover"] = diver_workload(work, args.recover_images, cpus, overrides)
        for name in (n for n in STAGES if n in loads):
            print(f"{LABELS[name]}: {len(loads[name].rows)} rows, {args.rounds} rounds ...", flush=True)
            summ[name] = summarize(measure(loads[name], args.rounds, threads))
    finally:
        if started:
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(f"ratio: {report(summ, cpus, ray_init_s):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
