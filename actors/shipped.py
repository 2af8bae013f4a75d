"""The demo zoo's trained checkpoints shipped in the repo (``actors/demo_weights``), checked by sha256.

``demo_weights/<role>/...`` holds each role's ``save_pretrained`` folder and ``<role>.json``;
``demo_weights/SHA256SUMS`` lists every file as ``<sha256>  <role>/<path>``. Building a zoo
role copies its files after checking each sum, so a damaged or edited file is refused.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from pipeline.core.write import atomic_write_bytes
from pipeline.errors import ModelLoadError

WEIGHTS_DIR = Path(__file__).resolve().parent / "demo_weights"
SUMS_FILE = "SHA256SUMS"
SHIPPED_ROLES = ("demo_vlm", "demo_clip", "demo_sd", "demo_dit")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _retrain_hint(role: str) -> str:
    return f"retrain it with `semdistill zoo train-demo --roles {role}`"


def read_sums(weights_dir: Path = WEIGHTS_DIR) -> dict[str, str]:
    """``<role>/<path>`` -> sha256, from ``SHA256SUMS``."""
    sums = weights_dir / SUMS_FILE
    if not sums.is_file():
        raise ModelLoadError(f"shipped demo weights: {sums} is missing; "
                             f"{_retrain_hint(' '.join(SHIPPED_ROLES))}")
    out = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.strip()] = digest
    return out


def write_sums(weights_dir: Path = WEIGHTS_DIR) -> Path:
    """Rewrite ``SHA256SUMS`` over every file under the role folders (sorted, POSIX paths)."""
    lines = [f"{sha256_file(p)}  {p.relative_to(weights_dir).as_posix()}"
             for p in sorted(weights_dir.rglob("*")) if p.is_file() and p.name != SUMS_FILE]
    target = weights_dir / SUMS_FILE
    atomic_write_bytes(target, ("\n".join(lines) + "\n").encode())
    return target


def role_digest(role: str, weights_dir: Path = WEIGHTS_DIR) -> str:
    """sha256 of ``role``'s lines in ``SHA256SUMS`` (changes whenever one of its shipped files does)."""
    listed = sorted((n, d) for n, d in read_sums(weights_dir).items() if n.split("/", 1)[0] == role)
    return hashlib.sha256("".join(f"{d}  {n}\n" for n, d in listed).encode()).hexdigest()


def verify_role(role: str, weights_dir: Path = WEIGHTS_DIR) -> list[str]:
    """Check every listed file of ``role`` against its sum; returns the relative paths (``<role>/...``)."""
    if role not in SHIPPED_ROLES:
        raise KeyError(f"{role!r} has no shipped weights; shipped: {', '.join(SHIPPED_ROLES)}")
    listed = {n: d for n, d in read_sums(weights_dir).items() if n.split("/", 1)[0] == role}
    if not listed:
        raise ModelLoadError(f"shipped demo weights: {weights_dir / SUMS_FILE} lists no files of {role}; "
                             f"{_retrain_hint(role)}")
    for name, want in sorted(listed.items()):
        path = weights_dir / name
        if not path.is_file():
            raise ModelLoadError(f"shipped demo weights: {path} is missing; {_retrain_hint(role)}")
        got = sha256_file(path)
        if got != want:
            raise ModelLoadError(f"shipped demo weights: {path} has sha256 {got}, but {SUMS_FILE} says "
                                 f"{want} (the file is damaged or was changed); {_retrain_hint(role)}")
    return sorted(listed)


def copy_role(role: str, out: Path, weights_dir: Path = WEIGHTS_DIR) -> None:
    """Copy ``role``'s checked files into ``out`` (the zoo builder of a shipped role)."""
    for name in verify_role(role, weights_dir):
        dest = Path(out) / name.split("/", 1)[1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights_dir / name, dest)
