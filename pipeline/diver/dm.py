"""DM (distribution matching, Zhao & Bilen 2023): the built-in classical stage-1 distiller.

Synthetic images per class are optimised so that randomly initialised ConvNets embed them
like the real class: each iteration draws a fresh ConvNet, augments real and synthetic
images of a class with the same DSA seed, and minimises the squared distance between the
mean embeddings, summed over classes (SGD on the pixels, momentum 0.5, as the reference).
Images live in normalised space (per-channel mean/std of the real set) and are written as
``images.pt`` (normalised, with its mean/std, the format MTT-style tools expect) plus an
ImageFolder of PNGs and a ``manifest.json``.

``semdistill distill dm --data DIR --ipc K --out OUT`` runs it from the command line.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from actors.loading import pick_device
from pipeline.config import DMConfig
from pipeline.core.console import progress
from pipeline.core.pixels import channel_stats, normalize, unit_chw_to_u8_hwc
from pipeline.core.read import load_image_arrays
from pipeline.core.write import DistilledSetWriter, atomic_write_json
from pipeline.diver.inputs import IMAGES_PT, save_pt
from pipeline.errors import DataError
from tuning.augment import DSA
from tuning.convnet import ConvNet

DM_LR_IMG = 1.0  # the DM reference's lr_img (main_DM.py), used when diver.stage1.lr_img is None


def load_real(root: str | Path, image_size: int | None = None, max_per_class: int | None = None,
              classes: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Real ImageFolder -> uint8 ``[N, 3, S, S]``, labels, class ids (unreadable files skipped: DM needs only
    class statistics). ``S`` defaults to the images' own size (the smallest side when they differ)."""
    real = load_image_arrays(root, image_size, classes=classes, max_per_class=max_per_class, skip_bad=True)
    x = torch.from_numpy(real.images).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(real.labels), real.classes


def real_stats(images_u8: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of uint8 ``[N, C, H, W]`` real images (``pipeline.core.pixels.channel_stats``)."""
    mean, std = channel_stats(images_u8.permute(0, 2, 3, 1).numpy())
    return mean.tolist(), std.tolist()


class SyntheticStart(NamedTuple):
    """What a from-scratch distiller starts from: the real images' indices per class, their normalisation, the
    synthetic images (a leaf tensor to optimise) and their labels."""

    by_class: list[torch.Tensor]
    real_norm: Callable[[torch.Tensor], torch.Tensor]
    syn: torch.Tensor
    labels: torch.Tensor


def synthetic_start(method: str, images_u8: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int,
                    init: str, mean: list[float], std: list[float], gen: torch.Generator,
                    device: torch.device) -> SyntheticStart:
    """The DC/DM reference start: ``init`` real (each class's first ``ipc`` images of a shuffle, cycled when a
    class
    has fewer) or noise (standard normal), every draw from ``gen`` in that order."""
    by_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    empty = [c for c, idx in enumerate(by_class) if len(idx) == 0]
    if empty:
        raise DataError(f"{method}: classes {empty} have no real images")

    def real_norm(idx: torch.Tensor) -> torch.Tensor:
        return normalize(images_u8[idx].float() / 255.0, mean, std)

    _, c_, h, w = images_u8.shape
    if init == "real":
        picks = []
        for idx in by_class:
            order = idx[torch.randperm(len(idx), generator=gen)]
            picks.append(order[torch.arange(ipc) % len(order)])
        syn = real_norm(torch.cat(picks))
    else:
        syn = torch.randn((num_classes * ipc, c_, h, w), generator=gen)
    return SyntheticStart(by_class, real_norm, syn.to(device).requires_grad_(True),
                          torch.arange(num_classes).repeat_interleave(ipc))


def class_batches(start: SyntheticStart, c: int, idx: torch.Tensor, ipc: int, batch_real: int,
                  gen: torch.Generator, dsa: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Class ``c``'s real batch (``batch_real`` of its images ``idx``, drawn from ``gen``) and its synthetic
    images,
    both augmented with one DSA seed drawn next (the DC/DSA reference's siamese augmentation)."""
    take = idx[torch.randperm(len(idx), generator=gen)[:batch_real]]
    r, s = start.real_norm(take).to(device), start.syn[c * ipc:(c + 1) * ipc]
    if dsa is not None:
        seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        r, s = dsa(r, seed), dsa(s, seed)
    return r, s


def seeded_convnet(gen: torch.Generator, channels: int, num_classes: int, cfg: DMConfig,
                   size: int) -> torch.nn.Module:
    """A fresh ConvNet of the distiller's width and depth, initialised from a seed drawn from ``gen``."""
    net_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(net_seed)
        return ConvNet(channels, num_classes, width=cfg.net_width, depth=cfg.net_depth, im_size=size)


def report_iteration(method: str, ipc: int, it: int, iterations: int, loss: str, t0: float,
                     log: Callable[[str], None]) -> None:
    """The stage-1 distiller's progress bar, and a log line at every fifth of the run and the last."""
    progress(f"{method.upper()} ipc {ipc}", it + 1, iterations)
    if it % max(1, iterations // 5) == 0 or it == iterations - 1:
        log(f"  {method} ipc {ipc} iter {it:5d}  loss {loss}  ({time.time() - t0:.0f}s)")


def unit_images(syn: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """The synthetic images back from the normalised space the distiller optimised in: [0, 1], on the CPU."""
    m = torch.as_tensor(mean).view(1, -1, 1, 1)
    s = torch.as_tensor(std).view(1, -1, 1, 1)
    return (syn.detach().cpu() * s + m).clamp(0, 1)


def distill_dm(images_u8: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int, cfg: DMConfig,
               mean: list[float], std: list[float], device: torch.device | None = None,
               log: Callable[[str], None] = print) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Run DM; returns synthetic images in [0, 1] ``[num_classes * ipc, 3, H, W]``, their labels and stats.

    Each iteration draws one random ConvNet; per class (in label order) it draws the real batch, then the
    DSA seed, embeds both and back-propagates that class's term at once. The objective is a sum of
    independent per-class terms (the ConvNet's instance norm is per image), so the accumulated gradient
    is the reference's single backward of the summed loss, while memory holds one class's graph, not all.
    """
    device = device or torch.device("cpu")
    gen = torch.Generator().manual_seed(cfg.seed)
    start = synthetic_start("DM", images_u8, labels, num_classes, ipc, cfg.init, mean, std, gen, device)
    by_class, syn, syn_labels = start.by_class, start.syn, start.labels
    c_, h = images_u8.shape[1], images_u8.shape[2]
    opt = torch.optim.SGD([syn], lr=cfg.lr_img if cfg.lr_img is not None else DM_LR_IMG, momentum=0.5)
    dsa = DSA() if cfg.dsa else None
    losses: list[float] = []
    t0 = time.time()
    for it in range(cfg.iterations):
        net = seeded_convnet(gen, c_, num_classes, cfg, h).to(device).requires_grad_(False)
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for c, idx in enumerate(by_class):
            r, s = class_batches(start, c, idx, ipc, cfg.batch_real, gen, dsa, device)
            with torch.no_grad():
                mean_r = net.embed(r).mean(0)
            term = ((mean_r - net.embed(s).mean(0)) ** 2).sum()
            term.backward()  # accumulates this class's gradient into syn.grad and frees its graph
            loss += float(term.detach())
        opt.step()
        losses.append(loss)
        report_iteration("dm", ipc, it, cfg.iterations, f"{losses[-1]:.3f}", t0, log)
    stats = {"loss_first": losses[0], "loss_last": losses[-1], "seconds": time.time() - t0}
    return unit_images(syn, mean, std), syn_labels, stats


# a built-in stage-1 distiller: (real uint8 images, labels, classes, ipc, cfg, mean, std, device, log)
# -> (synthetic images in [0, 1], their labels, stats)
Distiller = Callable[..., tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]


def run_dm(data_root: str | Path, out_dir: str | Path, cfg: DMConfig, ipc: int | None = None,
           image_size: int | None = None, max_per_class: int | None = None, classes: list[str] | None = None,
           device: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """DM-distil ``data_root`` into ``out_dir`` (``images.pt`` + ImageFolder + manifest); resumes when
    done."""
    return run_distiller(distill_dm, "dm", data_root, out_dir, cfg, ipc, image_size, max_per_class, classes,
                         device, log)


def run_distiller(distill: Distiller, method: str, data_root: str | Path, out_dir: str | Path, cfg: DMConfig,
                  ipc: int | None = None, image_size: int | None = None, max_per_class: int | None = None,
                  classes: list[str] | None = None, device: str | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Distil ``data_root`` with ``distill`` into ``out_dir`` as set ``method`` (``images.pt`` + ImageFolder +
    manifest); a finished run with the same IPC and settings is reused."""
    ipc = ipc or cfg.ipc
    out = Path(out_dir)
    done_marker = out / f"{method}_done.json"
    if done_marker.is_file() and (out / IMAGES_PT).is_file():
        info = json.loads(done_marker.read_text())
        if info.get("ipc") == ipc and info.get("settings") == cfg.model_dump(mode="json"):
            log(f"  {method} ipc {ipc}: reusing {out}")
            return info
    images, labels, class_ids = load_real(data_root, image_size, max_per_class, classes)
    mean, std = real_stats(images)
    dev = pick_device(device)
    log(f"{method.upper()}: {len(images)} real images, {len(class_ids)} classes, ipc {ipc}, "
        f"{cfg.iterations} iterations on {dev}")
    syn, syn_labels, stats = distill(images, labels, len(class_ids), ipc, cfg, mean, std, dev, log)
    save_pt(out / IMAGES_PT, syn, syn_labels, class_ids, mean, std)
    settings = {"ipc": ipc, **cfg.model_dump(mode="json"), "mean": mean, "std": std, "data": str(data_root)}
    writer = DistilledSetWriter(out, method, settings)
    arr = unit_chw_to_u8_hwc(syn)
    for i, lab in enumerate(syn_labels.tolist()):
        k = i % ipc
        cid = class_ids[lab]
        writer.add(f"c{cid}_i{k:03d}", cid, lab, arr[i], {"index": k, "pt_index": i}, flush=False)
    writer.flush()
    info = {"ipc": ipc, "settings": cfg.model_dump(mode="json"), "output": str(out), "images": len(syn),
            "classes": class_ids, "mean": mean, "std": std, **stats}
    atomic_write_json(done_marker, info)
    return info


def main(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {"ipc": args.ipc, "seed": args.seed}
    if args.iterations is not None:
        overrides["iterations"] = args.iterations
    cfg = DMConfig(**overrides)
    info = run_dm(args.data, args.out, cfg)
    print(f"wrote {info['images']} DM images ({len(info['classes'])} classes x ipc {info['ipc']}) to "
          f"{args.out}; loss {info['loss_first']:.3f} -> {info['loss_last']:.3f} in {info['seconds']:.0f}s")
    return 0
