"""DIVER recovery vs plain DiT sampling: time and peak memory, same DiT, same steps, one run.

Both sides run the same number of DDIM steps (all N with ``reverse_start: top``, the default) on the
same batch and decode with the same VAE:
- plain: pure noise at ``timesteps[start_step]`` -> class-conditional DDIM with CFG -> decode;
- DIVER: VAE-encode the input -> inherit (noise to ``start_step``) -> the same DDIM loop with
  semantic guidance in the fusion window -> decode.
Runs alternate (plain, DIVER, DIVER, plain, ...) so machine noise and warm caches hit both alike; the ratio
uses the fastest run of each (the least disturbed). Peak memory: ``torch.cuda.max_memory_allocated``
on GPU, else the peak process RSS above the pre-run level, sampled every millisecond.

    python bench/diver_overhead.py                      # zoo DiT, CPU
    python bench/diver_overhead.py --model zoo:demo_dit --batch 8 --repeats 5
    python bench/diver_overhead.py --model facebook/DiT-XL-2-256 --resolution 256 --device cuda

The paper reports 2.48 s vs 2.41 s per image (1.03x). The last line is ``ratio: <DIVER/plain time>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from actors.dit import load_dit
from actors.latents import decode_latents, encode_images
from pipeline.core.seeds import image_seed
from pipeline.diver.guidance import RecoverSettings, image_noise, recover_latents, sample_latents


class PeakRSS:
    """Peak resident memory (bytes) above the level at ``start``, sampled in a thread."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:  # noqa: PYI034 (typing.Self needs Python 3.11; we support 3.10)
        self.base = self._rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss() - self.base)


def measure(fn, device: torch.device) -> tuple[float, float]:
    """(seconds, peak bytes) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t, float(torch.cuda.max_memory_allocated() - base)
    with PeakRSS() as mem:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
    return dt, float(mem.peak)


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="zoo:dit",
                   help="DiT pipeline: zoo:dit, zoo:demo_dit, a folder or a hub id")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--resolution", type=int, default=None,
                   help="VAE input size (default: 2x/8x the latent size)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--start-step", type=int, default=25)
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    transformer, vae, scheduler = load_dit(args.model, dtype=args.dtype, device=args.device)
    device = next(transformer.parameters()).device
    latent = transformer.config.sample_size
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    res = args.resolution or latent * factor
    settings = RecoverSettings.of(num_inference_steps=args.steps, start_step=args.start_step,
                                  gamma=args.gamma, fusion_window=(min(40, args.steps - 1), args.start_step))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, res, res, generator=g)
    labels = torch.arange(args.batch, device=device) % 10
    seeds = [image_seed(0, str(i % 10), i) for i in range(args.batch)]
    shape = (transformer.config.in_channels, latent, latent)

    def plain() -> None:
        noise = image_noise(seeds, shape).to(device)
        scheduler.set_timesteps(settings.diver.num_inference_steps)
        z = sample_latents(transformer, scheduler, noise, labels, settings, z_d=None)
        decode_latents(vae, z, size=(res, res))

    def diver() -> None:
        z_d = encode_images(vae, images, res).to(device)
        noise = image_noise(seeds, shape).to(device)
        z = recover_latents(transformer, scheduler, z_d, labels, settings, noise=noise)
        decode_latents(vae, z, size=(res, res))

    plain(), diver()  # warm-up (allocator, kernels)
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "diver": []}
    for r in range(args.repeats):  # swap which side goes first each repeat: no order bias
        order = (("plain", plain), ("diver", diver)) if r % 2 == 0 else (("diver", diver), ("plain", plain))
        for name, fn in order:
            runs[name].append(measure(fn, device))
    n_steps = settings.first_index() + 1  # reverse_start top (the default): all N steps, like plain DiT
    print(f"model {args.model} on {device} ({next(transformer.parameters()).dtype}), batch {args.batch}, "
          f"{res}px -> {latent}x{latent} latents, {n_steps} DDIM steps each, {args.repeats} alternating runs")
    print(f"{'':22s}{'plain DiT':>14s}{'DIVER':>14s}{'DIVER/plain':>14s}")
    best = {k: min(t for t, _ in v) for k, v in runs.items()}
    med = {k: statistics.median(t for t, _ in v) for k, v in runs.items()}
    mem = {k: max(m for _, m in v) for k, v in runs.items()}
    per_img = {k: best[k] / args.batch for k in best}
    print(f"{'time, fastest (s)':22s}{best['plain']:14.3f}{best['diver']:14.3f}"
          f"{best['diver'] / best['plain']:14.3f}")
    print(f"{'time, median (s)':22s}{med['plain']:14.3f}{med['diver']:14.3f}"
          f"{med['diver'] / med['plain']:14.3f}")
    print(f"{'time per image (s)':22s}{per_img['plain']:14.4f}{per_img['diver']:14.4f}")
    mp, md = mem["plain"] / 2**20, mem["diver"] / 2**20
    print(f"{'peak memory (MiB)':22s}{mp:14.1f}{md:14.1f}{(md / mp if mp > 0 else float('nan')):14.3f}")
    ratio = best["diver"] / best["plain"]
    print(f"ratio: {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
