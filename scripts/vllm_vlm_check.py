#!/usr/bin/env python
"""The EDITS caption stage with ``models.vlm_backend: vllm``, for real, on a CPU (run by scripts/test-vllm-cpu.sh).

The project's caption stage (``pipeline.edits.caption.run_stage``, run by the EDITS stage runner as in
``run_edits``) captions a few demo digits with the zoo's LLaVA-1.5-architecture model (``zoo:llava``):

- ``--backend transformers`` (the main venv): ``actors.captioner.Captioner`` actors;
- ``--backend vllm`` (the vLLM venv): ``ray.data.llm`` with the prepare-multimodal and chat-template
  stages and vLLM's own LLaVA implementation; on a machine without GPUs the engine gets a CPU
  placement-group bundle (``models.vllm_processor_kwargs``).

Each run writes ``<out>/rows.json``: the caption cache's columns and rows, the stage key, the class of
every image and the stage's timing. With ``--reference`` (the transformers run's rows.json) the run is
checked against it (``compare_runs``): same columns, images and per-class counts, non-empty captions,
and cache keys made by the same rule that differ only through the backend settings. Caption texts are
not compared (the weights are random and the kernels differ); how many are equal is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# the stage-key entries that name the backend (and its engine settings): the only ones allowed to differ
BACKEND_KEYS = {"models.vlm_backend": "transformers", "input:vllm:vlm": None}


def caption_config(data: str, out: str, vlm: str, clip: str, backend: str, classes: list[str], per_class: int,
                   max_tokens: int = 24, image_size: int = 32) -> Any:
    """The run's config: ``per_class`` images of each of ``classes``, one captioner (one vLLM engine)."""
    from vllm_cpu_check import cpu_processor_kwargs

    from pipeline.config import config_from_dict

    raw: dict[str, Any] = {
        "data": {"root": data, "classes": classes, "max_per_class": per_class,
                 "class_names": str(Path(data).parent / "class_names.json")},
        "models": {"vlm": vlm, "clip": clip, "vlm_backend": backend},
        "edits": {"ipc": per_class, "caption_max_tokens": max_tokens, "caption_image_size": image_size},
        "ray": {"num_cpus": 8, "pool_sizes": {"caption": 1}, "batch_sizes": {"caption": 8}},
        "output": {"dir": out},
    }
    if backend == "vllm":
        raw["models"]["vllm_engine_kwargs"] = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048}
        raw["models"]["vllm_processor_kwargs"] = cpu_processor_kwargs()
    return config_from_dict(raw, "vllm_vlm_check")


def run_caption(cfg: Any) -> dict[str, Any]:
    """Run the caption stage (fresh output folder) and return what rows.json holds."""
    from pipeline.core.read import read_parquet
    from pipeline.edits import caption
    from pipeline.edits.run import StageRunner

    runner = StageRunner(cfg, None, log=print)
    with runner.ray():
        runner("caption", caption.run_stage)
    parts = sorted(runner.run.paths.captions.glob("part-*.parquet"))
    import pyarrow.parquet as pq

    columns = sorted({name for p in parts for name in pq.read_schema(p).names})
    rows = []
    for p in parts:
        cols = read_parquet(p)
        rows += [{c: str(cols[c][i]) for c in columns} for i in range(len(cols["path"]))]
    return {"backend": cfg.models.vlm_backend, "columns": columns, "key": runner.keys["caption"],
            "names": runner.run.names, "classes": {r.path: r.class_id for r in runner.run.index.records},
            "rows": sorted(rows, key=lambda r: r["path"]), "info": runner.results["caption"],
            "seconds": runner.timings["caption"]}


def expected_keys(run: dict[str, Any], key: dict[str, Any] | None = None) -> dict[str, str]:
    """path -> the cache key the stage gives that image's caption (``key``: the stage key to use)."""
    from pipeline.edits.caption import cache_settings_hash, row_key

    h = cache_settings_hash(key if key is not None else run["key"])
    return {p: row_key(h, run["names"][c]) for p, c in run["classes"].items()}


def compare_runs(ref: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """What differs between two caption runs beyond the backend (empty: the same rows)."""
    problems = []
    if got["columns"] != ref["columns"]:
        problems.append(f"columns {got['columns']} != {ref['columns']}")
    ref_paths, got_paths = [r["path"] for r in ref["rows"]], [r["path"] for r in got["rows"]]
    if got_paths != ref_paths:
        problems.append(f"images differ: {sorted(set(got_paths) ^ set(ref_paths))}")
    if got["info"].get("per_class") != ref["info"].get("per_class"):
        problems.append(f"per-class counts {got['info'].get('per_class')} != {ref['info'].get('per_class')}")
    for run in (ref, got):
        want = expected_keys(run)
        wrong = [r["path"] for r in run["rows"] if want.get(r["path"]) != r["key"]]
        if wrong:
            problems.append(f"{run['backend']}: {len(wrong)} rows keyed against the stage key rule, e.g. {wrong[0]}")
        empty = [r["path"] for r in run["rows"] if not r["caption"].strip()]
        if empty:
            problems.append(f"{run['backend']}: {len(empty)} empty captions, e.g. {empty[0]}")
    other = {k: v for k, v in got["key"].items() if k not in BACKEND_KEYS}
    if other != {k: v for k, v in ref["key"].items() if k not in BACKEND_KEYS}:
        problems.append("stage keys differ beyond the backend settings")
    neutral = expected_keys(got, {**got["key"], **BACKEND_KEYS})
    if got["key"] != ref["key"] and any(neutral[r["path"]] != r["key"] for r in ref["rows"]):
        problems.append("with the backend settings set back, the keys are not the other backend's keys")
    if got["key"] != ref["key"] and {r["key"] for r in got["rows"]} & {r["key"] for r in ref["rows"]}:
        problems.append("the two backends share cache keys (one would reuse the other's captions)")
    return problems


def print_run(run: dict[str, Any]) -> None:
    n, start = len(run["rows"]), "engine start" if run["backend"] == "vllm" else "model load"
    print(f"\ncaption stage, models.vlm_backend={run['backend']}: {n} captions in {run['seconds']:.1f} s "
          f"(incl. {start}); columns {run['columns']}; per class {run['info'].get('per_class')}")
    for r in run["rows"]:
        print(f"  {Path(r['path']).parent.name}/{Path(r['path']).name} key {r['key'][:12]}: {r['caption']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("transformers", "vllm"), required=True)
    p.add_argument("--vlm", required=True, help="the captioner's folder (the zoo's llava)")
    p.add_argument("--clip", required=True, help="the CLIP folder whose tokenizer caps captions (the zoo's clip)")
    p.add_argument("--data", required=True, help="an ImageFolder root with class_names.json beside it (demo digits)")
    p.add_argument("--out", required=True, help="run folder (cleared first); rows.json is written into it")
    p.add_argument("--classes", default="0,3,7")
    p.add_argument("--per-class", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--reference", default=None, help="rows.json of the other backend's run to compare with")
    args = p.parse_args(argv)
    import shutil

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cfg = caption_config(args.data, str(out), args.vlm, args.clip, args.backend, args.classes.split(","),
                         args.per_class, args.max_tokens)
    t0 = time.perf_counter()
    run = run_caption(cfg)
    run["wall_seconds"] = round(time.perf_counter() - t0, 2)
    run = json.loads(json.dumps(run))  # compared as the reference is: read back from JSON
    (out / "rows.json").write_text(json.dumps(run, indent=1, sort_keys=True))
    print_run(run)
    if not args.reference:
        return 0 if run["rows"] else 1
    ref = json.loads(Path(args.reference).read_text())
    problems = compare_runs(ref, run)
    same = sum(a["caption"] == b["caption"] for a, b in zip(ref["rows"], run["rows"]))
    print(f"\nvs {ref['backend']} ({len(ref['rows'])} rows, {ref['seconds']:.1f} s): "
          f"{same}/{len(run['rows'])} captions equal (greedy; random weights)")
    for line in problems:
        print(f"  MISMATCH: {line}")
    print("vllm VLM check: " + ("OK (same rows, schema and cache-key rule)" if not problems else "FAILED"))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
