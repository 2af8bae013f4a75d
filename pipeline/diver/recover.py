"""DIVER's recovery: every set's missing images through one Ray Data pipeline, one DiT actor pool for all.

Rows of the distilled sets (pixels in [0, 1], one row per tile with ``diver.input_tiles``) ->
``DiTRecoverActor`` pool (``ActorPoolStrategy(size=ray.pool_sizes.recover)``) -> the driver writes each set's
ImageFolder + ``manifest.json`` (source image, DiT class, seed, settings). Images whose key is in a manifest
written with the same settings are not recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actors.dit import DiTRecoverActor
from pipeline.config import Config
from pipeline.core.actor_stage import ActorStage
from pipeline.core.console import progress
from pipeline.core.faults import configure_data_context, fault_kwargs
from pipeline.core.ray_setup import ray_session
from pipeline.core.seeds import image_seed
from pipeline.core.skips import missing_keys
from pipeline.core.write import DistilledSetWriter
from pipeline.diver.guidance import RecoverSettings
from pipeline.diver.recovery import Recovery
from pipeline.diver.sets import LoadedSet, log
from pipeline.diver.tiles import TileBuffer, split_tiles, tile_seed
from pipeline.errors import ConfigError, DataError


def recover_stage(cfg: Config, model_dir: str, settings: RecoverSettings, vae_ref: str | None,
                  faults: dict[str, Any] | None = None, expected_classes: int | None = None) -> ActorStage:
    """The DiT pool: ``DiTRecoverActor`` over rows that carry their image (``pending_rows``), no decode."""
    d = cfg.diver
    ctor = {"model_ref": model_dir, "settings": settings.as_dict(), "resolution": d.resolution,
            "dtype": cfg.models.dtype, "channels_last": cfg.models.channels_last,
            "compile": cfg.models.compile,
            "micro_batch": cfg.ray.micro_batch_sizes.get("recover"), "faults": faults,
            "vae_ref": vae_ref, "expected_classes": expected_classes,
            **({"output_size": d.resolution} if d.input_tiles > 1 else {})}
    return ActorStage("recover", DiTRecoverActor, ctor, default_batch=d.batch_size, threads=d.torch_threads,
                      max_blocks=64)


def check_resumable(writer: DistilledSetWriter, settings: dict[str, Any], out_dir: Path) -> None:
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
            f"{out_dir} holds {len(writer.entries)} images made with other settings or another input "
            f"({shown}); pick another output.dir, or pass output.overwrite=true to recompute them"
        )


@dataclass(frozen=True)
class WriteSettings:
    """How recovered images are cut into rows and written, read from the config once per run."""

    seed: int  # ``diver.seed``: each image's seed is derived from it (``image_seed``)
    input_tiles: int  # ``diver.input_tiles``: rows per image side (1: the image is one row)
    image_format: str  # ``output.image_format`` of the recovered ImageFolders

    @classmethod
    def from_config(cls, cfg: Config) -> WriteSettings:
        return cls(cfg.diver.seed, cfg.diver.input_tiles, cfg.output.image_format)


def open_writer(s: LoadedSet, image_format: str) -> DistilledSetWriter:
    """The writer of ``s``'s recovered set, holding what an earlier run with the same settings wrote."""
    out_dir = s.set.recovered
    writer = DistilledSetWriter(out_dir, "diver", s.settings, image_format=image_format)
    check_resumable(writer, s.settings, out_dir)
    return writer


def pending_rows(s: LoadedSet, writer: DistilledSetWriter, ws: WriteSettings,
                 sizes: dict[tuple[str, str], tuple[int, int]]) -> Iterator[dict[str, Any]]:
    """One row per image of ``s`` not yet written (per tile when tiled: each tile's size goes in
    ``sizes``)."""
    data = s.data
    cids, idx = data.class_ids(), data.index_in_class()
    for i, key in enumerate(s.keys):
        if writer.done(key):
            continue
        row = {"set": s.set.name, "key": key, "class_id": cids[i], "label": int(data.labels[i]),
               "index": int(idx[i]), "source": data.sources[i], "dit_class": int(s.dit_classes[i]),
               "seed": image_seed(ws.seed, cids[i], idx[i])}
        if ws.input_tiles > 1:  # one row per tile; recovered at the DiT resolution, re-tiled when written
            sizes[(s.set.name, key)] = tuple(data.images.shape[-2:])
            yield from ({**row, "tile": j, "image_seed": row["seed"], "seed": tile_seed(row["seed"], j),
                         "image": t.permute(1, 2, 0).numpy().astype(np.float32)}
                        for j, t in enumerate(split_tiles(data.images[i], ws.input_tiles)))
        else:
            yield {**row, "image": data.images[i].permute(1, 2, 0).numpy().astype(np.float32)}


def write_batches(ds: Any, writers: Mapping[str, DistilledSetWriter], total: int,
                  tiles: TileBuffer) -> dict[str, int]:
    """Write what the pool returns into each set's writer (a tiled image once all its tiles are back);
    returns the images written per set."""
    n_tiles = tiles.n
    written = {name: 0 for name in writers}
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for j in range(len(out["key"])):
            name, image, seed = str(out["set"][j]), out["recovered"][j], int(out["seed"][j])
            if n_tiles > 1:
                image = tiles.add((name, str(out["key"][j])), int(out["tile"][j]), image)
                seed = int(out["image_seed"][j])
                if image is None:  # other tiles of this image still to come
                    continue
            writers[name].add(
                str(out["key"][j]), str(out["class_id"][j]), int(out["label"][j]), image,
                {"index": int(out["index"][j]), "source": str(out["source"][j]),
                 "dit_class": int(out["dit_class"][j]), "seed": seed,
                 **({"tiles": n_tiles} if n_tiles > 1 else {})}, flush=False)
            written[name] += 1
        for w in writers.values():
            w.flush()
        progress("recover", sum(written.values()), total)
    return written


def check_recovered(expected: Mapping[str, Sequence[str]], writers: Mapping[str, DistilledSetWriter]) -> None:
    """Fail when an expected image (``expected``: the keys per set) never came back (a block dropped under
    ``ray.max_errored_blocks``).

    What was recovered stays in the manifests, so a re-run recovers only the missing images.
    """
    lost = [f"{name}/{k}" for name, keys in expected.items()
            for k in missing_keys(keys, [k for k in keys if writers[name].done(k)])]
    if lost:
        raise DataError(f"recover: {len(lost)} images did not come back from the DiT actors (first: "
                        f"{lost[:5]}); the finished ones are kept: re-run to resume, and see the Ray logs "
                        "for the failed blocks")


def recover(cfg: Config, sets: Sequence[LoadedSet], recovery: Recovery) -> dict[str, int]:
    """Recover the images of ``sets`` not yet in their manifests; returns the images written per set."""
    settings = recovery.settings
    ws = WriteSettings.from_config(cfg)
    # 1. Each set's writer (refusing a manifest of other settings) and its rows still to recover
    writers = {s.set.name: open_writer(s, ws.image_format) for s in sets}
    sizes: dict[tuple[str, str], tuple[int, int]] = {}
    rows = [row for s in sets for row in pending_rows(s, writers[s.set.name], ws, sizes)]
    tiles = TileBuffer(ws.input_tiles, sizes)
    if not rows:
        log("recover: every image is already in the manifests (resumed)")
        return {name: 0 for name in writers}
    expected_classes = next((s.expected_classes for s in reversed(sets) if s.expected_classes), None)
    with ray_session(cfg.ray):
        configure_data_context(cfg.ray)  # retry injected/transient faults, ray.max_errored_blocks
        # 2. The DiT actor pool over the rows
        faults = fault_kwargs(cfg)
        stage = recover_stage(cfg, recovery.model_dir, settings, recovery.vae_ref, faults, expected_classes)
        ds, pool_kw = stage.dataset_and_pool(cfg, rows)
        log(f"recover: {len(rows)} images, DiT {cfg.models.dit}, pool {pool_kw['compute'].max_size}, "
            f"batch {pool_kw['batch_size']}, steps {settings.first_index()}..0 "
            f"(index {settings.diver.num_inference_steps - 1} = t 999), "
            f"window {list(settings.diver.fusion_window)}, gamma {settings.diver.gamma}, "
            f"sigma {settings.diver.sigma}, "
            f"timestep embedding {settings.timestep_embedding}")
        # 3. The recovered images into each set's ImageFolder + manifest
        written = write_batches(ds, writers, len(rows), tiles)
    for w in writers.values():
        w.close()  # one manifest.json per set with every entry (the flushes above only appended)
    # 4. Every expected image came back
    check_recovered({s.set.name: s.keys for s in sets}, writers)
    return written
