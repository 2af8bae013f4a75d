#!/usr/bin/env bash
# How the demo's student batch size was chosen (pipeline/demo/run.py DEMO_EVAL): on a holdout carved from the
# demo train split (20% per class, seed 0), never on the validation split the report uses. Random real
# IPC 10 from the rest, the demo's protocol (demo preset, 20 epochs, 2 seeds), batch 64 / 32 / 16.
# Usage: scripts/choose_demo_eval_batch.sh [WORKDIR]   (default .cache/demo-eval-batch; about 5 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
W="$(realpath -m "${1:-.cache/demo-eval-batch}")"
PY="${PY:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 SEMDISTILL_PROGRESS=0 PYTHONPATH="$PWD"
mkdir -p "$W"
"$PY" - "$W" <<'PYEOF'
import sys
from pathlib import Path

from pipeline.core.digits import write_demo_dataset
from tuning.baselines import build_baseline
from tuning.holdout import carve_holdout

w = Path(sys.argv[1])
if not (w / "digits" / "dataset.json").exists():
    write_demo_dataset(w / "digits")
train, holdout = carve_holdout(w / "digits" / "train", w / "split", 0.2, seed=0)
if not (w / "random_real").exists():
    build_baseline("random_real", train, w / "random_real", ipc=10, seed=0)
(w / "holdout_path").write_text(str(holdout))
PYEOF
for bs in 64 32 16; do
  "$PY" -m pipeline.cli eval --distilled "$W/random_real" --real "$(cat "$W/holdout_path")" \
    --students convnet resnet18 mobilenetv2 --out "$W/batch_$bs" eval.preset=demo eval.dataset=digits \
    eval.repeats=2 eval.epochs=20 eval.eval_every=10 'eval.student_kwargs={resnet18: {width: 16}}' \
    eval.cpus_per_job=1.0 eval.batch_size="$bs" > "$W/batch_$bs.log" 2>&1
  echo "batch $bs:"; grep -E "^\| digits \| 10 \|" "$W/batch_$bs/results.md" || true
done
