"""Gradient matching (DC, Zhao et al. 2021; with DSA, Zhao & Bilen 2021): a stage-1 distiller that overfits
its net.

Synthetic images per class are optimised so that a ConvNet's loss gradient on them matches its gradient on
a real batch of the class. Each iteration draws a fresh ConvNet; ``outer_loop`` times it updates the images
(one step of SGD, momentum 0.5, on the summed per-class matching distance) and, between updates, trains the
network for ``inner_loop`` epochs on the current synthetic set. Because the images are fitted to that one
architecture's gradients along its training path, their accuracy on other architectures falls short of the
proxy's: the kind of stage-1 set DIVER is meant to recover.

Reference: VICO-UoE/DatasetCondensation at 306245d074cca5524694a8a83ca0797a6e85dfc8, main.py (the loops,
lr_img 0.1, lr_net 0.01, batch_real / batch_train 256, init noise, the same DSA seed for the real and the
synthetic batch of a class, DSA on the network's training batches) and utils.py (``get_loops``;
``match_loss`` with ``dis_metric='ours'``, ``distance_wb``: per layer, the sum over output units of
1 - cosine between the real and synthetic gradient rows; biases and norm scales add nothing).

Differences, both with the same result: the per-class terms are back-propagated one class at a time
(they are independent given the network, so the accumulated gradient equals the reference's single
backward of their sum, with one class's graph in memory), and every random draw (real batches, networks,
DSA seeds) comes from one generator seeded by ``diver.stage1.seed``. Images live in normalised space, as DM's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.config import DMConfig
from pipeline.diver.dm import (
    class_batches,
    report_iteration,
    run_distiller,
    seeded_convnet,
    synthetic_start,
    unit_images,
)
from pipeline.errors import ConfigError
from tuning.augment import DSA

GM_LR_IMG = 0.1  # DC main.py's lr_img, used when diver.stage1.lr_img is None
# DC utils.py get_loops: IPC -> (outer_loop, inner_loop)
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def gm_loops(ipc: int, cfg: DMConfig) -> tuple[int, int]:
    """``(outer_loop, inner_loop)``: the config's, else DC's ``get_loops`` for this IPC."""
    if cfg.outer_loop is not None and cfg.inner_loop is not None:
        return cfg.outer_loop, cfg.inner_loop
    if ipc not in DC_LOOPS:
        raise ConfigError(f"gradient matching at IPC {ipc}: DC's get_loops has loops only for IPC "
                          f"{sorted(DC_LOOPS)}; set diver.stage1.outer_loop and diver.stage1.inner_loop")
    outer, inner = DC_LOOPS[ipc]
    return (cfg.outer_loop if cfg.outer_loop is not None else outer,
            cfg.inner_loop if cfg.inner_loop is not None else inner)


def layer_distance(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """DC's distance between two gradients of one parameter: sum over output units of 1 - cosine of
    their rows (conv kernels flattened per output channel); 1-D parameters (biases, norms) give 0."""
    if g_real.dim() == 1:
        return g_syn.new_zeros(())
    r, s = g_real.reshape(g_real.shape[0], -1), g_syn.reshape(g_syn.shape[0], -1)
    cos = (r * s).sum(-1) / (r.norm(dim=-1) * s.norm(dim=-1) + 1e-6)
    return (1.0 - cos).sum()


def match_distance(g_real: Sequence[torch.Tensor], g_syn: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of ``layer_distance`` over the network's parameters."""
    return sum((layer_distance(r, s) for r, s in zip(g_real, g_syn, strict=True)), g_syn[0].new_zeros(()))


def _train_net(net: torch.nn.Module, syn: torch.Tensor, labels: torch.Tensor, epochs: int, cfg: DMConfig,
               gen: torch.Generator, dsa: Any) -> None:
    """``epochs`` epochs of SGD on the (detached) synthetic set, shuffled, DSA per batch when on."""
    params = list(net.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=cfg.lr_net)
    x = syn.detach()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_train):
            take = order[i:i + cfg.batch_train]
            xb = x[take]
            if dsa is not None:
                xb = dsa(xb, int(torch.randint(2**31 - 1, (1,), generator=gen)), siamese=False)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(xb), labels[take]).backward()
            opt.step()


def distill_gm(images_u8: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int, cfg: DMConfig,
               mean: list[float], std: list[float], device: torch.device | None = None,
               log: Callable[[str], None] = print) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Run gradient matching; returns synthetic images in [0, 1] ``[num_classes * ipc, 3, H, W]``, their
    labels and stats (``loss_first`` / ``loss_last``: the matching distance of the first / last iteration,
    averaged over classes and outer loops as the reference logs it)."""
    device = device or torch.device("cpu")
    gen = torch.Generator().manual_seed(cfg.seed)
    outer, inner = gm_loops(ipc, cfg)
    start = synthetic_start("GM", images_u8, labels, num_classes, ipc, cfg.init, mean, std, gen, device)
    by_class, syn, syn_labels = start.by_class, start.syn, start.labels
    c_, h = images_u8.shape[1], images_u8.shape[2]
    lr_img = cfg.lr_img if cfg.lr_img is not None else GM_LR_IMG
    opt_img = torch.optim.SGD([syn], lr=lr_img, momentum=0.5)
    dsa = DSA() if cfg.dsa else None
    losses: list[float] = []
    t0 = time.time()
    for it in range(cfg.iterations):
        net = seeded_convnet(gen, c_, num_classes, cfg, h).to(device).train()
        params = list(net.parameters())
        total = 0.0
        for ol in range(outer):
            opt_img.zero_grad(set_to_none=True)
            for c, idx in enumerate(by_class):
                r, s = class_batches(start, c, idx, ipc, cfg.batch_real, gen, dsa, device)
                y_r = torch.full((len(r),), c, dtype=torch.long, device=device)
                y_s = torch.full((len(s),), c, dtype=torch.long, device=device)
                g_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(r), y_r), params)]
                g_syn = torch.autograd.grad(F.cross_entropy(net(s), y_s), params, create_graph=True)
                term = match_distance(g_real, g_syn)
                term.backward(inputs=[syn])  # this class's share of the image gradient; its graph is freed
                total += float(term.detach())
            opt_img.step()
            if ol < outer - 1 and inner > 0:
                _train_net(net, syn, syn_labels.to(device), inner, cfg, gen, dsa)
        losses.append(total / (num_classes * outer))
        report_iteration("gm", ipc, it, cfg.iterations, f"{losses[-1]:.4f}", t0, log)
    stats = {"loss_first": losses[0], "loss_last": losses[-1], "seconds": time.time() - t0,
             "outer_loop": outer, "inner_loop": inner}
    return unit_images(syn, mean, std), syn_labels, stats


def run_gm(data_root: str | Path, out_dir: str | Path, cfg: DMConfig, ipc: int | None = None,
           image_size: int | None = None, max_per_class: int | None = None, classes: list[str] | None = None,
           device: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """GM-distil ``data_root`` into ``out_dir`` (``images.pt`` + ImageFolder + manifest, method ``gm``)."""
    return run_distiller(distill_gm, "gm", data_root, out_dir, cfg, ipc, image_size, max_per_class, classes,
                         device, log)
