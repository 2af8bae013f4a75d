#!/usr/bin/env bash
# How the demo's student epochs and batch size are chosen (pipeline/demo/run.py DEMO_EVAL_BY_IPC): on a holdout
# carved from the demo train split (20% per class, seed 0), never on the validation split the report uses.
# Random real at IPC from the rest, the demo's protocol (demo preset, DSA, SGD, cosine), each candidate
# (epochs, batch) with REPEATS seeds; the results.md row of each candidate is printed.
# Usage: scripts/choose_demo_eval_batch.sh [WORKDIR] [IPC]   (defaults .cache/demo-eval-batch-ipc<IPC>, 10)
#   environment: EPOCHS (default "20"), BATCHES (default "64 32 16"), REPEATS (default 2), STUDENTS (default
#   "convnet resnet18 lenet", the demo's), EVAL_ARGS (more
#   eval overrides, e.g. eval.backend=local: the runs one after another in this process, no Ray)
#   IPC 10 (about 5 min on 2 cores):  scripts/choose_demo_eval_batch.sh
#   IPC 1:  EPOCHS="100 300" BATCHES=10 REPEATS=3 scripts/choose_demo_eval_batch.sh "" 1
#   (at IPC 1 a batch is capped at the set's 10 images, so 10 is the full batch and 16 is the same run)
set -euo pipefail
cd "$(dirname "$0")/.."
IPC="${2:-10}"
W="$(realpath -m "${1:-.cache/demo-eval-batch-ipc$IPC}")"
PY="${PY:-.venv/bin/python}"
EPOCHS="${EPOCHS:-20}"
BATCHES="${BATCHES:-64 32 16}"
REPEATS="${REPEATS:-2}"
STUDENTS="${STUDENTS:-convnet resnet18 lenet}"
export HF_HUB_OFFLINE=1 SEMDISTILL_PROGRESS=0 PYTHONPATH="$PWD"
mkdir -p "$W"
"$PY" - "$W" "$IPC" <<'PYEOF'
import sys
from pathlib import Path

from pipeline.core.digits import write_demo_dataset
from tuning.baselines import build_baseline
from tuning.holdout import carve_holdout

w, ipc = Path(sys.argv[1]), int(sys.argv[2])
if not (w / "digits" / "dataset.json").exists():
    write_demo_dataset(w / "digits")
train, holdout = carve_holdout(w / "digits" / "train", w / "split", 0.2, seed=0)
if not (w / "random_real").exists():
    build_baseline("random_real", train, w / "random_real", ipc=ipc, seed=0)
(w / "holdout_path").write_text(str(holdout))
PYEOF
for ep in $EPOCHS; do
  for bs in $BATCHES; do
    every=$(( ep >= 20 ? ep / 2 : 0 ))
    "$PY" -m pipeline.cli eval --distilled "$W/random_real" --real "$(cat "$W/holdout_path")" \
      --students $STUDENTS --out "$W/e${ep}_b$bs" eval.preset=demo eval.dataset=digits \
      eval.repeats="$REPEATS" eval.epochs="$ep" eval.eval_every="$every" \
      'eval.student_kwargs={convnet: {width: 64}, resnet18: {width: 16}}' 'eval.channels_last=[resnet18]' \
      eval.cpus_per_job=1.0 eval.batch_size="$bs" \
      ${EVAL_ARGS:-} > "$W/e${ep}_b$bs.log" 2>&1
    echo "epochs $ep, batch $bs:"; grep -E "^\| digits \| $IPC \|" "$W/e${ep}_b$bs/results.md" || true
  done
done
