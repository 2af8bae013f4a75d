"""Per-item costs of every stage, in one table, with where each number comes from.

``source`` says how much to trust a row: ``paper`` (the authors' figure), ``measured``
(a benchmark of this project: ``bench/gpu_check.sh`` or ``bench/kmeans.py`` write JSON
files that ``load_measured`` lays over the table), or ``estimate`` (an educated guess for
the reference GPU, to be replaced by a measurement). ``semdistill plan`` prints the source
next to every stage so an estimate never passes for a measurement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parents[1] / "bench" / "results"


@dataclass(frozen=True)
class Cost:
    seconds: float  # per unit, on one ``device``
    unit: str
    device: str
    source: str  # paper | measured | estimate
    note: str = ""
    resource: str = "gpu"  # gpu | cpu | external (a served endpoint: no GPU of ours)


# fmt: off
COSTS: dict[str, Cost] = {
    # EDITS
    "finetune": Cost(0.10, "image x epoch", "A100-80GB", "estimate",
                     "SD 1.5 text-to-image fine-tune, 512 px, fp16, batch 8 per GPU"),
    "caption.vllm": Cost(0.06, "image", "A100-80GB", "estimate",
                         "LLaVA-1.5-7B fp16 on vLLM (continuous batching), ~60 output tokens"),
    "caption.transformers": Cost(0.60, "image", "A100-80GB", "estimate",
                                 "LLaVA-1.5-7B fp16, transformers generate, batch 16"),
    "embed": Cost(0.004, "image", "A100-80GB", "estimate",
                  "CLIP ViT-L/14 fp16, image + caption, batch 256; JPEG decode on CPU is often the limit"),
    "cluster": Cost(0.56, "class", "1 CPU core", "measured",
                    "sklearn KMeans(n_clusters=IPC, n_init=10) as EDITS's gen_prototype.py, 1,300 x 768, k = "
                    "IPC 10: one thread of the 2-core dev machine; 0.90 s per class for the 1,000-class run "
                    "under load",
                    resource="cpu"),
    "vae": Cost(0.012, "image", "A100-80GB", "estimate", "SD VAE (ft-mse) encoder at 512 px, fp16, batch 32"),
    "llm.vllm": Cost(0.03, "prompt", "A100-80GB", "estimate",
                     "Qwen2.5-7B-Instruct on vLLM, <= 77 output tokens, continuous batching"),
    "llm.transformers": Cost(1.5, "prompt", "A100-80GB", "estimate",
                             "7B LLM, transformers generate, batch 8"),
    "llm.openai": Cost(0.5, "prompt", "served endpoint", "estimate",
                       "OpenAI-compatible server; no GPU of this job", resource="external"),
    "generate.step": Cost(0.032, "image x UNet step", "A100-80GB", "estimate",
                          "SD 1.5 img2img UNet at 512 px fp16 with CFG (batch 2 per image)"),
    # DIVER
    "stage1_dm": Cost(0.02, "iteration x class", "A100-80GB", "estimate",
                      "distribution matching, ConvNet-3, batch_real 256, 128 px"),
    "recover.step": Cost(2.48 / 50, "image x DiT step", "RTX 4090", "paper",
                         "DIVER 2.48 s/image at batch 1 (paper), read as 50 DiT-XL/2 steps with CFG"),
    "plain_dit.step": Cost(2.41 / 50, "image x DiT step", "RTX 4090", "paper",
                           "plain DiT-XL/2 sampling 2.41 s/image (paper), 50 steps"),
}

# Seconds to start one actor and load its model (from a warm node-local HF_HOME cache).
LOAD_SECONDS: dict[str, float] = {
    "finetune": 60.0, "caption": 90.0, "embed": 15.0, "cluster": 0.0, "vae": 5.0, "llm": 90.0,
    "generate": 20.0, "stage1_dm": 5.0, "recover": 15.0,
}
# fmt: on


def load_measured(paths: list[str | Path] | None = None) -> tuple[dict[str, Cost], list[str]]:
    """The table with measured rows laid over it, and the files used.

    A results file is JSON with ``{"device": ..., "costs": {key: seconds_per_unit}}``;
    with no ``paths``, every ``bench/results/*.json`` is read (sorted by name, later wins).
    """
    table = dict(COSTS)
    files = [Path(p) for p in paths] if paths else sorted(RESULTS_DIR.glob("*.json"))
    used: list[str] = []
    for f in files:
        try:
            data: dict[str, Any] = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        costs = data.get("costs") or {}
        device = str(data.get("device", "unknown device"))
        hit = False
        for key, seconds in costs.items():
            if key in table and isinstance(seconds, (int, float)) and seconds > 0:
                table[key] = replace(table[key], seconds=float(seconds), device=device, source="measured",
                                     note=f"{f.name}: {data.get('note', table[key].note)}")
                hit = True
        if hit:
            used.append(str(f))
    return table, used
