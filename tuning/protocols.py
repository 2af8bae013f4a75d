"""Evaluation protocols: train a student on a distilled set, measure top-1 on the real val set.

Two protocols (docs/METHODS.md, "Evaluation protocols"):

- **hard** labels (DC/DM/MTT/Minimax style): cross-entropy on the distilled labels, SGD with
  momentum, a schedule, DSA and/or crop/flip/colour, CutMix / mixup, optional EMA of the weights;
- **soft** labels (SRe2L/RDED style): a teacher trained on (or loaded for) the real set labels
  every augmented, mixed batch; the student minimises ``KL(softmax(t/T) || softmax(s/T))`` (times ``T^2``
  only with ``eval.kl_t_squared``: the peers' code leaves the factor out).

``train_student(spec, data)`` is framework-free (plain torch, explicit seeds); Ray Train
calls it inside each worker (tuning/evaluate.py) and the tests call it directly. ``train_on`` takes any
batch source: the in-memory ``TensorBatches``, or the real train set streamed from its files
(``tuning.stream``, the teacher's input), with the same seeded order.
Named presets carry the published recipes (values from the peers' repositories); fields the
user sets explicitly win over a preset. Each run keeps its final and its best test accuracy;
``report`` says which one is the row's number (a best is selected on the test split).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.config import AUGMENT_OPS, EvalConfig
from pipeline.errors import ConfigError
from tuning.augment import (
    DEFAULT_STRATEGY,
    color_jitter,
    dsa,
    pca_lighting,
    random_flip,
    random_resized_crop,
    shuffle_patches,
)
from tuning.students import build_student

# Presets: values for EvalConfig fields, each one published recipe.
PRESETS: dict[str, dict[str, Any]] = {
    # IDC/Minimax train.py (the evaluation EDITS uses): SGD 0.01, CutMix every batch, epochs by IPC, x0.2 at
    # 2/3 and 5/6 of the epochs, RRC(0.5-1) + flip + jitter + lighting; the number is each run's best test
    # accuracy over tests every epochs/100. Epochs as IDC's ``ipc_epoch`` (snu-mllab/Efficient-Dataset-
    # Condensation argument.py lines 22-47, the same function in vimar-gu/MinimaxDiffusion argument.py lines
    # 18-43, called for ImageNet sets at lines 436-443 / 425-432 with the default multi-formation factor 1):
    # 3000 at IPC 1, 2000 at <= 10, 1500 at <= 50, 1000 at <= 200, 500 at <= 500, else 300; with exactly
    # 100 classes (``nclass == 100``; ImageNet-1K keeps the table) x2/3, floored to a multiple of 100
    # (2000 -> 1300, 1500 -> 1000, 1000 -> 600). See ``run_epochs``.
    # Above 100 classes (``args.nclass > 100`` for ImageNet) IDC/Minimax/EDITS switch to lr 0.1, weight decay
    # 1e-4
    # and a batch of at least 128 (einsteinxia/EDITS evaluation/Minimax/argument.py lines 296-304, commit
    # 42e7d0c;
    # the same block in IDC's argument.py). The real val images are Resize(size) + CenterCrop(size) (EDITS
    # evaluation/Minimax/data.py lines 310-312 and 810-812, commit 42e7d0c), never Resize(256) at 224 px.
    "edits": {"protocol": "hard", "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
              "batch_size": 64, "augment": "rrc+flip+jitter+lighting+cutmix", "mix_alpha": 1.0,
              "rrc_scale": (0.5, 1.0), "jitter": 0.4, "lighting": 0.1, "epochs": 300,
              "epochs_by_ipc": {1: 3000, 10: 2000, 50: 1500, 200: 1000, 500: 500},
              "many_classes_epoch_factor": 2 / 3,
              "recipe_above_classes": {100: {"lr": 0.1, "weight_decay": 1e-4, "min_batch": 128}},
              "val_resize": "size",
              "schedule": "multistep", "lr_step_unit": "epoch", "eval_count": 100, "report": "best",
              "repeats": 3},
    # PReDD/MTT cross-architecture evaluation (what DIVER reports): per-student lr, batch 256, linear
    # warm-up over the first half then cosine, EMA 0.995 once per epoch with warm-up, DSA, 5 runs.
    # Read in Shuzhiyong13/PReDD utils_szy.py ``evaluate_synset`` (lines 457-518): SGD momentum 0.9, wd 5e-4
    # (line 464); LinearLR from 1e-7 to 1 over E//2 epochs, then CosineAnnealingLR(T_max=E//2) (lines
    # 466-468),
    # both stepped once per epoch (line 497, switched at ep == E//2, lines 498-499), hence lr_step_unit epoch;
    # ema-pytorch EMA(beta=0.995, power=1, update_after_step=0) (line 478) updated once per epoch after the
    # training pass (line 496), the EMA model tested after the last epoch (line 502): see ``_ema`` for its
    # ramp.
    # Left as is: our warm-up starts at 1/W, not 1e-7, and reaches 1 one epoch earlier than PReDD's (which
    # holds
    # 1 for two epochs and so ends its cosine one epoch short of 0).
    "diver": {"protocol": "hard", "optimizer": "sgd", "epochs": 1000, "batch_size": 256, "lr": 0.01,
              "lr_per_student": {"convnet": 0.001, "resnet18": 0.001, "vit": 0.001, "mobilenetv2": 0.01,
                                 "shufflenetv2": 0.01, "efficientnet": 0.01},
              "momentum": 0.9, "weight_decay": 5e-4, "schedule": "warmup_cosine", "warmup_fraction": 0.5,
              "lr_step_unit": "epoch", "ema_decay": 0.995, "ema_every": "epoch", "ema_warmup": True,
              "augment": "dsa", "dsa_strategy": DEFAULT_STRATEGY, "repeats": 5, "report": "final"},
    # MTT evaluate_synset: lr 0.01 decayed x0.1 at half, batch 256, DSA, 1000 epochs.
    # The lr is MTT's learned one (``args.lr_net = syn_lr.item()`` before ``evaluate_synset``,
    # GeorgeCazenavette/mtt-distillation distill.py, commit 1a6f630) when a set carries it (``lr_best.pt``
    # beside
    # images_best.pt, as MTT's descendants save it); without it the preset is DC's ``evaluate_synset`` with
    # its
    # fixed lr 0.01. ``eval.zca`` whitens as MTT's CIFAR runs (``--zca``).
    "mtt": {"protocol": "hard", "epochs": 1000, "lr": 0.01, "batch_size": 256, "schedule": "step",
            "augment": "dsa", "momentum": 0.9, "weight_decay": 5e-4, "repeats": 5, "lr_from_set": True},
    # RDED: AdamW, half-cosine per epoch (ends at 0.5x), ShufflePatches + RRC + flip, CutMix relabelled
    # by the teacher, KL at T = 20 without a T^2 factor, best over the last 20% of training.
    # Augmentation order and crop scale as LINs-lab/RDED validation/main.py lines 115-126:
    # ShufflePatches(factor)
    # on the tensor first, then RandomResizedCrop with scale (1 / factor, max_scale_crops), then the flip;
    # factor 2 (argument.py lines 54-58, and every ImageNet script in scripts/) and max_scale_crops 1
    # (argument.py line 112) give scale (0.5, 1.0), not torchvision's (0.08, 1.0).
    # Read in LINs-lab/RDED at commit 3f6453d: the batch by IPC (argument.py lines 234-248: 10 / 50 / 100 at
    # IPC 1 / 10 / 50, x2 at exactly 100 or 1000 classes, capped at IPC x classes, lines 254-256); the AdamW
    # lr
    # per student (argument.py lines 269-299: conv* / resnet18* 0.001, efficientnet_b0 0.002, mobilenet_v2
    # 0.0025, vit_b_16 0.0001; keyed here by our student-name prefixes); weight decay 0.01 only on parameters
    # named "weight" with >= 2 dimensions (validation/utils.py ``get_parameters`` lines 67-84); a test after
    # every 10th epoch and the last, counted only past 80% (validation/main.py lines 176-190); KLDivLoss
    # (batchmean) of the T-softened outputs with no T^2 (validation/main.py lines 202-226).
    # The teacher is a pretrained ResNet-18 (eval.teacher_checkpoint, torchvision's / timm's layout accepted).
    "rded": {"protocol": "soft", "optimizer": "adamw", "lr": 0.001, "weight_decay": 0.01, "epochs": 300,
             "lr_per_student": {"convnet": 0.001, "resnet": 0.001, "efficientnet": 0.002,
                                "mobilenetv2": 0.0025, "vit": 0.0001},
             "decay_params": "weights_2d", "kl_t_squared": False,
             "schedule": "half_cosine", "lr_step_unit": "epoch", "augment": "shuffle_patches+rrc+flip+cutmix",
             "rrc_scale": (0.5, 1.0), "shuffle_factor": 2, "mix_alpha": 1.0, "temperature": 20.0,
             "batch_size": 100, "batch_by_ipc": {1: 10, 10: 50, 50: 100},
             "batch_factor_by_classes": {100: 2, 1000: 2},
             "best_from": 0.8, "best_every": 10, "report": "best", "repeats": 3,
             "teacher": "resnet18_imagenet_bn", "teacher_required": True},
    # SRe2L (VILA-Lab/SRe2L SRe2L/validate/train_KD.py, commit d6a720e): AdamW 0.001, weight decay 0.01 on >=
    # 2-D
    # weights (``get_parameters``), a full cosine to 0 per epoch, RRC(0.08-1) + flip, CutMix relabelled by the
    # pretrained teacher, KL at T = 20 (train_KD.sh) with the T^2 line commented out, batch 1,024 (the
    # default;
    # train_KD.sh runs 512 x 2 gradient accumulation, the same effective batch), capped at IPC x classes; a
    # test every 10 epochs and the last, the best over all of them (train_KD.py: ``epoch % 10 == 0``).
    "sre2l": {"protocol": "soft", "optimizer": "adamw", "lr": 0.001, "weight_decay": 0.01, "epochs": 300,
              "decay_params": "weights_2d", "kl_t_squared": False,
              "schedule": "cosine", "lr_step_unit": "epoch", "augment": "rrc+flip+cutmix",
              "rrc_scale": (0.08, 1.0), "mix_alpha": 1.0, "temperature": 20.0, "batch_size": 1024,
              "eval_every": 10, "report": "best", "repeats": 3,
              "teacher": "resnet18_imagenet_bn", "teacher_required": True},
    # The laptop demo: short but the same recipe shape (DSA, SGD, cosine), 2 repeats.
    "demo": {"protocol": "hard", "epochs": 60, "lr": 0.01, "batch_size": 64, "augment": "dsa", "repeats": 2,
             "schedule": "cosine", "eval_every": 20},
}

# An explicit key also switches off the preset's rules that would otherwise replace its value.
_RULES_OF = {"lr": ("lr_per_student", "lr_from_set"), "epochs": ("epochs_by_ipc",
                                                                 "many_classes_epoch_factor"),
             "batch_size": ("batch_by_classes", "batch_by_ipc", "batch_factor_by_classes")}
# the recipe_above_classes entry an explicit key switches off
_RECIPE_KEY_OF = {"lr": "lr", "weight_decay": "weight_decay", "batch_size": "min_batch"}


def resolve_preset(cfg: EvalConfig) -> EvalConfig:
    """Apply ``cfg.preset``: preset values first, then every field the user set explicitly."""
    if not cfg.preset:
        return cfg
    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown eval.preset {cfg.preset!r}; choose from {', '.join(PRESETS)}")
    preset = dict(PRESETS[cfg.preset])
    for key, rules in _RULES_OF.items():
        if key in cfg.model_fields_set:
            for rule in rules:
                if rule not in cfg.model_fields_set:
                    preset.pop(rule, None)
    if "recipe_above_classes" in preset and "recipe_above_classes" not in cfg.model_fields_set:
        mine = {k for f, k in _RECIPE_KEY_OF.items() if f in cfg.model_fields_set}
        preset["recipe_above_classes"] = {n: {k: v for k, v in r.items() if k not in mine}
                                          for n, r in preset["recipe_above_classes"].items()}
    merged = {**preset, **cfg.model_dump(include=cfg.model_fields_set)}
    merged["preset"] = cfg.preset
    return EvalConfig.model_validate(merged)


def _bounded(table: dict[int, int], value: int) -> int | None:
    """The entry of the smallest key >= ``value`` (``{10: a, 50: b}``: <= 10 -> a, <= 50 -> b)."""
    keys = sorted(k for k in table if value <= k)
    return table[keys[0]] if keys else None


def above_classes(cfg: EvalConfig, num_classes: int | None) -> dict[str, float]:
    """The ``recipe_above_classes`` entry of the largest bound below ``num_classes`` ({} when none
    applies)."""
    if num_classes is None:
        return {}
    bounds = [b for b in cfg.recipe_above_classes if num_classes > b]
    return dict(cfg.recipe_above_classes[max(bounds)]) if bounds else {}


def student_lr(cfg: EvalConfig, student: str, num_classes: int | None = None) -> float:
    """``recipe_above_classes``' lr when the class count passes its bound, else the ``lr_per_student`` entry
    whose key is the longest prefix of ``student``, else ``lr``."""
    recipe = above_classes(cfg, num_classes)
    if "lr" in recipe:
        return float(recipe["lr"])
    hits = [k for k in cfg.lr_per_student if student.startswith(k)]
    return cfg.lr_per_student[max(hits, key=len)] if hits else cfg.lr


def run_weight_decay(cfg: EvalConfig, num_classes: int | None) -> float:
    """``weight_decay``, or ``recipe_above_classes``' when the class count passes its bound."""
    return float(above_classes(cfg, num_classes).get("weight_decay", cfg.weight_decay))


def run_epochs(cfg: EvalConfig, ipc: int | None, num_classes: int | None) -> int:
    """Epochs for a set: ``epochs_by_ipc`` (else ``epochs``); with exactly 100 classes, x
    ``many_classes_epoch_factor`` floored to a multiple of 100 when that leaves at least 100 (IDC's
    ``ipc_epoch``: ``nclass == 100`` only, so 10- and 1000-class sets keep the table's epochs)."""
    epochs = (_bounded(cfg.epochs_by_ipc, ipc) if ipc is not None else None) or cfg.epochs
    if num_classes == 100 and cfg.many_classes_epoch_factor != 1.0:
        epochs = int(epochs * cfg.many_classes_epoch_factor)
        if epochs >= 100:
            epochs -= epochs % 100
    return max(1, epochs)


def run_batch_size(cfg: EvalConfig, ipc: int | None, num_classes: int | None) -> int:
    """Batch for a set: ``batch_by_ipc`` (RDED), else ``batch_by_classes``, else ``batch_size``; times
    ``batch_factor_by_classes`` at that exact class count; at least ``recipe_above_classes``' ``min_batch``
    (IDC's ``max(128, batch_size)``); capped at IPC x classes."""
    bs = ((_bounded(cfg.batch_by_ipc, ipc) if ipc is not None else None)
          or (_bounded(cfg.batch_by_classes,
                       num_classes) if num_classes is not None else None) or cfg.batch_size)
    if num_classes is not None and num_classes in cfg.batch_factor_by_classes:
        bs = max(1, round(bs * cfg.batch_factor_by_classes[num_classes]))
    bs = max(bs, int(above_classes(cfg, num_classes).get("min_batch", 0)))
    return min(bs, ipc * num_classes) if ipc and num_classes else bs


def report_label(report: str, best_from: float, best_every: int = 1) -> str:
    """What a row's top-1 is: ``final``, or a best selected on the test split."""
    if report == "final":
        return "final"
    window = f" of the last {round(100 * (1 - best_from))}% of epochs" if best_from > 0 else ""
    every = f", tested every {best_every} epochs" if best_every > 1 else ""
    return f"best{window}{every} (selected on the test split)"


class TrainSpec(EvalConfig):
    """One (student, seed) run: the resolved ``eval`` section, ``EvalConfig`` being the one place for the
    defaults and checks, with this run's values in place (``seed``; the ``epochs``, ``batch_size``, ``lr`` and
    ``weight_decay`` the preset's rules give the set). ``to_dict`` is plain data, so it travels to Ray
    workers."""

    student: str

    @classmethod
    def from_config(cls, cfg: EvalConfig, student: str, seed: int, ipc: int | None = None,
                    num_classes: int | None = None, set_lr: float | None = None) -> TrainSpec:
        """The spec of one run; ``ipc``/``num_classes`` feed the presets' epoch, batch, lr and decay rules;
        ``set_lr`` (a set's learned lr, MTT) replaces the lr when ``lr_from_set``."""
        cfg = resolve_preset(cfg)
        lr = set_lr if cfg.lr_from_set and set_lr is not None else student_lr(cfg, student, num_classes)
        return cls.model_validate({**cfg.model_dump(), "student": student, "seed": seed,
                                   "epochs": run_epochs(cfg, ipc, num_classes),
                                   "batch_size": run_batch_size(cfg, ipc, num_classes), "lr": lr,
                                   "weight_decay": run_weight_decay(cfg, num_classes)})

    def student_args(self) -> dict[str, Any]:
        """The keyword arguments of ``build_student`` for this run's student (``student_kwargs``' entry)."""
        return dict(self.student_kwargs.get(self.student, {}))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


# ----------------------------------------------------------------------------- losses, mixing
def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                    t_squared: bool = False) -> torch.Tensor:
    """``mean_batch KL(softmax(t/T) || softmax(s/T))``, times ``T^2`` only with ``t_squared`` (Hinton's
    factor). SRe2L/RDED's relabel loss is ``KLDivLoss(reduction="batchmean")`` with no factor
    (LINs-lab/RDED validation/main.py lines 202-226, commit 3f6453d; VILA-Lab/SRe2L validate/train_KD.py,
    commit d6a720e, where the T^2 line is commented out)."""
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits / t, dim=1)
    kl = F.kl_div(log_p_s, p_t, reduction="batchmean")
    return kl * (t * t) if t_squared else kl


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


def _parse_augment(augment: str) -> tuple[list[str], str | None]:
    """The per-image ops in application order, and the batch mixing (mixup / cutmix / None); ``EvalConfig``
    has checked the string."""
    parts = [p for p in augment.split("+") if p and p != "none"]
    mixes = [p for p in parts if p in ("mixup", "cutmix")]
    ops = [op for op in AUGMENT_OPS if op in parts and op not in ("mixup", "cutmix")]
    return ops, (mixes[0] if mixes else None)


# ----------------------------------------------------------------------------- training
@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 256, device: torch.device | str = "cpu",
                layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """The predicted class of every row of ``x`` (eval mode, inputs in ``layout``), on the CPU."""
    was_training = model.training
    model.eval()
    out = [model(x[i:i + batch_size].to(device, memory_format=layout)).argmax(1).cpu()
           for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
             device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy in percent (eval mode)."""
    return top1(predictions(model, x, batch_size, device), y)


def top1(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Percent of ``pred`` equal to ``y``."""
    return 100.0 * int((pred == y).sum()) / max(1, y.shape[0])


def per_class_top1(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float | None]:
    """Top-1 in percent of each class's val images (None for a class without any), in class-index order:
    where a set's students lose, beside the headline."""
    out: list[float | None] = []
    for c in range(num_classes):
        mine = y == c
        out.append(top1(pred[mine], y[mine]) if bool(mine.any()) else None)
    return out


SCHEDULES = ("cosine", "step", "multistep", "half_cosine", "warmup_cosine")


def lr_factor(kind: str, t: int, total: int, warmup_fraction: float = 0.5) -> float:
    """LR multiplier at unit ``t`` of ``total`` (steps or epochs).

    cosine ``0.5 (1 + cos(pi t / T))``; step x0.1 from ``T // 2`` (MTT/DC); multistep x0.2 from
    ``2T // 3`` and again from ``5T // 6`` (IDC); half_cosine ``0.5 (1 + cos(pi t / T / 2))``, which
    ends at 0.5 (RDED); warmup_cosine rises linearly to 1 over ``warmup_fraction * T`` units
    (``(t + 1) / W``), then follows a cosine to 0 over the rest.
    """
    total = max(1, total)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t / total))
    if kind == "step":
        return 0.1 if t >= max(1, total // 2) else 1.0
    if kind == "multistep":
        return 0.2 ** ((t >= 2 * total // 3) + (t >= 5 * total // 6))
    if kind == "half_cosine":
        return 0.5 * (1 + math.cos(math.pi * t / total / 2))
    if kind == "warmup_cosine":
        warm = round(warmup_fraction * total)
        if t < warm:
            return (t + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, total - warm)))
    raise ConfigError(f"unknown eval.schedule {kind!r} ({' | '.join(SCHEDULES)})")


def _schedule(opt: torch.optim.Optimizer, spec: TrainSpec,
              steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step; with ``lr_step_unit: epoch`` the LR changes only between epochs."""
    per_epoch = spec.lr_step_unit == "epoch"
    total = spec.epochs if per_epoch else spec.epochs * steps_per_epoch

    def factor(step: int) -> float:
        return lr_factor(spec.schedule, step // steps_per_epoch if per_epoch else step, total,
                         spec.warmup_fraction)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def param_groups(net: nn.Module, decay_params: Literal["all", "weights_2d"], weight_decay: float
                 ) -> list[dict[str, Any]]:
    """``all``: one group with ``weight_decay``; ``weights_2d``: decay only parameters whose name holds
    ``weight`` and that have >= 2 dimensions (conv / linear kernels), the rest (biases, norm scales, class
    tokens, position embeddings) at 0, as RDED's / SRe2L's ``get_parameters`` (LINs-lab/RDED
    validation/utils.py lines 67-84, commit 3f6453d)."""
    if decay_params == "all":
        return [{"params": list(net.parameters()), "weight_decay": weight_decay}]
    decay, rest = [], []
    for name, p in net.named_parameters():
        (decay if "weight" in name and p.ndim >= 2 else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _optimizer(net: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    groups = param_groups(net, spec.decay_params, spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr)
    return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum)


def _ema(model: nn.Module, spec: TrainSpec) -> torch.optim.swa_utils.AveragedModel | None:
    """EMA of weights and buffers. The first update copies the model; with ``ema_warmup`` the k-th update
    (k >= 2) keeps ``min(ema_decay, 1 - 1/k)`` of the average, so until the cap the EMA is the plain mean of
    the k snapshots.

    PReDD's evaluation (Shuzhiyong13/PReDD ``utils_szy.py``, ``evaluate_synset``, line 478) builds
    ema-pytorch 0.7.7's ``EMA(beta=0.995, power=1, update_after_step=0, update_every=1)`` and calls its
    ``update()`` once per epoch after the training pass (line 496), testing the EMA model (line 502).
    ema-pytorch 0.7.7 (``ema_pytorch/ema_pytorch.py``, ``get_current_decay`` lines 260-267, ``update``
    lines 269-291) copies on the first call and then uses ``1 - (1 + e)^-power`` with ``e = k - 1``,
    capped at ``beta``: ``min(0.995, 1 - 1/k)`` (not the TensorFlow ``num_updates`` ramp
    ``min(d, (1 + n) / (10 + n))``, which PReDD does not use).
    """
    if not spec.ema_decay:
        return None
    decay, warm = float(spec.ema_decay), bool(spec.ema_warmup)

    def avg(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        # n = updates averaged so far (>= 1 here); this is update k = n + 1: 1 - 1/k = n / (n + 1)
        k = min(decay, float(n) / (float(n) + 1.0)) if warm else decay
        return k * averaged + (1.0 - k) * current

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=avg, use_buffers=True)


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
    ops: list[str]
    mixing: str | None
    gen: torch.Generator
    rng: np.random.Generator
    device: torch.device | str
    stats: tuple[torch.Tensor, torch.Tensor] | None = None  # input normalisation (mean, std), [1, C, 1, 1]


def _pixel_op(s: _Step, xb: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply a [0, 1]-pixel op to normalised inputs: un-normalise, apply, normalise again."""
    if s.stats is None:
        return fn(xb)
    mean, std = s.stats
    return (fn(xb * std + mean) - mean) / std


def augment_batch(s: _Step, xb: torch.Tensor) -> torch.Tensor:
    """The per-image augmentations of ``spec.augment``, in ``AUGMENT_OPS`` order."""
    spec, gen = s.spec, s.gen
    for op in s.ops:
        if op == "shuffle_patches":
            xb = shuffle_patches(xb, gen, spec.shuffle_factor)
        elif op == "rrc":
            xb = random_resized_crop(xb, gen, tuple(spec.rrc_scale))
        elif op == "flip":
            xb = random_flip(xb, gen)
        elif op == "jitter":
            xb = _pixel_op(s, xb, lambda v: color_jitter(v, gen, spec.jitter))
        elif op == "lighting":
            xb = _pixel_op(s, xb, lambda v: pca_lighting(v, gen, spec.lighting))
        elif op == "dsa":
            xb = dsa(xb, seed=int(torch.randint(2**31 - 1, (1,), generator=gen)), strategy=spec.dsa_strategy,
                     siamese=False, single=True)
    return xb


def _batch_loss(s: _Step, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """Augment one batch, mix it (mixup / CutMix), and return its hard- or soft-label loss
    (soft: the teacher labels the mixed batch itself)."""
    spec = s.spec
    xb = augment_batch(s, xb)
    lam, partner = 1.0, None
    if s.mixing:
        xb, partner, lam = mix_batch(xb, s.mixing, spec.mix_alpha, s.rng, s.gen)
    xb, yb = xb.to(s.device, memory_format=memory_format(spec)), yb.to(s.device)
    logits = s.net(xb)
    if spec.protocol == "soft":
        with torch.no_grad():
            t_logits = s.teacher(xb)
        return soft_label_loss(logits, t_logits, spec.temperature, spec.kl_t_squared)
    loss = F.cross_entropy(logits, yb)
    if partner is not None and lam < 1.0:
        loss = lam * loss + (1 - lam) * F.cross_entropy(logits, yb[partner.to(s.device)])
    return loss


class TensorBatches:
    """An in-memory training set: ``batches`` slices the tensors (the interface ``tuning.stream.StreamedSet``
    shares, which decodes each batch from the image files instead)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.channels, self.size, self.dtype = int(x.shape[1]), int(x.shape[-1]), x.dtype

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(self, batch_indices: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in batch_indices:
            yield self.x[idx], self.y[idx]


def epoch_batches(n: int, gen: torch.Generator, bs: int, rank: int = 0,
                  world_size: int = 1) -> list[torch.Tensor]:
    """This rank's batches of one epoch: a permutation of ``n`` drawn from ``gen``, sharded, cut into ``bs``;
    a trailing batch of one is dropped (it breaks batch norm) unless the shard has one image."""
    perm = torch.randperm(n, generator=gen)[rank::world_size]
    cuts = [perm[i:i + bs] for i in range(0, perm.numel(), bs)]
    return [idx for idx in cuts if idx.numel() >= 2 or perm.numel() < 2]


def _train_epoch(s: _Step, data: Any, bs: int, rank: int, world_size: int) -> float:
    """One shuffled pass over this rank's shard of ``data`` (``TensorBatches`` or a ``StreamedSet``); returns
    the mean training loss. The permutation is drawn before any batch, so streaming leaves the order as is."""
    s.net.train()
    losses = []
    for xb, yb in data.batches(epoch_batches(len(data), s.gen, bs, rank, world_size)):
        loss = _batch_loss(s, xb, yb)
        s.opt.zero_grad(set_to_none=True)
        loss.backward()
        s.opt.step()
        s.sched.step()
        if s.ema is not None and s.spec.ema_every == "step":
            s.ema.update_parameters(s.model)
        losses.append(float(loss.detach()))
    if s.ema is not None and s.spec.ema_every == "epoch":
        s.ema.update_parameters(s.model)
    return float(np.mean(losses)) if losses else float("nan")


def _check_teacher(spec: TrainSpec, teacher: nn.Module | None) -> None:
    if spec.protocol == "soft" and teacher is None:
        raise ConfigError("the soft-label protocol needs a teacher (eval.protocol=soft: pass --train / "
                          "data.root or eval.teacher_checkpoint)")


def tested_after(spec: TrainSpec, epoch: int) -> bool:
    """Whether the student is tested after (1-based) ``epoch``: the last one, every ``eval_every``,
    every ``epochs // eval_count``, and every ``best_every``-th epoch past ``best_from`` of training (RDED:
    epochs 250, 260, ..., 300 of 300, validation/main.py lines 179-180)."""
    if epoch == spec.epochs or (spec.eval_every and epoch % spec.eval_every == 0):
        return True
    if spec.eval_count and epoch % max(1, spec.epochs // spec.eval_count) == 0:
        return True
    return (spec.best_from > 0 and epoch > spec.best_from * spec.epochs
            and epoch % max(1, spec.best_every) == 0)


def _setup(spec: TrainSpec, data: Any, num_classes: int, teacher: nn.Module | None,
           device: torch.device | str, world_size: int, wrap_model: Callable[[nn.Module], nn.Module] | None,
           norm: tuple[Any, Any] | None) -> tuple[_Step, int]:
    """Seed everything from ``spec.seed``, build the student, optimizer, schedule and EMA; return the
    step state and the per-rank batch size."""
    torch.manual_seed(spec.seed)  # init and every global-RNG draw (dropout) follow the run's seed
    model = build_student(spec.student, data.channels, num_classes, data.size,
                          **spec.student_args()).to(device, memory_format=memory_format(spec))
    gen = torch.Generator().manual_seed(spec.seed)  # batches and augmentations
    rng = np.random.default_rng(spec.seed)  # mixing weights
    ema = _ema(model, spec)
    net = wrap_model(model) if wrap_model is not None else model
    opt = _optimizer(net, spec)
    bs = max(1, spec.batch_size // world_size)
    steps_per_epoch = max(1, math.ceil(math.ceil(len(data) / world_size) / bs))
    sched = _schedule(opt, spec, steps_per_epoch)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    stats = None
    if norm is not None:
        shape = (1, -1, 1, 1)
        stats = (torch.as_tensor(np.asarray(norm[0]), dtype=data.dtype).view(shape),
                 torch.as_tensor(np.asarray(norm[1]), dtype=data.dtype).view(shape))
    ops, mixing = _parse_augment(spec.augment)
    return _Step(spec, net, model, teacher, opt, sched, ema, ops, mixing, gen, rng, device, stats), bs


def memory_format(spec: TrainSpec) -> torch.memory_format:
    """Channels-last for the students ``eval.channels_last`` names (4-D inputs only), else the default."""
    return torch.channels_last if spec.student in spec.channels_last else torch.contiguous_format


def train_student(
    spec: TrainSpec | dict[str, Any],
    train_x: torch.Tensor, train_y: torch.Tensor,
    val_x: torch.Tensor, val_y: torch.Tensor,
    num_classes: int,
    **options: Any,
) -> dict[str, Any]:
    """Train ``spec.student`` from scratch on ``train_x``/``train_y`` and test on the real val set.

    Inputs are normalised float tensors ``[N, C, H, W]`` (``norm`` = their (mean, std), which the
    colour augmentations undo); labels are class indices. Returns ``final`` and ``best`` top-1
    (percent; best over the tests after ``best_from``), ``reported`` (the one ``spec.report``
    names, ``report`` says which), the epoch of the best, the last training loss, the evaluation
    history, the LR at the start of every epoch and after the last, and the wall time. With
    ``world_size > 1`` each rank trains on its shard of every shuffled epoch (DDP via ``wrap_model``).
    ``options`` are ``train_on``'s keywords (``teacher``, ``device``, ``rank``, ``world_size``,
    ``wrap_model``, ``on_epoch``, ``norm``).
    """
    return train_on(spec, TensorBatches(train_x, train_y), val_x, val_y, num_classes, **options)


def train_on(
    spec: TrainSpec | dict[str, Any],
    data: Any,
    val_x: torch.Tensor, val_y: torch.Tensor,
    num_classes: int,
    teacher: nn.Module | None = None,
    device: torch.device | str = "cpu",
    rank: int = 0, world_size: int = 1,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    norm: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """``train_student`` on any batch source: ``TensorBatches`` or a streamed set (``tuning.stream``), which
    has ``len``, ``channels``, ``size``, ``dtype`` and ``batches(list of index tensors)``."""
    spec = TrainSpec.model_validate(spec)
    _check_teacher(spec, teacher)
    torch.set_num_threads(max(1, spec.threads))
    t0 = time.time()
    step, bs = _setup(spec, data, num_classes, teacher, device, world_size, wrap_model, norm)
    history: list[dict[str, float]] = []
    lrs: list[float] = []
    best, best_epoch, final, loss_val = -1.0, -1, 0.0, float("nan")
    final_per_class: list[float | None] = []
    for epoch in range(1, spec.epochs + 1):
        lrs.append(float(step.opt.param_groups[0]["lr"]))
        loss_val = _train_epoch(step, data, bs, rank, world_size)
        if not tested_after(spec, epoch):
            continue
        pred = predictions(step.ema.module if step.ema is not None else step.model, val_x, device=device,
                           layout=memory_format(spec))
        acc, final_per_class = top1(pred, val_y), per_class_top1(pred, val_y, num_classes)
        history.append({"epoch": epoch, "top1": acc, "loss": loss_val})
        if acc > best and epoch > spec.best_from * spec.epochs:
            best, best_epoch = acc, epoch
        final = acc
        if on_epoch is not None:
            on_epoch(history[-1])
    lrs.append(float(step.opt.param_groups[0]["lr"]))
    return {"student": spec.student, "seed": spec.seed, "final": final, "final_per_class": final_per_class,
            "best": best, "best_epoch": best_epoch,
            "reported": best if spec.report == "best" else final,
            "report": report_label(spec.report, spec.best_from, spec.best_every),
            "train_loss": loss_val, "history": history, "lr_per_epoch": lrs, "seconds": time.time() - t0,
            "epochs": spec.epochs, "batch_size": spec.batch_size, "lr": spec.lr,
            "optimizer": type(step.opt).__name__}


TEACHER_BATCH = 128


def train_teacher(arch: str, data: Any, num_classes: int, epochs: int, val: tuple[torch.Tensor, torch.Tensor],
                  seed: int = 0, threads: int = 1, device: torch.device | str = "cpu"
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """A teacher trained on the real set (hard labels, DSA, SGD + cosine, batch 128) for the soft protocol.

    ``data``: the real train set as a batch source, streamed from its files (``tuning.stream.scan_stream``) or
    ``TensorBatches``; the same seed gives the same batches either way."""
    spec = TrainSpec(student=arch, seed=seed, epochs=epochs, batch_size=TEACHER_BATCH, lr=0.01, augment="dsa",
                     cpus_per_job=threads, eval_every=0)
    holder: dict[str, nn.Module] = {}

    def keep(model: nn.Module) -> nn.Module:
        holder["model"] = model
        return model

    info = train_on(spec, data, val[0], val[1], num_classes, device=device, wrap_model=keep)
    return holder["model"].eval(), info
