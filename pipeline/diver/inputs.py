"""Read a classical distilled set (stage-1 input of DIVER) and undo its normalisation.

Formats (``diver.input_format``) and the layouts each accepts (``LAYOUTS``; ``pt`` files are told apart by
content):
- ``imagefolder``: ``root/<class_id>/<image>`` at any size (pixels, so no normalisation to undo), e.g. the
  224 px sets of SRe2L/RDED/Minimax; SRe2L's ``new<k>`` folders (``new042``) name ImageNet class ``k``;
- ``pt``: one ``torch.save`` file holding
  - a dict with ``images`` ``[N, C, H, W]`` and ``labels`` ``[N]`` (also ``image_syn``/``label_syn``,
    ``x``/``y``), optionally ``mean``/``std`` (the normalisation it was saved with) and ``classes``;
  - the DC/DSA/DM reference code's ``res_<method>_<dataset>_<model>_<ipc>ipc.pt``:
    ``{'data': [[image_syn, label_syn], ...], 'accs_all_exps': {...}}``, one pair per experiment
    (``diver.input_experiment`` picks one, default -1 = the last, as the reference code's last run);
    its tensors are normalised with the dataset's statistics, taken from the file name (``REF_NORMS``,
    the reference code's ``get_dataset``) unless ``diver.input_mean/std`` are set;
  - single-experiment variants ``{'data': [[images, labels]], 'res': 128}``;
  - EDF/NCFM lists ``[images, labels]`` (or a list of such pairs, picked like the reference file);
- ``mtt``: a folder (or the file itself) with MTT/EDF-style ``images_best.pt`` + ``labels_best.pt``
  (``semdistill export --to pt`` adds ``normalization.json`` and ``classes.json`` beside them).
  Soft labels ``[N, K]`` become their argmax.

``auto`` picks ``mtt`` when ``images_best.pt`` is present, ``pt`` for a ``.pt`` file or a folder
holding ``images.pt`` (what ``semdistill distill dm`` writes), else ``imagefolder``. File names only pick
where to look: an ``images_best.pt`` holding a dict or list (PReDD saves the DC/DM single-experiment dict
under that name) is read by its content as that ``pt`` layout.
Images come back as float ``[N, 3, H, W]`` in [0, 1] (grey sets are repeated to 3 channels).
NCFM's 2x2 tiled images are read as they are; ``diver.input_tiles`` splits them for the DiT (``tiles.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.core.pixels import normalize, u8_hwc_to_unit_chw
from pipeline.core.read import load_image_arrays
from pipeline.core.write import atomic_torch_save
from pipeline.errors import DataError

IMAGES_PT = "images.pt"
NORM_JSON, CLASSES_JSON = "normalization.json", "classes.json"  # beside images_best.pt (export --to pt)
PRESETS = {  # well-known normalisations, for configs and error hints
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "cifar100": ([0.5071, 0.4866, 0.4409], [0.2673, 0.2564, 0.2762]),
}
# the normalisation the DC/DSA/DM reference code's get_dataset applies, by the <dataset> of its file name
REF_NORMS = {
    "MNIST": ([0.1307], [0.3081]),
    "FashionMNIST": ([0.2861], [0.3530]),
    "SVHN": ([0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]),
    "CIFAR10": PRESETS["cifar10"],
    "CIFAR100": PRESETS["cifar100"],
    "TinyImageNet": PRESETS["imagenet"],
}
REF_FILE = re.compile(r"^res_(?P<method>[^_]+)_(?P<dataset>[^_]+)_(?P<model>.+)_(?P<ipc>\d+)ipc\.pt$")
LAYOUTS = (
    "a dict with images/labels (or image_syn/label_syn, x/y), optional mean/std/classes",
    ("the DC/DSA/DM reference res_<method>_<dataset>_<model>_<ipc>ipc.pt: "
     "{'data': [[image_syn, label_syn], ...], 'accs_all_exps': {...}}"),
    "a single-experiment {'data': [[images, labels]], 'res': 128}",
    "an EDF/NCFM list [images, labels] (or a list of [images, labels] pairs)",
    "an MTT/EDF folder with images_best.pt + labels_best.pt",
    "an ImageFolder root/<class_id>/<image> (SRe2L/RDED/Minimax, e.g. 224 px)",
)


@dataclass
class Stage1Set:
    """A distilled set in memory: pixels in [0, 1], labels, and where each image came from."""

    images: torch.Tensor  # [N, 3, H, W] float32 in [0, 1]
    labels: torch.Tensor  # [N] int64, index into ``classes``
    classes: list[str]  # class ids in label order
    sources: list[str]  # per image: file path or "<file>#<index>"
    fmt: str = "imagefolder"
    normalization: dict[str, list[float]] | None = field(default=None)
    # False: tensor labels without class ids (file or diver.input_classes), e.g. MTT's 0..9
    named: bool = True
    layout: str = ""  # which entry of LAYOUTS the file had (pt: dict | dc_reference | data_pairs | list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_ids(self) -> list[str]:
        return [self.classes[int(i)] for i in self.labels]

    def fingerprint(self) -> str:
        """sha256 of the pixels, labels and class ids (what the images recovered from this set depend on)."""
        h = hashlib.sha256(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.numpy().astype(np.int64).tobytes())
        h.update(json.dumps(list(self.classes)).encode())
        return h.hexdigest()

    def index_in_class(self) -> list[int]:
        """Position of each image among the images of its class (stable: input order)."""
        seen: dict[int, int] = {}
        out = []
        for lab in self.labels.tolist():
            out.append(seen.get(lab, 0))
            seen[lab] = out[-1] + 1
        return out


def detect_format(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.exists():
        raise DataError(f"distilled set not found: {p}")
    if p.is_dir():
        if (p / "images_best.pt").is_file():
            return "mtt"
        if (p / IMAGES_PT).is_file():
            return "pt"
        return "imagefolder"
    if p.name == "images_best.pt":
        return "mtt"
    if p.suffix in (".pt", ".pth"):
        return "pt"
    raise DataError(f"cannot tell the format of {p}: give a folder, a .pt file or images_best.pt")


def denormalize(images: torch.Tensor, mean: Sequence[float] | None,
                std: Sequence[float] | None) -> torch.Tensor:
    """``x * std + mean`` per channel (no-op without mean/std)."""
    if mean is None and std is None:
        return images
    c = images.shape[1]
    m = torch.as_tensor(list(mean) if mean is not None else [0.0] * c, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(list(std) if std is not None else [1.0] * c, dtype=images.dtype).view(1, -1, 1, 1)
    if m.shape[1] not in (1, c) or s.shape[1] not in (1, c):
        raise DataError(f"input_mean/input_std have {m.shape[1]}/{s.shape[1]} values for {c}-channel images")
    return images * s + m


def _to_pixels(images: torch.Tensor, mean, std, source: str) -> torch.Tensor:
    """Normalised tensor -> float [0, 1] RGB; refuses to guess when the range says it is normalised."""
    if images.ndim != 4:
        raise DataError(f"{source}: images must be [N, C, H, W], got shape {list(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.float() / 255.0
    else:
        x = images.float()
        bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
        if bad:
            raise DataError(f"{source}: pixel values are not finite (NaN/inf) in image {bad[:10]}")
        if mean is not None or std is not None:
            x = denormalize(x, mean, std)
        elif x.numel() and (float(x.min()) < -0.05 or float(x.max()) > 1.05):
            raise DataError(
                f"{source}: values span [{float(x.min()):.2f}, {float(x.max()):.2f}], so the set looks "
                f"normalised but no mean/std was given; set diver.input_mean and diver.input_std (ImageNet "
                f"subsets: {PRESETS['imagenet'][0]} / {PRESETS['imagenet'][1]})"
            )
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[1] != 3:
        raise DataError(f"{source}: expected 1 or 3 channels, got {x.shape[1]}")
    return x.clamp(0, 1).contiguous()


def _labels_1d(labels, n: int, source: str) -> torch.Tensor:
    y = torch.as_tensor(labels)
    if y.ndim == 2 and y.shape[1] == 1:  # a label column [N, 1]
        y = y[:, 0]
    elif y.ndim == 2:  # soft labels
        y = y.argmax(1)
    y = y.reshape(-1).long()
    if y.shape[0] != n:
        raise DataError(f"{source}: {n} images but {y.shape[0]} labels")
    return y


def _classes_for(y: torch.Tensor, classes: Sequence[str] | None) -> tuple[torch.Tensor, list[str]]:
    """Map raw label values to indices into the class list (default: the sorted label values)."""
    if y.numel() and int(y.min()) < 0:
        raise DataError(f"negative label {int(y.min())}: labels must be class indices >= 0")
    if classes is not None:
        classes = [str(c) for c in classes]
        dups = sorted({c for c in classes if classes.count(c) > 1})
        if dups:
            raise DataError(f"the set lists these class ids more than once: {dups[:10]}")
        if y.numel() and int(y.max()) >= len(classes):
            raise DataError(f"label {int(y.max())} but only {len(classes)} class ids")
        return y, classes
    values = sorted(set(y.tolist()))
    if values == list(range(len(values))) or not values:
        return y, [str(v) for v in values]
    pos = {v: i for i, v in enumerate(values)}
    return torch.tensor([pos[v] for v in y.tolist()]), [str(v) for v in values]


def _numpy_scalar_globals() -> list:
    """What unpickling numpy scalars needs (the DC/DSA/DM reference code saves its accuracies as
    ``np.float64``): the scalar constructor under its numpy 2 and numpy 1 names, and the numeric dtypes.
    Data only, no code: loading stays ``weights_only``."""
    import numpy as np
    from numpy._core.multiarray import scalar

    dtypes = {type(np.dtype(c)) for c in np.typecodes["All"] if c not in "OSUVMm"}
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *sorted(dtypes, key=str)]


def _load(path: Path):
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refuses pickled code and arbitrary objects
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
        first = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0])[:300]
        raise DataError(f"refused to load {path}: it holds pickled objects or code, not only tensors, lists "
                        f"and dicts (loaded with weights_only=True: {first}); re-save it with plain tensors "
                        f"(torch.save({{'images': x, 'labels': y}}, path))") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes one clear DataError
        raise DataError(f"cannot read {path}: {type(err).__name__}: {err}") from None


def _unknown_layout(p: Path, found: str) -> DataError:
    listed = "".join(f"\n  - {t}" for t in LAYOUTS)
    return DataError(f"{p}: expected keys images/labels or another known layout, found {found}. "
                     f"Known layouts:{listed}")


def _is_pair(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], torch.Tensor) and v[0].ndim == 4


def _pick_experiment(pairs: Sequence, experiment: int, p: Path):
    """One ``[images, labels]`` pair of a per-experiment list (``diver.input_experiment``, -1 = the last)."""
    n = len(pairs)
    if n == 0:
        raise DataError(f"{p}: the 'data' list is empty (no experiment saved)")
    if not -n <= experiment < n:
        raise DataError(f"{p}: diver.input_experiment={experiment} but the file holds {n} experiments "
                        f"(0..{n - 1}, or -1 for the last)")
    pair = pairs[experiment]
    if not _is_pair(pair):
        raise _unknown_layout(p, f"entry {experiment} of 'data' is not [images [N, C, H, W], labels]")
    return pair


def _unpack(obj, p: Path, experiment: int) -> tuple[object, object, dict, str]:
    """(images, labels, extra keys, layout) of whatever a ``.pt`` file holds; unknown layouts list the
    known."""
    if isinstance(obj, dict):
        data = obj.get("data")
        if _is_pair(data):  # {'data': [images, labels]}: one experiment without the outer list
            return data[0], data[1], obj, "data_pairs"
        if isinstance(data, (list, tuple)) and (not data or all(isinstance(e, (list, tuple)) for e in data)):
            images, labels = _pick_experiment(data, experiment, p)
            return images, labels, obj, "dc_reference" if "accs_all_exps" in obj else "data_pairs"
        img_key = next((k for k in ("images", "image_syn", "x", "data") if k in obj), None)
        lab_key = next((k for k in ("labels", "label_syn", "y", "targets") if k in obj), None)
        if img_key is None or lab_key is None:
            raise _unknown_layout(p, f"a dict with keys {sorted(map(str, obj))}")
        return obj[img_key], obj[lab_key], obj, "dict"
    if _is_pair(obj) or (isinstance(obj, (tuple, list)) and len(obj) == 2
                         and not isinstance(obj[0], (list, tuple))):
        return obj[0], obj[1], {}, "list"
    if isinstance(obj, (tuple, list)) and obj and all(isinstance(e, (list, tuple)) for e in obj):
        images, labels = _pick_experiment(obj, experiment, p)
        return images, labels, {}, "list"
    if isinstance(obj, torch.Tensor):
        raise _unknown_layout(p, f"a bare tensor {list(obj.shape)} without labels (MTT's layout: save it as "
                                 "images_best.pt beside labels_best.pt and give their folder)")
    raise _unknown_layout(p, type(obj).__name__)


def reference_norm(p: Path) -> tuple[list[float], list[float]] | None:
    """The DC/DSA/DM reference code's normalisation for ``res_<method>_<dataset>_..ipc.pt`` (None:
    unknown)."""
    m = REF_FILE.match(p.name)
    return REF_NORMS.get(m["dataset"]) if m else None


def read_pt(path: str | os.PathLike, mean=None, std=None, experiment: int = -1) -> Stage1Set:
    p = Path(path)
    if p.is_dir():
        p = p / IMAGES_PT
    return _pt_set(_load(p), p, mean, std, experiment)


def _pt_set(obj, p: Path, mean, std, experiment: int) -> Stage1Set:
    """A ``.pt`` layout (``LAYOUTS``) already loaded from ``p``, told apart by what it holds."""
    images, labels, extra, layout = _unpack(obj, p, experiment)
    mean = mean if mean is not None else extra.get("mean")
    std = std if std is not None else extra.get("std")
    if mean is None and std is None and layout == "dc_reference" and reference_norm(p) is not None:
        mean, std = reference_norm(p)
    classes = extra.get("classes")
    x = _to_pixels(torch.as_tensor(images), _plain(mean), _plain(std), str(p))
    y, cls = _classes_for(_labels_1d(labels, x.shape[0], str(p)), classes)
    norm = {"mean": _plain(mean), "std": _plain(std)} if mean is not None or std is not None else None
    return Stage1Set(x, y, cls, [f"{p}#{i}" for i in range(len(y))], "pt", norm, named=classes is not None,
                     layout=layout)


def read_mtt(path: str | os.PathLike, mean=None, std=None, classes: Sequence[str] | None = None,
             experiment: int = -1) -> Stage1Set:
    """MTT/EDF's ``images_best.pt`` (a bare image tensor) + ``labels_best.pt``. A file of that name holding
    another layout (a dict or a list, e.g. PReDD's ``{'data': [[images, labels]]}``) is read as that layout:
    the content decides, never the name."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    img_file, lab_file = folder / "images_best.pt", folder / "labels_best.pt"
    if not img_file.is_file():
        raise DataError(f"MTT/EDF set needs {img_file.name} in {folder}")
    loaded = _load(img_file)
    if not isinstance(loaded, torch.Tensor):  # not MTT's bare tensor: one of the .pt layouts
        s = _pt_set(loaded, img_file, mean, std, experiment)
        return _named(s, classes) if classes is not None else s
    if not lab_file.is_file():
        raise DataError(f"MTT/EDF set needs {lab_file.name} in {folder} (beside {img_file.name}, a bare "
                        "image tensor)")
    stats, names = folder / NORM_JSON, folder / CLASSES_JSON  # written by `semdistill export --to pt`
    if mean is None and std is None and stats.is_file():
        saved = _read_json(stats)
        mean, std = saved.get("mean"), saved.get("std")
    if classes is None and names.is_file():
        classes = _read_json(names)
    images = loaded
    x = _to_pixels(images, _plain(mean), _plain(std), str(img_file))
    y, cls = _classes_for(_labels_1d(_load(lab_file), x.shape[0], str(lab_file)), classes)
    norm = {"mean": _plain(mean), "std": _plain(std)} if mean is not None or std is not None else None
    return Stage1Set(x, y, cls, [f"{img_file}#{i}" for i in range(len(y))], "mtt", norm,
                     named=classes is not None, layout="mtt")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from None


def read_imagefolder(root: str | os.PathLike, size: int | None = None) -> Stage1Set:
    """An ImageFolder; images keep their size (the smallest side when they differ) unless ``size``."""
    real = load_image_arrays(root, size)
    return Stage1Set(u8_hwc_to_unit_chw(real.images), torch.from_numpy(real.labels), real.classes, real.paths,
                     "imagefolder", layout="imagefolder")


def _plain(v):
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        return [float(a) for a in v.reshape(-1).tolist()]
    return [float(a) for a in v]


def load_stage1(path: str | os.PathLike, fmt: str = "auto", mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, classes: Sequence[str] | None = None,
                experiment: int = -1) -> Stage1Set:
    """Read a distilled set in any supported format; pixels in [0, 1] after de-normalisation.

    ``mean``/``std`` (config ``diver.input_mean/std``) override what a ``.pt`` file carries.
    ``classes`` names the label indices of tensor formats (default: the label values).
    ``experiment`` (``diver.input_experiment``) picks one pair of a per-experiment list (-1: the last).
    """
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "imagefolder":
        return read_imagefolder(path)
    if fmt == "pt":
        s = read_pt(path, mean, std, experiment)
        return _named(s, classes) if classes is not None else s
    if fmt == "mtt":
        return read_mtt(path, mean, std, classes, experiment)
    raise DataError(f"unknown input format {fmt!r} (auto | imagefolder | pt | mtt)")


def _named(s: Stage1Set, classes: Sequence[str]) -> Stage1Set:
    """``s`` with its label indices named by ``classes`` (``diver.input_classes``)."""
    s.labels, s.classes = _classes_for(s.labels, classes)
    s.named = True
    return s


def save_pt(path: str | os.PathLike, images01: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
    """Write a ``.pt`` distilled set; with mean/std the images are stored normalised (like MTT/DM)."""
    x = images01.float()
    if mean is not None and std is not None:
        x = normalize(x, mean, std)
    obj = {"images": x.contiguous(), "labels": labels.long(), "classes": list(classes),
           "mean": _plain(mean), "std": _plain(std)}
    atomic_torch_save(path, obj)  # no partial file after a crash or a full disk (DiskFullError)
