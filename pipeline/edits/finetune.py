"""Stage ``finetune`` (EDITS, docs/METHODS.md step 9): text-to-image fine-tune of SD on the captioned set.

The captioned images go to a Ray Train ``TorchTrainer`` running ``tuning.finetune_sd.train_loop``;
the final checkpoint's EMA UNet (and VAE, if trained) plus the base pipeline's other parts become
a diffusers folder (``edits.finetune.output``, default ``<output.dir>/finetuned_sd``) that the
generate stage loads. The same settings resume the same Ray Train run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from actors.loading import load_pretrained, offline, resolve_ref
from pipeline.core.read import decode_batch
from pipeline.core.write import atomic_folder, remove
from tuning.checkpoints import fit_or_disk_full
from tuning.finetune_sd import COMPLETE, DATA_CPUS, shuffled_rows, steps_per_epoch, total_steps, train_loop

# what the fine-tuned model depends on (see pipeline/edits/state.py); not the logging / checkpoint
# interval, the CPUs or threads per worker, nor where the model and checkpoints are stored
DEPENDS_ON = ("stage:caption", "models.sd", "input:weights:sd", "edits.finetune.learning_rate",
              "edits.finetune.epochs",
              "edits.finetune.batch_size", "edits.finetune.gradient_accumulation_steps",
              "edits.finetune.ema_decay",
              "edits.finetune.mixed_precision", "edits.finetune.resolution", "edits.finetune.num_workers",
              "edits.finetune.use_gpu", "edits.finetune.max_steps", "edits.finetune.seed",
              "edits.finetune.snr_gamma", "edits.finetune.caption_dropout", "edits.finetune.vae_steps",
              "edits.finetune.vae_learning_rate", "edits.finetune.vae_kl_weight",
              "edits.finetune.cache_latents",
              "edits.finetune.max_grad_norm", "edits.finetune.random_flip",
              "edits.finetune.shuffle_buffer_size")


def assemble_pipeline(base_ref: str, unet_dir: str | os.PathLike, out: str | os.PathLike,
                      zoo_dir: str | None = None, vae_dir: str | os.PathLike | None = None) -> Path:
    """Base SD pipeline with the fine-tuned UNet (and VAE, if trained), saved atomically as a diffusers
    folder."""
    # heavy: diffusers (not loaded when this module is imported)
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    out = Path(out)
    pipe = load_pretrained("sd", base_ref, StableDiffusionPipeline.from_pretrained, zoo_dir,
                           safety_checker=None, requires_safety_checker=False)
    pipe.unet = UNet2DConditionModel.from_pretrained(unet_dir)
    if vae_dir is not None:
        pipe.vae = AutoencoderKL.from_pretrained(vae_dir)
    with atomic_folder(out, marker=COMPLETE, marker_text="finetuned\n") as tmp:
        pipe.save_pretrained(tmp)
    return out


def ordered_ingest() -> Any:
    """Ray Train's ingest options with ``preserve_order``: the workers read the shuffled rows in one fixed
    order."""
    # heavy: ray (not loaded when this module is imported)
    from ray.train import DataConfig

    opts = DataConfig.default_ingest_options()
    opts.preserve_order = True
    return DataConfig(execution_options=opts)


def run_stage(run: Any, state: Any, force: bool) -> dict[str, Any]:
    """Fine-tune ``models.sd`` on the captioned real images; writes the diffusers folder."""
    # heavy: ray, pydantic, yaml (not loaded when this module is imported)
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.core.ray_setup import block_count
    from pipeline.edits.caption import caption_key, load_captions

    cfg, ft = run.cfg, run.cfg.edits.finetune
    out = run.paths.finetuned(cfg)
    local_storage = (run.paths.art / "ray_train").resolve()
    storage = ft.storage_path or str(local_storage)  # multi-node: a shared path or s3:// URI

    run_name = f"finetune-{state.hash}"  # same settings resume the same Ray Train run

    def clear() -> None:
        remove(out, local_storage)
        if ft.storage_path and "://" not in ft.storage_path:
            remove(Path(ft.storage_path) / run_name)

    state.begin(clear, force)
    if (out / COMPLETE).exists():
        return {"output": str(out), "resumed": "already complete"}
    captions = load_captions(run, caption_key(run))
    rows = [{"path": r.path, "caption": captions[r.path]} for r in run.index.records if r.path in captions]
    rows = shuffled_rows(rows, ft.seed)  # scan order is class by class
    steps = total_steps(len(rows), ft)
    use_gpu = bool(ft.use_gpu and ray.cluster_resources().get("GPU", 0) > 0)
    run.log(f"[edits] finetune: {len(rows)} images, {steps} steps, {ft.num_workers} worker(s), gpu={use_gpu}")
    ds = ray.data.from_items(rows, override_num_blocks=block_count(len(rows)))
    # each data task needs DATA_CPUS beside the Train workers (Ray Data's filter and select ask for a whole
    # CPU
    # by default, which a sweep trial holding a CPU on a 2-CPU machine never gets: the fine-tune waited
    # forever)
    ds = ds.map_batches(decode_batch, fn_kwargs={"size": ft.resolution}, batch_size=64, num_cpus=DATA_CPUS)
    ds = ds.filter(lambda r: not r["error"], num_cpus=DATA_CPUS)
    ds = ds.select_columns(["image", "caption"], num_cpus=DATA_CPUS)
    base = resolve_ref("sd", cfg.models.sd, run.zoo_dir)
    loop_cfg = {"model": base, "offline": offline(), "seed": ft.seed, "learning_rate": ft.learning_rate,
                "ema_decay": ft.ema_decay, "mixed_precision": ft.mixed_precision,
                "gradient_accumulation_steps": ft.gradient_accumulation_steps, "batch_size": ft.batch_size,
                "total_steps": steps, "checkpoint_every_steps": ft.checkpoint_every_steps,
                "caption_dropout": ft.caption_dropout,
                "threads": ft.torch_threads or max(1, int(ft.num_cpus_per_worker)),
                "log_every_steps": ft.log_every_steps, "snr_gamma": ft.snr_gamma, "vae_steps": ft.vae_steps,
                "vae_learning_rate": ft.vae_learning_rate, "vae_kl_weight": ft.vae_kl_weight,
                "cache_latents": ft.cache_latents, "max_grad_norm": ft.max_grad_norm,
                "random_flip": ft.random_flip,
                "shuffle_buffer_size": ft.shuffle_buffer_size,
                "steps_per_epoch": steps_per_epoch(len(rows), ft)}
    trainer = TorchTrainer(
        train_loop, train_loop_config=loop_cfg, datasets={"train": ds}, dataset_config=ordered_ingest(),
        scaling_config=ScalingConfig(num_workers=ft.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": ft.num_cpus_per_worker,
                                                           **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(name=run_name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.ray.max_restarts),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    t0 = time.perf_counter()
    result = fit_or_disk_full(trainer, storage)
    train_s = time.perf_counter() - t0
    if result.checkpoint is None:
        from pipeline.errors import SemdistillError

        raise SemdistillError(f"finetune: Ray Train finished without a checkpoint ({result.error})")
    with result.checkpoint.as_directory() as d:
        if not (Path(d) / "unet").is_dir():
            from pipeline.errors import SemdistillError

            raise SemdistillError(f"finetune: the last checkpoint {d} has no final UNet; re-run to resume")
        vae_dir = Path(d) / "vae"
        assemble_pipeline(cfg.models.sd, Path(d) / "unet", out, run.zoo_dir,
                          vae_dir if vae_dir.is_dir() else None)
    metrics = dict(result.metrics or {})
    return {"output": str(out), "steps": int(metrics.get("step", steps)), "final_loss": metrics.get("loss"),
            "images": len(rows), "train_s": round(train_s, 1), "gpu": use_gpu}
