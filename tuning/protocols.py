"""Evaluation protocols: train a student on a distilled set, measure top-1 on the real val set.

Two protocols (METHODS.md, "Evaluation protocols"):

- **hard** labels (DC/DM/MTT/Minimax style): cross-entropy on the distilled labels, SGD with
  momentum, cosine or step schedule, DSA and/or CutMix / mixup, optional EMA of the weights;
- **soft** labels (SRe2L/RDED style): a teacher trained on the real set labels every
  augmented batch; the student minimises ``KL(softmax(t/T) || softmax(s/T)) * T^2``.

``train_student(spec, data)`` is framework-free (plain torch, explicit seeds); Ray Train
calls it inside each worker (tuning/evaluate.py) and the tests call it directly.
Named presets carry the published recipes; fields the user sets explicitly win over a preset.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.config import EvalConfig
from pipeline.errors import ConfigError
from tuning.augment import DEFAULT_STRATEGY, dsa
from tuning.students import build_student

# Presets: values for EvalConfig fields. "(read)" = from METHODS.md / the papers' code;
# everything else is our reading and can be overridden field by field.
PRESETS: dict[str, dict[str, Any]] = {
    # EDITS (read): ConvNet-6 instance norm, lr 0.01, batch 64, mixup, 3 repeats; epochs inferred.
    "edits": {"protocol": "hard", "lr": 0.01, "batch_size": 64, "augment": "mixup", "repeats": 3,
              "epochs": 300, "schedule": "cosine"},
    # DIVER (read): hard labels, 1000 epochs, SGD momentum 0.9, wd 5e-4, EMA 0.995, DSA, 5 runs.
    "diver": {"protocol": "hard", "epochs": 1000, "momentum": 0.9, "weight_decay": 5e-4, "ema_decay": 0.995,
              "augment": "dsa", "repeats": 5, "lr": 0.01, "batch_size": 64, "schedule": "cosine"},
    # MTT evaluate_synset (read): lr 0.01 decayed x0.1 at half, batch 256, DSA, 1000 epochs.
    "mtt": {"protocol": "hard", "epochs": 1000, "lr": 0.01, "batch_size": 256, "schedule": "step",
            "augment": "dsa", "momentum": 0.9, "weight_decay": 5e-4, "repeats": 5},
    # SRe2L / RDED soft-label recipes (inferred for small sets): AdamW, cosine, CutMix, KL with T.
    "sre2l": {"protocol": "soft", "optimizer": "adamw", "lr": 0.001, "weight_decay": 0.01, "epochs": 300,
              "schedule": "cosine", "augment": "cutmix", "temperature": 4.0, "repeats": 3},
    "rded": {"protocol": "soft", "optimizer": "adamw", "lr": 0.001, "weight_decay": 0.01, "epochs": 300,
             "schedule": "cosine", "augment": "cutmix", "temperature": 20.0, "repeats": 3},
    # The laptop demo: short but the same recipe shape (DSA, SGD, cosine), 2 repeats.
    "demo": {"protocol": "hard", "epochs": 60, "lr": 0.01, "batch_size": 64, "augment": "dsa", "repeats": 2,
             "schedule": "cosine", "eval_every": 20},
}


def resolve_preset(cfg: EvalConfig) -> EvalConfig:
    """Apply ``cfg.preset``: preset values first, then every field the user set explicitly."""
    if not cfg.preset:
        return cfg
    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown eval.preset {cfg.preset!r}; choose from {', '.join(PRESETS)}")
    merged = {**PRESETS[cfg.preset], **cfg.model_dump(include=cfg.model_fields_set)}
    merged["preset"] = cfg.preset
    return EvalConfig.model_validate(merged)


@dataclass
class TrainSpec:
    """Everything one (student, seed) run needs; plain data so it travels to Ray workers."""

    student: str
    seed: int = 0
    epochs: int = 300
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    schedule: str = "cosine"
    augment: str = "dsa"
    dsa_strategy: str = DEFAULT_STRATEGY
    mix_alpha: float = 1.0
    ema_decay: float | None = None
    protocol: str = "hard"
    temperature: float = 4.0
    eval_every: int = 0  # 0: evaluate only after the last epoch
    student_kwargs: dict[str, Any] = field(default_factory=dict)
    threads: int = 1

    @classmethod
    def from_config(cls, cfg: EvalConfig, student: str, seed: int) -> TrainSpec:
        cfg = resolve_preset(cfg)
        return cls(student=student, seed=seed, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                   momentum=cfg.momentum, weight_decay=cfg.weight_decay, optimizer=cfg.optimizer,
                   schedule=cfg.schedule, augment=cfg.augment, dsa_strategy=cfg.dsa_strategy,
                   mix_alpha=cfg.mix_alpha, ema_decay=cfg.ema_decay, protocol=cfg.protocol,
                   temperature=cfg.temperature, eval_every=cfg.eval_every,
                   student_kwargs=dict(cfg.student_kwargs.get(student, {})),
                   threads=max(1, math.floor(cfg.cpus_per_job)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- losses, mixing
def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * mean_batch KL(softmax(t/T) || softmax(s/T))`` (Hinton distillation, SRe2L/RDED relabel)."""
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * (t * t)


def mix_batch(x: torch.Tensor, kind: str, alpha: float, rng: np.random.Generator,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup or CutMix: returns the mixed batch, the partner permutation and the weight ``lam``
    of the original labels (CutMix's ``lam`` is the exact kept area)."""
    n = x.shape[0]
    perm = torch.randperm(n, generator=gen)
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0
    if kind == "mixup":
        return lam * x + (1 - lam) * x[perm], perm, lam
    if kind != "cutmix":
        raise ValueError(f"unknown mixing {kind!r}")
    h, w = x.shape[2], x.shape[3]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    return out, perm, lam


def _parse_augment(augment: str) -> tuple[bool, str | None]:
    parts = [p for p in augment.split("+") if p and p != "none"]
    use_dsa = "dsa" in parts
    mixes = [p for p in parts if p in ("mixup", "cutmix")]
    bad = [p for p in parts if p not in ("dsa", "mixup", "cutmix")]
    if bad or len(mixes) > 1:
        raise ConfigError(f"eval.augment {augment!r}: use dsa, mixup, cutmix, dsa+mixup, dsa+cutmix or none")
    return use_dsa, (mixes[0] if mixes else None)


# ----------------------------------------------------------------------------- training
@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
             device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy in percent (eval mode)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        logits = model(x[i:i + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == y[i:i + batch_size]).sum())
    model.train(was_training)
    return 100.0 * correct / max(1, x.shape[0])


def _schedule(opt: torch.optim.Optimizer, kind: str, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    if kind == "step":  # MTT/DC: x0.1 at half of training
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[max(1, total_steps // 2)], gamma=0.1)
    raise ConfigError(f"unknown eval.schedule {kind!r} (cosine | step)")


def _optimizer(net: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    raise ConfigError(f"unknown eval.optimizer {spec.optimizer!r} (sgd | adamw)")


@dataclass
class _Step:
    """What one training step needs besides the batch: the nets, optimizer, schedule, EMA and randomness."""

    spec: TrainSpec
    net: nn.Module
    model: nn.Module
    teacher: nn.Module | None
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    ema: Any
    use_dsa: bool
    mixing: str | None
    gen: torch.Generator
    rng: np.random.Generator
    device: torch.device | str


def _batch_loss(s: _Step, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """Augment (DSA, then mixup / cutmix) one batch and return its hard- or soft-label loss."""
    spec = s.spec
    if s.use_dsa:
        xb = dsa(xb, seed=int(torch.randint(2**31 - 1, (1,), generator=s.gen)), strategy=spec.dsa_strategy,
                 siamese=False, single=True)
    lam, partner = 1.0, None
    if s.mixing:
        xb, partner, lam = mix_batch(xb, s.mixing, spec.mix_alpha, s.rng, s.gen)
    xb, yb = xb.to(s.device), yb.to(s.device)
    logits = s.net(xb)
    if spec.protocol == "soft":
        with torch.no_grad():
            t_logits = s.teacher(xb)
        return soft_label_loss(logits, t_logits, spec.temperature)
    loss = F.cross_entropy(logits, yb)
    if partner is not None and lam < 1.0:
        loss = lam * loss + (1 - lam) * F.cross_entropy(logits, yb[partner.to(s.device)])
    return loss


def _train_epoch(s: _Step, train_x: torch.Tensor, train_y: torch.Tensor, bs: int, rank: int,
                 world_size: int) -> float:
    """One shuffled pass over this rank's shard; returns the mean training loss."""
    s.net.train()
    perm = torch.randperm(train_x.shape[0], generator=s.gen)[rank::world_size]
    losses = []
    for i in range(0, perm.numel(), bs):
        idx = perm[i:i + bs]
        if idx.numel() < 2 and perm.numel() >= 2:  # a batch of one breaks batch norm
            continue
        loss = _batch_loss(s, train_x[idx], train_y[idx])
        s.opt.zero_grad(set_to_none=True)
        loss.backward()
        s.opt.step()
        s.sched.step()
        if s.ema is not None:
            s.ema.update_parameters(s.model)
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


def _check_protocol(spec: TrainSpec, teacher: nn.Module | None) -> None:
    if spec.protocol == "soft" and teacher is None:
        raise ConfigError("the soft-label protocol needs a teacher (eval.protocol=soft: pass --train / data.root)")
    if spec.protocol not in ("hard", "soft"):
        raise ConfigError(f"unknown eval.protocol {spec.protocol!r} (hard | soft)")


def train_student(
    spec: TrainSpec | dict[str, Any],
    train_x: torch.Tensor, train_y: torch.Tensor,
    val_x: torch.Tensor, val_y: torch.Tensor,
    num_classes: int,
    teacher: nn.Module | None = None,
    device: torch.device | str = "cpu",
    rank: int = 0, world_size: int = 1,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``spec.student`` from scratch on ``train_x``/``train_y`` and test on the real val set.

    Inputs are normalised float tensors ``[N, C, H, W]``; labels are class indices. Returns
    ``final`` and ``best`` top-1 (percent), the epoch of the best, the last training loss,
    the evaluation history and the wall time. With ``world_size > 1`` each rank trains on
    its shard of every shuffled epoch (DDP via ``wrap_model``).
    """
    spec = spec if isinstance(spec, TrainSpec) else TrainSpec(**spec)
    _check_protocol(spec, teacher)
    use_dsa, mixing = _parse_augment(spec.augment)
    torch.set_num_threads(max(1, spec.threads))
    t0 = time.time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)  # weight init only; batches/augmentation use ``gen``
        model = build_student(spec.student, train_x.shape[1], num_classes, train_x.shape[-1],
                              **spec.student_kwargs).to(device)
    gen = torch.Generator().manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    ema = None
    if spec.ema_decay:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(spec.ema_decay), use_buffers=True)
    net = wrap_model(model) if wrap_model is not None else model
    opt = _optimizer(net, spec)
    bs = max(1, spec.batch_size // world_size)
    steps_per_epoch = max(1, math.ceil(math.ceil(train_x.shape[0] / world_size) / bs))
    sched = _schedule(opt, spec.schedule, spec.epochs * steps_per_epoch)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    step = _Step(spec, net, model, teacher, opt, sched, ema, use_dsa, mixing, gen, rng, device)
    history: list[dict[str, float]] = []
    best, best_epoch, final, loss_val = -1.0, -1, 0.0, float("nan")
    for epoch in range(spec.epochs):
        loss_val = _train_epoch(step, train_x, train_y, bs, rank, world_size)
        last = epoch == spec.epochs - 1
        if last or (spec.eval_every and (epoch + 1) % spec.eval_every == 0):
            acc = accuracy(ema.module if ema is not None else model, val_x, val_y, device=device)
            history.append({"epoch": epoch + 1, "top1": acc, "loss": loss_val})
            if acc > best:
                best, best_epoch = acc, epoch + 1
            final = acc
            if on_epoch is not None:
                on_epoch(history[-1])
    return {"student": spec.student, "seed": spec.seed, "final": final, "best": best, "best_epoch": best_epoch,
            "train_loss": loss_val, "history": history, "seconds": time.time() - t0, "epochs": spec.epochs}


def train_teacher(arch: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int, seed: int = 0,
                  val: tuple[torch.Tensor, torch.Tensor] | None = None, threads: int = 1,
                  device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A teacher trained on the real set (hard labels, DSA, SGD + cosine) for the soft protocol."""
    spec = TrainSpec(student=arch, seed=seed, epochs=epochs, batch_size=128, lr=0.01, augment="dsa",
                     threads=threads, eval_every=0)
    holder: dict[str, nn.Module] = {}

    def keep(model: nn.Module) -> nn.Module:
        holder["model"] = model
        return model

    vx, vy = val if val is not None else (x[:256], y[:256])
    info = train_student(spec, x, y, vx, vy, num_classes, device=device, wrap_model=keep)
    return holder["model"].eval(), info
