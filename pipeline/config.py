"""One typed configuration for every stage, loaded from YAML with dotted overrides.

Names mirror the papers (``ipc``, ``tau``, ``k_image``, ``gamma``, ``start_step`` ...).
Every choice that docs/METHODS.md marks "(inferred)" is a field here, so a user or a
Tune sweep can change it without editing code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    # real training set: a local path or a URI (s3://, gs://, file://; pyarrow filesystems)
    root: str | None = None
    # imagefolder (root/<class_id>/<image>), parquet (Hugging Face image layout: image struct + integer
    # label),
    # webdataset (<key>.jpg|png + <key>.cls tar shards); auto: shards in root (or root/data) else imagefolder
    format: Literal["auto", "imagefolder", "parquet", "webdataset"] = "auto"
    # where shards of several splits sit together (train-*, validation-*): this one
    split: str | None = "train"
    val_root: str | None = None  # real validation set (evaluation)
    class_names: str | None = None  # id -> words table (json, or "wnid words" lines)
    image_size: int = Field(32, gt=0)  # resolution of the distilled set
    extensions: list[str] = [".jpg", ".jpeg", ".png", ".webp"]
    classes: list[str] | None = None  # optional class subset (ids)
    max_per_class: int | None = Field(None, gt=0)  # optional per-class cap (smoke runs)
    follow_symlinks: bool = True
    max_skipped_fraction: float = Field(0.05, ge=0.0, le=1.0)  # fail when more images are bad


class ModelsConfig(Section):
    """Model id or local path per role; ``zoo:<role>`` means the local tiny model zoo."""

    vlm: str = "llava-hf/llava-1.5-7b-hf"
    clip: str = "openai/clip-vit-large-patch14"
    vae: str = "stabilityai/sd-vae-ft-mse"
    dit: str = "facebook/DiT-XL-2-256"
    sd: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    llm: str = "Qwen/Qwen2.5-7B-Instruct"
    llm_backend: Literal["transformers", "vllm", "openai"] = "transformers"
    llm_url: str | None = None  # OpenAI-compatible endpoint for llm_backend=openai
    vlm_backend: Literal["transformers", "vllm"] = "transformers"
    # vLLM through ray.data.llm: extra vLLM engine args (tensor_parallel_size, max_model_len, ...) and
    # extra vLLMEngineProcessorConfig fields (e.g. placement_group_config: {bundles: [{CPU: 1}]} on CPU nodes)
    vllm_engine_kwargs: dict[str, Any] = {}
    vllm_processor_kwargs: dict[str, Any] = {}
    zoo_dir: str | None = None  # where ``zoo:`` models live (default: user cache dir)
    # auto: bf16 on CUDA (fp16 where the GPU has no bf16), fp32 on CPU (actors/loading.py:pick_dtype)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # UNet and VAE weights in NHWC (cuDNN's fast convolution layout); auto: on CUDA only
    # (actors/gpu_defaults.py)
    channels_last: Literal["auto", True, False] = "auto"
    # torch.compile the UNet, the DiT transformer and the VAE decoder (first batch compiles)
    compile: bool = False


class FinetuneConfig(Section):
    enabled: bool = False
    learning_rate: float = 1e-5
    epochs: int = 8
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    ema_decay: float = 0.9999
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    resolution: int = 512
    num_workers: int = 1
    use_gpu: bool = True
    max_steps: int | None = None
    output: str | None = None  # default: <output.dir>/finetuned_sd
    seed: int = 0
    checkpoint_every_steps: int = Field(500, gt=0)  # Ray Train checkpoint (and resume) interval
    num_cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, gt=0)  # CPU workers' torch threads (default: num_cpus_per_worker)
    snr_gamma: float | None = Field(None, gt=0)  # Min-SNR loss weighting, as diffusers' --snr_gamma (5.0)
    log_every_steps: int = Field(50, gt=0)  # the worker prints step, loss and s/step this often
    caption_dropout: float = Field(0.0, ge=0.0, le=1.0)  # share of empty prompts (keeps CFG working)
    vae_steps: int = Field(0, ge=0)  # >0: first train the VAE (demo zoo: it is random-init; SD 1.5's is not)
    vae_learning_rate: float = Field(2e-3, gt=0)
    vae_kl_weight: float = Field(1e-6, ge=0)
    cache_latents: bool = False  # encode the set once per worker (small sets only: latents held in memory)
    # Ray Train checkpoints; multi-node: shared FS or s3:// (default: artefacts/)
    storage_path: str | None = None
    # read: diffusers' train_text_to_image.py, which the authors used (--max_grad_norm 1.0, --random_flip; its
    # DataLoader reshuffles every epoch: here the rows are shuffled with `seed`, then each epoch with seed +
    # epoch)
    # clip the UNet's gradient norm before each step; None: off
    max_grad_norm: float | None = Field(1.0, gt=0)
    random_flip: bool = True  # mirror each training image left-right with probability 1/2
    # rows of the per-epoch local shuffle buffer per worker; 0: off
    shuffle_buffer_size: int = Field(256, ge=0)


class EditsConfig(Section):
    ipc: int = Field(10, gt=0)
    seed: int = 42
    caption_prompt: str | None = None  # None: our built-in instruction
    caption_max_tokens: int = Field(77, gt=0)
    # GSQ and k-means on the raw CLIP projections (read: the authors' normalisation line discards its result,
    # einsteinxia/EDITS distillation/gen_prototype.py @ 9983f5a); true: L2-normalise before and after fusing
    feature_normalize: bool = False
    feature_image_size: int = 224
    # CLIP image feature (read, the authors' code): the projected CLS token straight from the last layer
    # (raw_cls), or get_image_features' pooled output, which applies post_layernorm first (pooled)
    clip_image_feature: Literal["raw_cls", "pooled"] = "raw_cls"
    # resizing before CLIP and the VAE (read, the authors' code): squash = resize to size x size ignoring the
    # aspect ratio; crop = shorter side to size, then a center crop. The captioner always gets crop.
    resize_mode: Literal["squash", "crop"] = "squash"
    # CLIP input resize filter (read: the authors' loader, torchvision Resize((224, 224)), bilinear)
    feature_resample: Literal["bicubic", "bilinear", "lanczos"] = "bilinear"
    # VAE prototypes at 512 (read: LANCZOS)
    vae_resample: Literal["bicubic", "bilinear", "lanczos"] = "lanczos"
    tau: float = Field(0.01, gt=0)
    fusion: Literal["sum", "concat"] = "concat"  # GSQ: [I, W.T] (read: prototype_kmeans_ours) or I + W.T
    contamination: float = Field(0.0, ge=0.0, lt=0.5)  # LocalOutlierFactor, 0 = off
    small_class_policy: Literal["error", "shrink"] = "error"
    # k-means per class: the authors' call, sklearn KMeans(n_clusters=ipc, random_state=seed, n_init=10), with
    # these four passed as its max_iter, n_init, tol and init (sklearn's defaults but n_init)
    kmeans_niter: int = Field(300, gt=0)  # max_iter
    kmeans_nredo: int = Field(10, gt=0)  # n_init (read: 10)
    kmeans_tol: float = Field(1e-4, ge=0.0)  # tol
    kmeans_init: Literal["k-means++", "random"] = "k-means++"  # init
    k_image: int = Field(5, gt=0)
    k_text: int = Field(5, gt=0)
    summary_prompt: str | None = None
    # the text prototype (step 7): llm = the paper's LLM summary of the k_text captions; class_prompt = the
    # paper's "without text prototypes" ablation, every cluster prompted with edits.class_prompt instead
    # (inferred: docs/METHODS.md does not name the replacement prompt; we use the plain class-name prompt of
    # class-conditioned img2img baselines)
    text_prototype: Literal["llm", "class_prompt"] = "llm"
    class_prompt: str = "a photo of {class_name}"
    max_tokens: int = Field(77, gt=0)
    vae_resolution: int = 512
    strength: float = Field(0.7, gt=0.0, le=1.0)
    guidance_scale: float = Field(10.0, ge=0.0)
    negative_prompt: str = "cartoon, anime, painting"
    num_inference_steps: int = Field(50, gt=0)
    scheduler: Literal["ddim"] = "ddim"
    finetune: FinetuneConfig = FinetuneConfig()
    # --- inferred choices of our implementation (not fixed by the paper) ---
    # auto: instruct when the VLM has a chat template
    caption_style: Literal["auto", "instruct", "prefix"] = "auto"
    caption_prefix: str = "a photo of {class_name},"  # prefix-style captioners (BLIP) continue this text
    require_class_name: bool = True  # prepend the class name to a caption / text prototype that lacks it
    lof_neighbors: int = Field(10, gt=0)  # LocalOutlierFactor n_neighbors (read: 10 in the authors' code)
    vae_source: Literal["vae", "sd"] = "vae"  # sd: encode prototypes with the generator's own VAE
    llm_temperature: float = Field(0.0, ge=0.0)  # 0 = greedy
    # transformers LLM: left-pad prompts to at least this many tokens so a text prototype does not depend on
    # which clusters share its micro-batch (prompts longer than this fall back to the batch's longest); 0: off
    llm_pad_tokens: int = Field(512, ge=0)
    llm_torch_threads: int | None = Field(None, gt=0)  # transformers LLM on CPU: torch threads in the actor
    llm_api_key_env: str = "OPENAI_API_KEY"  # env var read by llm_backend=openai (unset: no auth header)
    llm_timeout_s: float = Field(120.0, gt=0)
    caption_image_size: int = Field(336, gt=0)  # decode size sent to the VLM (LLaVA-1.5: 336)
    caption_flush_rows: int = Field(512, gt=0)  # caption cache is appended every this many rows
    contact_sheet: bool = True

    @field_validator("class_prompt")
    @classmethod
    def _names_the_class(cls, v: str) -> str:
        if "{class_name}" not in v:
            raise ValueError(f"edits.class_prompt {v!r} needs a {{class_name}} placeholder, "
                             "e.g. 'a photo of {class_name}'")
        return v


class DMConfig(Section):
    """Built-in classical stage-1 distiller: distribution matching (``dm``, pipeline/diver/dm.py) or gradient
    matching as DC/DSA (``gm``, pipeline/diver/gm.py); the fields after the ``gm:`` comment are GM's alone."""

    method: Literal["dm", "gm"] = "dm"
    ipc: int = Field(10, gt=0)
    iterations: int = Field(1000, gt=0)
    lr_img: float | None = None  # None: the method's reference default, DM 1.0, DC/DSA 0.1
    batch_real: int = Field(256, gt=0)
    init: Literal["real", "noise"] = "real"
    net_depth: int | None = Field(None, gt=0)  # None: from the resolution, 3 at 32 px, 4 at 64, 5 at 128 (DM)
    net_width: int = 128
    dsa: bool = True
    seed: int = 0
    ipcs: list[int] | None = None  # DIVER: distil (and recover) each of these IPCs; None: [ipc]
    max_per_class: int | None = Field(None, gt=0)  # cap on the real images read per class
    # gm: per iteration, outer_loop image updates with inner_loop epochs of network training between them
    # (None: DC's get_loops(ipc), utils.py: IPC 1 -> 1, 1; 10 -> 10, 50; 50 -> 50, 10), the network trained
    # on the synthetic set by SGD at lr_net in batches of batch_train (DC main.py defaults 0.01, 256)
    outer_loop: int | None = Field(None, gt=0)
    inner_loop: int | None = Field(None, ge=0)
    lr_net: float = Field(0.01, gt=0)
    batch_train: int = Field(256, gt=0)

    @model_validator(mode="after")
    def _gm_loops_need_gm(self) -> DMConfig:
        if self.method == "dm" and (self.outer_loop is not None or self.inner_loop is not None):
            raise ValueError("diver.stage1.outer_loop / inner_loop are gradient matching's loops, but "
                             "diver.stage1.method is dm: set method: gm or drop the loops")
        return self


class DiverConfig(Section):
    """DIVER (docs/METHODS.md). Step indices are DiT's respaced ones: ``t_i = round(i * 999 / (N - 1))``,
    index N-1 = noisiest (t 999); with N = 50 index 40 is t 816 and index 25 is t 510 (read-sibling)."""

    input: str | None = None  # distilled set: ImageFolder, .pt, or images_best.pt folder
    input_format: Literal["auto", "imagefolder", "pt", "mtt"] = "auto"
    input_mean: list[float] | None = None  # normalisation of the input set, undone before the VAE
    input_std: list[float] | None = None
    # class ids in label order for tensor inputs (pt / mtt): label k -> input_classes[k], e.g. the wnids
    # of MTT's class order; output folders are named by them (so they match the val set's folders)
    input_classes: list[str] | None = None
    # which experiment of a per-experiment .pt ({'data': [[images, labels], ...]}, the DC/DSA/DM reference
    # code's res_*.pt): -1 = the last, as that code saves them in order (inferred: the paper does not say)
    input_experiment: int = -1
    # 2: each input image is a 2x2 mosaic (NCFM's 128 px images of four 64 px sub-images): every tile is
    # recovered on its own at `resolution`, re-tiled and resized to the input size (read-sibling); 1: no tiles
    input_tiles: Literal[1, 2] = 1
    stage1: DMConfig | None = None  # run the built-in DM first when set
    seed: int = 42
    resolution: int = 256
    num_inference_steps: int = Field(50, ge=2)
    start_step: int = Field(25, ge=0)  # inherit: z_d noised to the level of this index (25: t 510, read)
    # inferred: top = run DDIM over all N steps from t 999 on the latent noised to start_step (our reading
    # of the paper's phases 50 -> 40 -> 25 -> 1 and of the sibling code); start_step = run start_step .. 0
    # only
    reverse_start: Literal["top", "start_step"] = "top"
    inheritance: Literal["noise", "ddim_inversion"] = "noise"
    gamma: float = Field(0.1, ge=0.0)  # read-sibling (0.02 for NCFM inputs)
    # x0: sibling code; zt: the paper's formula (latent before the update)
    guidance_target: Literal["x0", "zt"] = "x0"
    # [high, low] indices, guided when low <= i <= high (read-sibling)
    fusion_window: tuple[int, int] = (40, 25)
    # sigma_t of the pull: learned = DiT's learned-range std (read-sibling); posterior = sqrt of the posterior
    # variance; one_minus_alpha_bar = sqrt(1 - alpha_bar_t). learned falls back to posterior (one logged
    # warning,
    # inferred) where the DiT predicts no variance or its variance channels are untrained (a demo DiT
    # trained before the hybrid loss)
    sigma: Literal["learned", "posterior", "one_minus_alpha_bar"] = "learned"
    cfg_scale: float = Field(4.0, ge=1.0)
    # 3: CFG on latent channels 0..2 like DiT's forward_with_cfg (read); all
    cfg_channels: Literal[3, "all"] = 3
    null_class: int | None = None  # None: the DiT's num_embeds_ada_norm (1000 for DiT-XL/2)
    # json file or inline: input class id -> DiT class index. None: wnids by the ImageNet-1K order (any
    # subset),
    # numeric ids as DiT indices, SRe2L's new<k> as class k; anything else asks for it
    # (pipeline/diver/classes.py)
    class_map: str | dict[str, int] | None = None
    # the DiT's timestep embedding: dit = facebookresearch/DiT's 10000^(-k/128) (models.py, commit 4961bcb),
    # what
    # DiT-XL/2's converted weights were trained with; diffusers = its port's 10000^(-k/127); auto = diffusers
    # for zoo: DiTs (trained in diffusers), dit for hub ids and local folders
    timestep_embedding: Literal["auto", "diffusers", "dit"] = "auto"
    # which VAE (inferred): models = models.vae (default sd-vae-ft-mse, the paper's, read); dit = the VAE in
    # the
    # DiT pipeline folder (facebook/DiT-XL-2-256 converts with sd-vae-ft-ema); auto = models for hub/local
    # DiTs,
    # dit for zoo: DiTs (the demo DiT was trained in its own VAE's latent space)
    vae_source: Literal["auto", "models", "dit"] = "auto"
    batch_size: int = Field(8, gt=0)  # used when ray.batch_sizes has no "recover" entry
    # --- inferred choices of our implementation (not fixed by the paper) ---
    inversion_cfg_scale: float = Field(1.0, ge=1.0)  # CFG of the DDIM inversion (inheritance=ddim_inversion)
    # z_d = the VAE posterior's mode (deterministic) or a sample (the sibling code), seeded per image
    latent_mode: Literal["mode", "sample"] = "mode"
    torch_threads: int | None = Field(None, gt=0)  # intra-op threads per recovery actor (None: Ray's default)
    side_by_side: bool = True  # write <set>/side_by_side.png (input | recovered, one row per class)

    @field_validator("cfg_channels", mode="before")
    @classmethod
    def _cfg_channels(cls, v: Any) -> Any:
        return 3 if str(v) == "3" else v

    @model_validator(mode="after")
    def _check_input(self) -> DiverConfig:
        if self.input is not None and self.stage1 is not None:
            raise ValueError(f"diver.input ({self.input}) and diver.stage1 are both set: DIVER recovers "
                             f"either a given set or the built-in DM's; drop one (e.g. diver.stage1=null to "
                             f"recover diver.input)")
        return self

    @model_validator(mode="after")
    def _check_steps(self) -> DiverConfig:
        hi, lo = self.fusion_window
        n = self.num_inference_steps
        if hi < lo:
            raise ValueError(f"fusion_window must be [high, low] with high >= low, got "
                             f"{list(self.fusion_window)}")
        if self.start_step >= n:
            raise ValueError(f"start_step ({self.start_step}) must be below num_inference_steps ({n})")
        first = n - 1 if self.reverse_start == "top" else self.start_step
        if self.gamma > 0 and not 0 <= lo <= hi <= first:
            raise ValueError(
                f"diver.fusion_window {list(self.fusion_window)} is not inside the steps that run "
                f"({first} .. 0; index {n - 1} = noisiest, reverse_start={self.reverse_start}): guidance "
                "would be (partly) off; fix diver.fusion_window, diver.start_step or diver.reverse_start"
            )
        return self


# The stage-1 proxy family (DM/MTT distil through a ConvNet-D): DIVER's headline mean is over unseen students.
PROXY_STUDENTS = ["convnet", "convnet3", "convnet4", "convnet5", "convnet6"]
AUGMENT_OPS = ("shuffle_patches", "rrc", "flip", "jitter", "lighting", "dsa", "mixup", "cutmix")


class EvalConfig(Section):
    """Students trained on the distilled set, tested on the real val set (tuning/protocols.py presets).

    Student names (tuning/students.py): convnet, convnet3..6, resnet18_cifar_bn, resnet18_cifar_in,
    resnet18_imagenet_bn, resnet18_imagenet_in, resnet_ap10, mobilenetv2, shufflenetv2,
    efficientnet_b0, shufflenetv2_predd, mobilenetv2_predd, efficientnet_b0_predd, vit_tiny, vit_predd;
    resnet18 / resnet18_bn / resnet18_in (adaptive stem, not a published architecture).
    ``augment`` joins ops with ``+`` (applied in the order of ``AUGMENT_OPS``: ShufflePatches,
    RandomResizedCrop, flip, ColorJitter, PCA lighting, DSA, then one of mixup / CutMix), or ``none``.
    """

    students: list[str] = ["convnet", "resnet18"]
    # left out of the headline mean over students (the stage-1 proxy, as DIVER reports); [] = average all
    exclude_from_mean: list[str] = PROXY_STUDENTS
    # coreset / upper-bound rows evaluated beside the run's sets (tuning/baselines.py), same protocol
    baselines: list[Literal["random_real", "herding", "k_center", "full_real"]] = []
    baseline_ipc: int | None = Field(None, gt=0)  # None: the IPC of the run's distilled sets
    student_kwargs: dict[str, dict[str, Any]] = {}  # per student, e.g. {resnet18: {width: 32}}
    # students trained in channels-last memory format: the same math, other kernels (on one idle CPU thread
    # ResNet-18 w16 steps 1.15x faster, the ConvNet no faster: bench/channels_last.py)
    channels_last: list[str] = []
    protocol: Literal["hard", "soft"] = "hard"
    preset: str | None = None  # edits | diver | mtt | sre2l | rded | demo; explicit fields win
    epochs: int = Field(300, gt=0)
    epochs_by_ipc: dict[int, int] = {}  # {max IPC: epochs}, smallest bound >= the set's IPC wins (edits)
    # epochs x this at exactly 100 classes, floored to 100s (edits: 2/3, IDC)
    many_classes_epoch_factor: float = Field(1.0, gt=0.0)
    batch_size: int = Field(64, gt=0)
    batch_by_classes: dict[int, int] = {}  # {max classes: batch}, capped at IPC x classes
    batch_by_ipc: dict[int, int] = {}  # {max IPC: batch}, smallest bound >= the set's IPC wins (rded)
    # {exact class count: batch factor} (rded: x2 at 100 and 1000)
    batch_factor_by_classes: dict[int, float] = {}
    # above N classes these replace lr / weight_decay and raise the batch to at least min_batch
    # (edits: {100: {lr: 0.1, weight_decay: 1e-4, min_batch: 128}}, IDC/Minimax argument.py)
    recipe_above_classes: dict[int, dict[Literal["lr", "weight_decay", "min_batch"], float]] = {}
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, ge=0.0)
    lr_per_student: dict[str, float] = {}  # student-name prefix -> lr (longest prefix wins; diver)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_params: Literal["all", "weights_2d"] = "all"  # weights_2d: decay only >= 2-D weights (RDED/SRe2L)
    # cosine: to 0; step: x0.1 at 1/2; multistep: x0.2 at 2/3 and 5/6; half_cosine: 0.5(1+cos(pi t/2)), ends
    # at 0.5x; warmup_cosine: linear warm-up over warmup_fraction, then cosine to 0
    schedule: Literal["cosine", "step", "multistep", "half_cosine", "warmup_cosine"] = "cosine"
    warmup_fraction: float = Field(0.5, ge=0.0, lt=1.0)
    lr_step_unit: Literal["step", "epoch"] = "step"  # the schedule advances per optimizer step or per epoch
    augment: str = "dsa"
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    mix_alpha: float = Field(1.0, ge=0.0)  # Beta(alpha, alpha) for mixup / CutMix
    rrc_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range (ratio 3/4..4/3)
    jitter: float = Field(0.4, ge=0.0)  # ColorJitter brightness = contrast = saturation
    lighting: float = Field(0.1, ge=0.0)  # PCA lighting alpha std (ImageNet eigenvectors)
    shuffle_factor: int = Field(2, gt=0)  # ShufflePatches: factor x factor strips
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    ema_every: Literal["step", "epoch"] = "step"  # when the EMA weights are updated
    ema_warmup: bool = False  # decay min(ema_decay, 1 - 1/k) at the k-th update (ema-pytorch's, PReDD)
    eval_every: int = Field(0, ge=0)  # 0: test only after the last epoch ("best" = "final")
    eval_count: int = Field(0, ge=0)  # test every epochs / eval_count epochs (edits: 100)
    # best over tests from this fraction of training on (rded: 0.8)
    best_from: float = Field(0.0, ge=0.0, lt=1.0)
    best_every: int = Field(1, gt=0)  # past best_from, test every this many epochs (and the last; rded: 10)
    report: Literal["final", "best"] = "final"  # the number in top1_mean; both are kept
    repeats: int = Field(3, gt=0)
    temperature: float = Field(4.0, gt=0.0)
    kl_t_squared: bool = False  # soft labels: KL x T^2 (Hinton); SRe2L's / RDED's code leave the factor out
    teacher: str = "convnet"  # soft labels: the teacher's architecture (rded / sre2l: resnet18_imagenet_bn)
    teacher_required: bool = False  # soft labels: stop unless teacher_checkpoint is set (rded / sre2l)
    teacher_epochs: int = Field(30, gt=0)
    # DataLoader processes decoding the streamed real set (0: in-process)
    teacher_workers: int = Field(0, ge=0)
    # a state dict of `teacher` (ours, torchvision's or timm's ResNet-18 layout; .pt/.pth/.safetensors), or
    # "scratch": train the teacher on the real train split (None: scratch unless teacher_required)
    teacher_checkpoint: str | None = None
    teacher_mean: list[float] = [0.485, 0.456, 0.406]  # the checkpoint's input normalisation (ImageNet)
    teacher_std: list[float] = [0.229, 0.224, 0.225]
    image_size: int | None = Field(None, gt=0)  # None: the distilled images' size
    # real val: short side to this, then center crop; None: 256 at 224 px; "size": Resize(size) (edits,
    # IDC/Minimax)
    val_resize: int | Literal["size"] | None = None
    # inputs (every set and the real val) normalised with the dataset's statistics, the same for every method:
    # auto = ImageNet's for ImageNet class ids (wnids), else the real train split's, else the real val split's
    normalize: Literal["auto", "imagenet", "train", "val"] = "auto"
    zca: bool = False  # ZCA whitening fitted on the real train split (MTT's CIFAR option; small images only)
    zca_eps: float = Field(0.1, gt=0.0)  # MTT / kornia ZCAWhitening(eps=0.1)
    lr_from_set: bool = False  # a set's learned lr (MTT's lr_best.pt beside the images) replaces lr (mtt)
    dataset: str | None = None  # name in the results table (None: from the real folder's name)
    backend: Literal["ray_train", "local"] = "ray_train"  # local: in-process, sequential (debugging)
    cpus_per_job: float = Field(0.5, gt=0)  # CPUs per Ray Train worker (fractional on laptops)
    max_concurrent: int | None = Field(None, gt=0)  # jobs in flight (None: cluster CPUs / cpus_per_job)
    use_gpu: bool = False
    num_workers: int = Field(1, gt=0)  # Ray Train workers per job (DDP when > 1)
    # one TorchTrainer for all runs (its workers pull (set, student, seed) runs from a queue, so Ray Train's
    # start-up is paid once); false: one TorchTrainer per run. DDP jobs (num_workers > 1) are never packed
    pack_runs: bool = True
    seed: int = 0

    @property
    def threads(self) -> int:
        """Torch threads of one evaluation worker (and of each run it trains): ``floor(cpus_per_job)``, at
        least 1, so a fractional ``cpus_per_job`` still runs a whole thread."""
        return max(1, math.floor(self.cpus_per_job))

    @field_validator("val_resize")
    @classmethod
    def _check_val_resize(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v <= 0:
            raise ValueError(f"eval.val_resize {v}: a positive short side, 'size' or null")
        return v

    @field_validator("augment")
    @classmethod
    def _check_augment(cls, v: str) -> str:
        ops = [p for p in v.split("+") if p and p != "none"]
        bad = [p for p in ops if p not in AUGMENT_OPS]
        if bad or sum(p in ("mixup", "cutmix") for p in ops) > 1 or len(set(ops)) != len(ops):
            raise ValueError(f"eval.augment {v!r}: join {', '.join(AUGMENT_OPS)} with '+' (at most one of "
                             "mixup / cutmix), or 'none'")
        return v


class JobConfig(Section):
    """How ``semdistill submit`` packs a run for ``ray job submit`` (see cluster/runtime_env.py)."""

    working_dir: str | None = None  # None: the project root (the folder holding pyproject.toml)
    excludes: list[str] = []  # added to the built-in excludes (.venv, .git, .cache, runs, data, ...)
    # project extras installed per job, e.g. [gpu]; the nodes' setup installs the rest
    pip_extras: list[str] = []
    pip: list[str] = []  # further pip requirements for the job's runtime env
    env_vars: dict[str, str] = {}  # e.g. {HF_HOME: /mnt/shared/hf}
    hf_home: str | None = None  # shared model cache on the nodes (sets HF_HOME)
    entrypoint_num_cpus: float = Field(0.0, ge=0)  # the driver only schedules; it needs no reserved CPU
    entrypoint_num_gpus: float = Field(0.0, ge=0)


class RayConfig(Section):
    address: str | None = None  # None: RAY_ADDRESS or a new local instance
    num_cpus: int | None = None
    object_store_memory_mb: int | None = 1024  # local only
    actor_num_cpus: float = Field(0.5, gt=0)
    actor_num_gpus: float = Field(0.0, ge=0)
    # actors per stage; 0 or auto (the default): on CPUs as many as the cores hold at each actor's torch
    # threads
    # (floor(actor_num_cpus), or the role's own torch_threads) beside the decode tasks, on GPUs one per
    # actor_num_gpus share (pipeline/core/actor_stage.py); a role missing from a given dict runs 1
    pool_sizes: dict[str, Annotated[int, Field(ge=0)]] = {"caption": 0, "embed": 0, "vae": 0, "llm": 0,
                                                          "generate": 0, "recover": 0}
    # a role left out: on GPU actors (with a micro-batch) what fits in free GPU memory
    # (pipeline/core/gpu_batch.py)
    batch_sizes: dict[str, int] = {"caption": 8, "embed": 32, "vae": 8, "llm": 8, "generate": 4, "recover": 8}
    # model batch inside an actor (pipeline/core/batching.py): fixed, so outputs are byte-identical
    # whatever batch_sizes / pool_sizes are; a role missing here runs its whole Ray batch at once
    micro_batch_sizes: dict[str, int] = {"caption": 8, "embed": 32, "vae": 8, "llm": 8, "generate": 4,
                                         "recover": 8}
    max_restarts: int = 2
    max_task_retries: int = 2
    # EDITS cluster stage: classes per Ray task (start-up paid once)
    cluster_classes_per_task: int = Field(8, gt=0)
    max_errored_blocks: int = 0
    # workers' stdout/stderr streamed to the driver's terminal; false: they stay in Ray's session logs
    # (``<logs_dir>/ray_session`` links to them when logs_dir is set; the demo sets both)
    log_to_driver: bool = True
    logs_dir: str | None = None
    job: JobConfig = JobConfig()  # `semdistill submit` only

    @field_validator("pool_sizes", mode="before")
    @classmethod
    def _auto_pool(cls, v: Any) -> Any:
        """``auto`` is 0: fill the cluster (``pipeline.core.pools.pool_plan``)."""
        return {k: (0 if x == "auto" else x) for k, x in v.items()} if isinstance(v, dict) else v


class OutputConfig(Section):
    dir: str = "runs/default"
    image_format: Literal["png", "jpg"] = "png"
    overwrite: bool = False


class DebugConfig(Section):
    fail_every_n_batches: int | None = Field(None, gt=0)  # deterministic fault injection (tests)
    fault_mode: Literal["raise", "exit"] = "raise"  # raise an exception, or kill the actor mid-batch
    fault_dir: str | None = None  # markers of injected faults (default <output.dir>/.faults)
    # the driver sleeps this long after each output file it writes, so a test's SIGKILL can land between two
    # outputs of a stage that would otherwise write them within milliseconds (0: off; never part of a stage
    # key)
    pause_after_write_s: float = Field(0.0, ge=0.0)


class SweepConfig(Section):
    """``semdistill sweep``: a Ray Tune search over method settings (tuning/sweep.py)."""

    # dotted config key -> a list (grid values / random choices) or {uniform|loguniform|randint: [lo, hi]}
    params: dict[str, Any] = {}
    # grid: every combination of the lists; random: num_samples draws; optuna: Bayesian (TPE) search through
    # Ray Tune's Optuna integration, num_samples trials, lists as categorical choices
    search: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(1, gt=0)  # grid: passes over the grid; random / optuna: number of trials
    # asha: stop weak trials early, judged at each rung on the headline mean of the students done so far
    # (those outside eval.exclude_from_mean are trained first, so the proxy never judges alone)
    scheduler: Literal["none", "asha"] = "none"
    metric: Literal["mean_top1"] = "mean_top1"  # mean top-1 over the students (cross-architecture)
    classes: list[str] | None = None  # generate and evaluate on this class subset (None: data.classes)
    students: list[str] | None = None  # None: eval.students
    # student seeds per trial: a trial's score is the mean of the per-seed headline means, shown with
    # their std, so two settings are told apart by more than one seed's noise
    repeats: int = Field(2, gt=0)
    max_concurrent_trials: int | None = Field(None, gt=0)
    trial_cpus: float = Field(1.0, gt=0)
    trial_gpus: float = Field(0.0, ge=0)
    plot_param: str | None = None  # x axis of the plot (None: the first param)
    baseline_ipc: int = Field(10, gt=0)  # method none: each trial evaluates IPC random real images
    # trials distil from the rest of data.root and are scored on this seeded per-class share of it, so the
    # settings are never chosen on data.val_root (the split the report uses); 0: score on data.val_root
    holdout_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0


class Config(Section):
    method: Literal["edits", "diver", "none"] = "none"
    name: str = "run"
    data: DataConfig = DataConfig()
    models: ModelsConfig = ModelsConfig()
    edits: EditsConfig = EditsConfig()
    diver: DiverConfig = DiverConfig()
    eval: EvalConfig | None = None
    sweep: SweepConfig | None = None
    ray: RayConfig = RayConfig()
    output: OutputConfig = OutputConfig()
    debug: DebugConfig = DebugConfig()

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, v: str) -> str:
        if not v or "/" in v or "\\" in v or v.startswith("."):
            raise ValueError("name must be a plain word (no slashes, no leading dot)")
        return v


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. edits.ipc=10)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    return key.split("."), yaml.safe_load(raw) if raw.strip() else ""


def set_dotted(raw: dict[str, Any], key: str | list[str], value: Any, what: str = "key") -> None:
    """Set ``raw[a][b][c] = value`` for the dotted ``key`` ``a.b.c`` in place; missing or null sections are
    created.

    A part that holds a non-section value is a ``ConfigError`` starting with ``what`` (the key's origin).
    """
    path = key.split(".") if isinstance(key, str) else list(key)
    node = raw
    for part in path[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"{what}: {part!r} is not a config section")
        node = node[part]
    node[path[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each dotted ``key=value`` set (sub-dicts created)."""
    out = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for item in overrides:
        path, value = parse_override(item)
        set_dotted(out, path, value, what=f"override {item!r}")
    return out


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; see README 'Config reference')")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


# Fields that name local files or folders. ``load_config`` resolves them against the caller's working
# directory once, before anything is dispatched: Ray Tune trials, Train workers and Ray tasks each run in
# a working directory of their own, where a relative path means something else (or nothing).
PATH_FIELDS = ("data.root", "data.val_root", "data.class_names", "models.zoo_dir", "edits.finetune.output",
               "edits.finetune.storage_path", "diver.input", "diver.class_map", "output.dir",
               "debug.fault_dir")
# Model roles hold a hub id, ``zoo:<role>`` or a local folder; only the last is resolved.
MODEL_ROLES = ("vlm", "clip", "vae", "dit", "sd", "llm")


def _absolute(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _is_uri(value: str) -> bool:
    return "://" in value


def resolve_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """A copy of ``cfg`` whose local paths are absolute, resolved against ``base`` (default: the cwd).

    URIs (``s3://...``) stay as they are; a model role is resolved only when it is meant as a path
    (``./``, ``../``, ``~`` or an existing folder under ``base``), never a hub id or ``zoo:<role>``.
    """
    base = Path(base or Path.cwd()).resolve()
    out = cfg.model_copy(deep=True)
    for dotted in PATH_FIELDS:
        *parents, leaf = dotted.split(".")
        node: Any = out
        for part in parents:
            node = getattr(node, part)
        value = getattr(node, leaf)
        if isinstance(value, str) and value and not _is_uri(value):
            setattr(node, leaf, _absolute(value, base))
    for role in MODEL_ROLES:
        ref = getattr(out.models, role)
        if ref.startswith(("./", "../", "~")) or (not ref.startswith("zoo:") and not _is_uri(ref)
                                                 and not Path(ref).is_absolute() and (base / ref).exists()):
            setattr(out.models, role, _absolute(ref, base))
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None, resolve: bool = True) -> Config:
    """Load a YAML config (or defaults when ``path`` is None) and apply dotted overrides.

    With ``resolve`` (the default) local paths become absolute against the current working
    directory (``resolve_paths``); ``semdistill submit`` passes ``resolve=False`` so that paths
    stay relative to the job's working directory on the cluster.
    """
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config {p} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config {p} must be a mapping of sections, got {type(raw).__name__}")
    cfg = config_from_dict(apply_overrides(raw, overrides or []), source)
    return resolve_paths(cfg) if resolve else cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
