"""DIVER end to end: classical distilled set in, DiT-recovered set out.

Stages (``--from-stage`` re-runs from one of them, reusing what came before):
- ``stage1``: the built-in DM distiller when ``diver.stage1`` is set (one set per IPC in
  ``diver.stage1.ipcs``), else the set at ``diver.input`` is used as it is;
- ``recover``: Ray Data: rows of the distilled set (pixels de-normalised to [0, 1]) ->
  ``DiTRecoverActor`` pool (``ActorPoolStrategy(size=ray.pool_sizes.recover)``) -> the driver
  writes ImageFolder + ``manifest.json`` (source image, DiT class, seed, settings);
- ``report``: ``side_by_side.png`` (input | recovered, one row per class) and ``summary.json``.

Layout: with DM, ``<output.dir>/ipc<K>/{stage1,diver,side_by_side.png}``; with
``diver.input``, ``<output.dir>/{diver,side_by_side.png}``. A re-run resumes: images whose key
is in the manifest are not recomputed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config
from pipeline.core.lock import holds_output_lock
from pipeline.errors import ConfigError, DataError

STAGES = ("stage1", "recover", "report")


def _log(msg: str) -> None:
    print(msg, flush=True)


def _sets(cfg: Config, out: Path) -> list[dict[str, Any]]:
    d = cfg.diver
    if d.stage1 is not None:
        if not cfg.data.root:
            raise ConfigError("diver.stage1 (built-in DM) needs data.root, the real training set")
        ipcs = d.stage1.ipcs or [d.stage1.ipc]
        return [{"name": f"ipc{k}", "ipc": k, "base": out / f"ipc{k}", "input": out / f"ipc{k}" / "stage1",
                 "format": "pt", "dm": True} for k in ipcs]
    if not d.input:
        raise ConfigError("set diver.input (a distilled set: ImageFolder, .pt, or images_best.pt folder) "
                          "or diver.stage1 (run the built-in DM first)")
    return [{"name": "input", "ipc": None, "base": out, "input": Path(d.input), "format": d.input_format,
             "dm": False}]


def _stage_index(from_stage: str | None) -> int | None:
    """Index of ``from_stage`` among ``STAGES`` (``None`` for none); an unknown name is a ``ConfigError``."""
    from pipeline.core.keys import stage_index

    return stage_index(STAGES, from_stage)


def stage1_distiller(method: str) -> Callable[..., dict[str, Any]]:
    """The built-in stage-1 distiller ``diver.stage1.method`` names: DM (dm.py) or gradient matching (gm.py)."""
    if method == "gm":
        from pipeline.diver.gm import run_gm

        return run_gm
    from pipeline.diver.dm import run_dm

    return run_dm


def run_stage1(cfg: Config, s: dict[str, Any], redo: bool) -> None:
    if redo and s["input"].exists():
        shutil.rmtree(s["input"])
    dm = cfg.diver.stage1
    stage1_distiller(dm.method)(cfg.data.root, s["input"], dm, ipc=s["ipc"], image_size=cfg.data.image_size,
                                max_per_class=dm.max_per_class, classes=cfg.data.classes, log=_log)


def load_format(s: dict[str, Any]) -> str:
    from pipeline.diver.inputs import detect_format

    return detect_format(s["input"]) if s["format"] == "auto" else s["format"]


def resolve_sigma(settings, model_dir: str, log=_log):
    """``sigma: learned`` on a DiT without (trained) variance channels -> the fallback, with one warning."""
    from actors.dit import variance_usable
    from pipeline.diver.guidance import SIGMA_FALLBACK

    if settings.diver.sigma != "learned":
        return settings
    usable, why = variance_usable(model_dir)
    if usable is False:
        log(f"WARNING: diver.sigma=learned but {why}: using sigma={SIGMA_FALLBACK} instead "
            f"(set diver.sigma explicitly to silence this)")
        return settings.with_sigma(SIGMA_FALLBACK)
    return settings


def vae_ref_for(cfg: Config) -> str | None:
    """The VAE DIVER uses (``diver.vae_source``): ``models.vae`` resolved, or None for the DiT folder's own."""
    from actors.loading import resolve_ref

    src = cfg.diver.vae_source
    if src == "auto":
        src = "dit" if cfg.models.dit.startswith("zoo:") else "models"
    return resolve_ref("vae", cfg.models.vae, cfg.models.zoo_dir) if src == "models" else None


def input_fingerprint(data) -> str:
    """sha256 of the input pixels, labels and class ids (what the recovered images depend on)."""
    import hashlib

    h = hashlib.sha256(data.images.contiguous().numpy().tobytes())
    h.update(data.labels.numpy().astype(np.int64).tobytes())
    h.update(json.dumps(list(data.classes)).encode())
    return h.hexdigest()


def hardware_settings(cfg: Config) -> dict[str, Any]:
    """Manifest settings of how the models run, present only where they change the bits from the CPU
    defaults, so manifests written before they existed stay resumable: GPU actors (``auto`` dtype is bf16
    there), ``channels_last`` in effect (``auto``: on GPU actors), ``compile``."""
    m, gpu = cfg.models, cfg.ray.actor_num_gpus > 0
    out: dict[str, Any] = {"device": "gpu:auto-bf16"} if gpu else {}
    if m.channels_last is True or (m.channels_last == "auto" and gpu):
        out["channels_last"] = True
    if m.compile:
        out["compile"] = True
    return out


def check_resumable(writer, settings: dict[str, Any], out_dir: Path) -> None:
    """A re-run may resume only a manifest written with the same settings and input."""
    old = writer.manifest.get("settings") or {}
    if not writer.entries:
        writer.manifest["settings"] = settings
        return
    new = json.loads(json.dumps(settings))
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:4])
        raise ConfigError(
            f"{out_dir} holds {len(writer.entries)} images made with other settings or another input ({shown}); "
            "pick another output.dir, or pass output.overwrite=true to recompute them"
        )


def class_settings(data, d, class_map: dict[str, int] | None, dit_classes: tuple[int | None, str],
                   tensor_input: bool) -> tuple[dict[str, int], int | None]:
    """(input class id -> DiT class index, the class count the actors must find) for one set; refuses what
    is ambiguous. ``dit_classes``: the DiT's class count and why it is unknown (``dit_num_classes``).

    Unnamed tensor labels (``0..K-1`` without ``diver.input_classes``) are DiT indices only when the set
    has exactly the DiT's classes: MTT's ImageFruit labels 0..9 are not tench .. great white shark.
    """
    from pipeline.diver.classes import IMAGENET1K_CLASSES, dit_class_map

    num_classes, why = dit_classes
    if tensor_input and not data.named and class_map is None and (num_classes is None
                                                                   or len(data.classes) != num_classes):
        raise ConfigError(
            f"{d.input}: a tensor input ({data.fmt}) has only label indices {data.classes[:3]}...; without "
            "diver.class_map they would land on DiT classes 0..K-1. Set diver.input_classes (the class ids in "
            "label order, e.g. wnids: then they map by the ImageNet-1K order) or diver.class_map (class id -> "
            "DiT class index)"
        )
    mapping, how = dit_class_map(data.classes, class_map, num_classes)
    if num_classes is not None:
        return mapping, None
    _log(f"WARNING: {why}; {d.input or 'stage 1'}: class ids mapped by {how} without the DiT's class count "
         "(the recovery actors check it when they load the DiT)")
    return mapping, IMAGENET1K_CLASSES if how == "imagenet1k" else None


def resolve_timestep_embedding(cfg: Config) -> str:
    """``diver.timestep_embedding``: ``auto`` is ``diffusers`` for ``zoo:`` DiTs (trained in diffusers), else
    ``dit`` (hub ids and folders hold DiT-XL/2-style weights converted from facebookresearch/DiT)."""
    kind = cfg.diver.timestep_embedding
    if kind == "auto":
        kind = "diffusers" if cfg.models.dit.startswith("zoo:") else "dit"
    return kind


def recover_stage(cfg: Config, model_dir: str, settings: Any, vae_ref: str | None,
                  faults: dict[str, Any] | None = None, expected_classes: int | None = None) -> Any:
    """The DiT pool: ``DiTRecoverActor`` over rows that carry their image (``recover_sets``), no decode."""
    from actors.dit import DiTRecoverActor
    from pipeline.core.actor_stage import ActorStage

    d = cfg.diver
    ctor = {"model_ref": model_dir, "settings": settings.as_dict(), "resolution": d.resolution,
            "dtype": cfg.models.dtype, "channels_last": cfg.models.channels_last, "compile": cfg.models.compile,
            "micro_batch": cfg.ray.micro_batch_sizes.get("recover"), "faults": faults,
            "vae_ref": vae_ref, "expected_classes": expected_classes,
            **({"output_size": d.resolution} if d.input_tiles > 1 else {})}
    return ActorStage("recover", DiTRecoverActor, ctor, default_batch=d.batch_size, threads=d.torch_threads,
                      max_blocks=64)


def recover_sets(cfg: Config, sets: list[dict[str, Any]], redo: bool) -> dict[str, int]:
    """Recover every set through one Ray Data pipeline (one actor pool for all sets)."""
    from actors.dit import dit_num_classes
    from actors.loading import resolve_ref
    from pipeline.core.ray_setup import ray_session
    from pipeline.core.seeds import image_seed
    from pipeline.core.write import DistilledSetWriter
    from pipeline.diver.guidance import RecoverSettings
    from pipeline.diver.inputs import load_class_map, load_stage1
    from pipeline.diver.tiles import TileBuffer, check_tiles, split_tiles, tile_seed

    d = cfg.diver
    settings = RecoverSettings.from_mapping({**d.model_dump(mode="python"),
                                             "timestep_embedding": resolve_timestep_embedding(cfg)})
    model_dir = resolve_ref("dit", cfg.models.dit, cfg.models.zoo_dir)  # zoo models are built here, once
    settings = resolve_sigma(settings, model_dir)
    vae_ref = vae_ref_for(cfg)
    class_map = load_class_map(d.class_map)
    dit_classes = dit_num_classes(model_dir)  # (the DiT's class count, why it is unknown)
    expected_classes = None
    manifest_settings = {**settings.as_dict(), "seed": d.seed, "resolution": d.resolution, "dit": cfg.models.dit,
                         "vae": vae_ref or "dit", "dtype": cfg.models.dtype, **hardware_settings(cfg)}
    writers: dict[str, DistilledSetWriter] = {}
    rows: list[dict[str, Any]] = []
    tiled, sizes = d.input_tiles > 1, {}
    for s in sets:
        out_dir = s["base"] / "diver"
        if redo and out_dir.exists():
            shutil.rmtree(out_dir)
        if d.input_classes is not None and not s["dm"] and load_format(s) == "imagefolder":
            raise ConfigError("diver.input_classes names the labels of tensor inputs (pt / mtt); an ImageFolder "
                              "input has its class ids as folder names: remove diver.input_classes")
        data = load_stage1(s["input"], s["format"], d.input_mean if not s["dm"] else None,
                           d.input_std if not s["dm"] else None, classes=None if s["dm"] else d.input_classes,
                           experiment=d.input_experiment)
        s["data"] = data
        check_tiles(data.images, d.input_tiles, str(s["input"]))
        mapping, expected = class_settings(data, d, class_map, dit_classes, tensor_input=not s["dm"])
        expected_classes = expected or expected_classes
        classes = [mapping[c] for c in data.class_ids()]
        # the class map and the DiT's class count decide the images: a change never resumes old ones
        set_settings = {**manifest_settings, "input": str(s["input"]), "input_format": data.fmt,
                        "normalization": data.normalization, "input_sha256": input_fingerprint(data),
                        "class_map": mapping, "dit_num_classes": dit_classes[0]}
        if d.input_tiles != 1:  # only then: manifests of untiled runs stay resumable
            set_settings["input_tiles"] = d.input_tiles
        writer = DistilledSetWriter(out_dir, "diver", set_settings, image_format=cfg.output.image_format)
        check_resumable(writer, set_settings, out_dir)
        writers[s["name"]] = writer
        cids, idx = data.class_ids(), data.index_in_class()
        s["keys"] = [f"c{c}_i{k:03d}" for c, k in zip(cids, idx)]
        for i, key in enumerate(s["keys"]):
            if writer.done(key):
                continue
            row = {"set": s["name"], "key": key, "class_id": cids[i], "label": int(data.labels[i]),
                   "index": int(idx[i]), "source": data.sources[i], "dit_class": int(classes[i]),
                   "seed": image_seed(d.seed, cids[i], idx[i])}
            if tiled:  # one row per tile; recovered at the DiT resolution, re-tiled below
                sizes[(s["name"], key)] = tuple(data.images.shape[-2:])
                rows.extend({**row, "tile": j, "image_seed": row["seed"], "seed": tile_seed(row["seed"], j),
                             "image": t.permute(1, 2, 0).numpy().astype(np.float32)}
                            for j, t in enumerate(split_tiles(data.images[i], d.input_tiles)))
            else:
                rows.append({**row, "image": data.images[i].permute(1, 2, 0).numpy().astype(np.float32)})
    if not rows:
        _log("recover: every image is already in the manifests (resumed)")
        return {name: 0 for name in writers}
    ray_cfg = cfg.ray
    written = {name: 0 for name in writers}
    from pipeline.core.console import progress
    from pipeline.core.faults import configure_data_context, fault_kwargs

    with ray_session(ray_cfg):
        configure_data_context(ray_cfg)  # retry injected/transient faults, ray.max_errored_blocks
        stage = recover_stage(cfg, model_dir, settings, vae_ref, fault_kwargs(cfg), expected_classes)
        pool_kw = stage.pool(cfg)
        _log(f"recover: {len(rows)} images, DiT {cfg.models.dit}, pool {pool_kw['compute'].max_size}, "
             f"batch {pool_kw['batch_size']}, steps {settings.first_index()}..0 "
             f"(index {d.num_inference_steps - 1} = t 999), "
             f"window {list(d.fusion_window)}, gamma {d.gamma}, sigma {settings.diver.sigma}, "
             f"timestep embedding {settings.timestep_embedding}")
        ds = stage.dataset(cfg, rows)
        tiles = TileBuffer(d.input_tiles, sizes)
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for j in range(len(out["key"])):
                name, image, seed = str(out["set"][j]), out["recovered"][j], int(out["seed"][j])
                if tiled:
                    image = tiles.add((name, str(out["key"][j])), int(out["tile"][j]), image)
                    seed = int(out["image_seed"][j])
                    if image is None:  # other tiles of this image still to come
                        continue
                writers[name].add(
                    str(out["key"][j]), str(out["class_id"][j]), int(out["label"][j]), image,
                    {"index": int(out["index"][j]), "source": str(out["source"][j]),
                     "dit_class": int(out["dit_class"][j]), "seed": seed,
                     **({"tiles": d.input_tiles} if tiled else {})}, flush=False)
                written[name] += 1
            for w in writers.values():
                w.flush()
            progress("recover", sum(written.values()), len(rows))
    for w in writers.values():
        w.close()  # one manifest.json per set with every entry (the flushes above only appended)
    check_recovered(sets, writers)
    return written


def check_recovered(sets: list[dict[str, Any]], writers: dict[str, Any]) -> None:
    """Fail when an expected image never came back (a block dropped under ``ray.max_errored_blocks``).

    What was recovered stays in the manifests, so a re-run recovers only the missing images.
    """
    from pipeline.core.skips import missing_keys

    lost = [f"{s['name']}/{k}" for s in sets
            for k in missing_keys(s["keys"], [k for k in s["keys"] if writers[s["name"]].done(k)])]
    if lost:
        raise DataError(f"recover: {len(lost)} images did not come back from the DiT actors (first: {lost[:5]}); "
                        "the finished ones are kept: re-run to resume, and see the Ray logs for the failed blocks")


def side_by_side(s: dict[str, Any], path: Path, min_px: int = 64) -> Path:
    """One row per class: the class's input images, a gap, then their recovered versions."""
    from PIL import Image

    from pipeline.core.grids import paint_grid
    from pipeline.core.pixels import unit_chw_to_u8_hwc
    from pipeline.core.write import atomic_save_image, read_manifest

    data = s["data"]
    entries = {e["key"]: e for e in read_manifest(s["base"] / "diver")["images"]}
    h, w = data.images.shape[-2:]
    scale = max(1, -(-min_px // max(h, w)))
    ch, cw = h * scale, w * scale
    by_class: dict[int, list[int]] = {}
    for i, lab in enumerate(data.labels.tolist()):
        by_class.setdefault(lab, []).append(i)
    ncol = max(len(v) for v in by_class.values())
    rows = []
    for lab in sorted(by_class):
        idx = by_class[lab]
        recovered = [entries.get(s["keys"][i]) for i in idx]
        rows.append([unit_chw_to_u8_hwc(data.images[i]) for i in idx] + [None] * (ncol - len(idx))
                    + [s["base"] / "diver" / e["file"] if e is not None else None for e in recovered])
    canvas = paint_grid(rows, (cw, ch), cols=2 * ncol, split=ncol, gap=max(8, cw // 4),
                        resample=Image.NEAREST if scale > 1 else Image.BICUBIC)
    atomic_save_image(path, canvas)
    return path


@holds_output_lock
def run_diver(cfg: Config, from_stage: str | None = None) -> dict[str, Any]:
    """Run DIVER as configured; returns a summary (``output``, per-set paths, counts, timings)."""
    start = _stage_index(from_stage)
    if cfg.output.overwrite and start is None:
        start = 0
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    from pipeline.core.digits import ensure_demo_data

    ensure_demo_data(cfg, log=_log)  # also when called without `semdistill run` (the demo, sweeps)
    sets = _sets(cfg, out)
    timings: dict[str, float] = {}
    t0 = time.time()
    for s in sets:
        if s["dm"]:
            run_stage1(cfg, s, redo=start == 0)
        elif not s["input"].exists():
            raise DataError(f"diver.input not found: {s['input']}")
    timings["stage1_s"] = round(time.time() - t0, 1)
    t1 = time.time()
    written = recover_sets(cfg, sets, redo=start is not None and start <= 1)
    timings["recover_s"] = round(time.time() - t1, 1)
    summary: dict[str, Any] = {"method": "diver", "output": str(out), "sets": {}, "dit": cfg.models.dit}
    for s in sets:
        entry: dict[str, Any] = {"stage1": str(s["input"]), "recovered": str(s["base"] / "diver"),
                                 "images": len(s["keys"]), "recovered_now": written.get(s["name"], 0),
                                 "ipc": s["ipc"], "input_format": s["data"].fmt}
        if not s["dm"] and s["data"].fmt != "imagefolder":  # a tensor input: evaluated beside DIVER's output
            from pipeline.diver.input_images import write_input_images

            entry["input_images"] = str(write_input_images(s["data"], s["keys"], s["base"] / "input_images",
                                                           str(s["input"]), input_fingerprint(s["data"])))
        if cfg.diver.side_by_side:
            entry["side_by_side"] = str(side_by_side(s, s["base"] / "side_by_side.png"))
        summary["sets"][s["name"]] = entry
        _log(f"diver {s['name']}: {entry['images']} images -> {entry['recovered']}")
    timings["total_s"] = round(time.time() - t0, 1)
    summary["timings"] = timings
    from pipeline.core.write import atomic_write_json

    atomic_write_json(out / "summary.json", summary)
    return summary
