"""How many of each demo set's images a classifier of real digits reads as their class.

The judge is the classifier the demo generators' checks use (``pipeline.demo.zoo.dit.train_classifier``: a
width-32, depth-3 ConvNet, Adam, trained on the real train digits only). A set's recognition is the share of
its images the judge labels as their own class, overall and per class. It separates a set whose images lost
their class (a generator's failure) from a set whose images are legible but teach the students less (a claim
that misses for another reason): the report shows both beside the students' accuracies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core.pixels import u8_hwc_to_signed_chw
from pipeline.core.read import load_image_arrays
from pipeline.core.write import atomic_write_json
from pipeline.demo.zoo.dit import train_classifier

JUDGE_EPOCHS = 15  # the judge of the demo DiT's checks (99.2 % on the val digits at 15 epochs)
IMAGE_SIZE = 32


@dataclass(frozen=True)
class Recognition:
    """One set as the judge reads it: percent recognised overall and per class id, and the judge's mean
    probability of the true class (percent), which tells a typical digit from a barely legible one."""

    recognised: float
    per_class: dict[str, float]
    confidence: float
    images: int

    def misread_classes(self) -> list[str]:
        """The class ids with at least one image the judge reads as another class."""
        return [c for c, share in self.per_class.items() if share < 100.0]


@dataclass(frozen=True)
class Judge:
    """The trained classifier, the class ids of its outputs and its top-1 on the val digits (percent)."""

    net: torch.nn.Module
    classes: list[str]
    val_accuracy: float


@torch.no_grad()
def _probabilities(net: torch.nn.Module, images_u8: object) -> torch.Tensor:
    x = u8_hwc_to_signed_chw(images_u8)
    return torch.cat([net(x[i:i + 256]).softmax(1) for i in range(0, len(x), 256)])


def train_judge(data: Path, seed: int = 0, epochs: int = JUDGE_EPOCHS) -> Judge:
    """Train the judge on ``data/train`` (seeded) and measure it on ``data/val``."""
    tr_x, tr_y, classes, _ = load_image_arrays(data / "train", IMAGE_SIZE)
    va_x, va_y, va_classes, _ = load_image_arrays(data / "val", IMAGE_SIZE)
    net = train_classifier(tr_x, tr_y, epochs, seed)
    if va_classes != classes:
        raise ValueError(f"{data}: the val split's classes {va_classes} differ from the train split's "
                         f"{classes}")
    correct = (_probabilities(net, va_x).argmax(1) == torch.as_tensor(va_y)).float().mean().item()
    return Judge(net, classes, round(100.0 * correct, 2))


def cached_judge(data: Path, folder: Path, seed: int = 0, epochs: int = JUDGE_EPOCHS) -> Judge:
    """``train_judge``, kept in ``folder`` (weights + a json naming the data, seed and epochs) for re-runs."""
    weights, record = folder / "judge.pt", folder / "judge.json"
    key = {"data": str(Path(data).resolve()), "seed": seed, "epochs": epochs}
    if weights.is_file() and record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("key") == key:
            tr_x, tr_y, _, _ = load_image_arrays(data / "train", IMAGE_SIZE, max_per_class=1)
            net = train_classifier(tr_x, tr_y, 0, seed)  # the architecture, then the trained weights
            net.load_state_dict(torch.load(weights, weights_only=True))
            return Judge(net.eval(), saved["classes"], saved["val_accuracy"])
    judge = train_judge(data, seed, epochs)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(judge.net.state_dict(), weights)
    atomic_write_json(record, {"key": key, "classes": judge.classes, "val_accuracy": judge.val_accuracy})
    return judge


def recognise(judge: Judge, set_dir: Path) -> Recognition:
    """The share of ``set_dir``'s images (an ImageFolder) the judge reads as their folder's class."""
    x, y, set_classes, _ = load_image_arrays(set_dir, IMAGE_SIZE)
    unknown = sorted(set(set_classes) - set(judge.classes))
    if unknown:
        raise ValueError(f"{set_dir}: classes {unknown} are not among the judge's {judge.classes}")
    truth = torch.tensor([judge.classes.index(set_classes[label]) for label in y])
    probs = _probabilities(judge.net, x)
    hit = probs.argmax(1) == truth
    per_class = {}
    for index, cid in enumerate(set_classes):
        mine = torch.as_tensor(y) == index
        per_class[cid] = round(100.0 * hit[mine].float().mean().item(), 1)
    confidence = probs.gather(1, truth[:, None]).mean().item()
    return Recognition(round(100.0 * hit.float().mean().item(), 1), per_class, round(100.0 * confidence, 1),
                       len(truth))


def recognition_line(judge: Judge, judged: dict[str, Recognition]) -> str:
    """One report note: each set's recognition, with the classes the judge misreads."""
    parts = []
    for name, rec in judged.items():
        misread = rec.misread_classes()
        where = f" (misread in class {', '.join(misread)})" if misread else ""
        parts.append(f"{name} {rec.recognised:.1f}%{where}, confidence {rec.confidence:.1f}%")
    return (f"images recognised as their class by a ConvNet trained on the real train digits "
            f"({judge.val_accuracy:.1f}% on val; confidence: its mean probability of the true class): "
            + "; ".join(parts) + ".")
