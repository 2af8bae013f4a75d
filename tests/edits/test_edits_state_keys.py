"""EDITS stage keys: every config setting either invalidates the stages whose output it changes, or nothing.

``test_every_setting_invalidates_exactly_its_stages`` walks every leaf of ``Config``; each must be
classified in ``CHANGES`` (a new setting without a row fails, naming it). A row names the units
whose output the setting changes directly; the test adds the units that read them (``READS``, by
hand from docs/METHODS.md) and compares with the keys ``run_stage_keys`` computes for a changed copy.
"""

from __future__ import annotations

import json
import shutil
import types
import typing
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image
from pydantic import BaseModel

from pipeline.config import Config, config_from_dict
from pipeline.core.keys import settings_hash

UNITS = ("caption", "embed", "cluster", "finetune", "prototype.image", "prototype.text", "generate")
# who reads whose output (finetune's only reader is the generator, and only when it is enabled)
READS = {"caption": ("embed", "finetune"), "embed": ("cluster",),
         "cluster": ("prototype.image", "prototype.text"),
         "prototype.image": ("generate",), "prototype.text": ("generate",), "finetune": (), "generate": ()}
C, E, CL, FT, PI, PT, G = UNITS
NONE: tuple[str, ...] = ()

# ---- the classification: setting -> the units whose output it changes directly (NONE: no output).
# Sections EDITS never reads are classified whole by a prefix ending in "."; every field in them is
# still changed one by one and must change no key.
CHANGES: dict[str, tuple[str, ...]] = {
    "method": NONE, "name": NONE,
    "data.root": (C,), "data.val_root": NONE, "data.class_names": (C,), "data.image_size": (G,),
    "data.extensions": (C,), "data.classes": (C,), "data.max_per_class": (C,), "data.follow_symlinks": (C,),
    "data.max_skipped_fraction": NONE,  # a check, not an output
    # which records a format or split yields reaches the stages through the fingerprint (input:fingerprint);
    # on this ImageFolder world an explicit imagefolder is what auto found, and splits name shard files only
    "data.format": NONE, "data.split": NONE,
    "models.vlm": (C,), "models.vlm_backend": (C,),
    "models.clip": (E,),  # not caption: the copy shares the tokenizer that caps captions
    "models.vae": (PI,), "models.dit": NONE, "models.llm": (PT,), "models.llm_backend": (PT,),
    "models.llm_url": NONE,  # transformers backend: no endpoint (see test_backend_only_settings)
    "models.vllm_engine_kwargs": NONE, "models.vllm_processor_kwargs": NONE,  # idem
    "models.zoo_dir": NONE,  # the same zoo, named explicitly
    "models.sd": (FT, G),  # not the text prototypes: the copy shares the tokenizer that caps them
    "models.dtype": (C, E, PI, PT, G),
    "models.channels_last": (PI, G),  # the prototype VAE, the UNet and its VAE: convolutions in NHWC
    "models.compile": (G,),  # the UNet and the VAE decoder (the prototype VAE only encodes)
    "edits.ipc": (CL,), "edits.seed": (CL, PT, G), "edits.caption_prompt": (C,),
    "edits.caption_max_tokens": (C,),
    "edits.feature_normalize": (CL,), "edits.feature_image_size": (E,), "edits.tau": (CL,),
    "edits.fusion": (CL,),
    "edits.contamination": (CL,), "edits.small_class_policy": (CL,), "edits.kmeans_niter": (CL,),
    "edits.kmeans_nredo": (CL,), "edits.k_image": (CL,), "edits.k_text": (CL,), "edits.summary_prompt": (PT,),
    "edits.max_tokens": (PT,), "edits.vae_resolution": (PI,), "edits.strength": (G,),
    "edits.guidance_scale": (G,),
    "edits.negative_prompt": (G,), "edits.num_inference_steps": (G,), "edits.scheduler": (G,),
    "edits.caption_style": (C,), "edits.caption_prefix": (C,), "edits.require_class_name": (C, PT),
    "edits.lof_neighbors": (CL,), "edits.vae_source": (PI,), "edits.llm_temperature": (PT,),
    "edits.llm_pad_tokens": (PT,), "edits.llm_torch_threads": NONE, "edits.llm_api_key_env": NONE,
    "edits.llm_timeout_s": NONE, "edits.caption_image_size": (C,), "edits.caption_flush_rows": NONE,
    "edits.contact_sheet": (G,),
    "edits.text_prototype": (PT,), "edits.class_prompt": NONE,  # the template counts only with class_prompt
    "edits.clip_image_feature": (E,), "edits.resize_mode": (E, PI), "edits.feature_resample": (E,),
    "edits.vae_resample": (PI,), "edits.kmeans_tol": (CL,), "edits.kmeans_init": (CL,),
    "edits.finetune.enabled": (G,),  # the generator becomes the fine-tuned model
    "edits.finetune.output": NONE, "edits.finetune.storage_path": NONE,  # where, not what
    "edits.finetune.checkpoint_every_steps": NONE, "edits.finetune.log_every_steps": NONE,
    "edits.finetune.num_cpus_per_worker": NONE, "edits.finetune.torch_threads": NONE,
    **{f"edits.finetune.{f}": (FT,) for f in (
        "learning_rate", "epochs", "batch_size", "gradient_accumulation_steps", "ema_decay",
        "mixed_precision",
        "resolution", "num_workers", "use_gpu", "max_steps", "seed", "snr_gamma", "caption_dropout",
        "vae_steps", "vae_learning_rate", "vae_kl_weight", "cache_latents", "max_grad_norm", "random_flip",
        "shuffle_buffer_size")},
    "ray.address": NONE, "ray.num_cpus": NONE, "ray.object_store_memory_mb": NONE, "ray.actor_num_cpus": NONE,
    "ray.actor_num_gpus": (C, E, PI, PT, G),  # 0 -> >0: the actors run on a GPU (cluster tasks stay on CPU)
    "ray.pool_sizes": NONE, "ray.batch_sizes": NONE,  # with micro-batches set (see test_batch_sizes_...)
    "ray.micro_batch_sizes": (C,),  # the walk changes the first role, caption; the other roles below
    "ray.max_restarts": NONE, "ray.max_task_retries": NONE, "ray.max_errored_blocks": NONE,
    # scheduling only: each class is clustered alone with its own seed
    "ray.cluster_classes_per_task": NONE, "ray.log_to_driver": NONE, "ray.logs_dir": NONE,
    "output.dir": NONE, "output.image_format": (G,), "output.overwrite": NONE,
    "debug.fail_every_n_batches": NONE, "debug.fault_mode": NONE, "debug.fault_dir": NONE,
    "debug.pause_after_write_s": NONE,
    "ray.job.": NONE, "diver.": NONE, "eval.": NONE, "sweep.": NONE,
}


def classify(path: str) -> tuple[str, ...] | None:
    if path in CHANGES:
        return CHANGES[path]
    for prefix, units in CHANGES.items():
        if prefix.endswith(".") and path.startswith(prefix):
            return units
    return None


def downstream(units: tuple[str, ...]) -> set[str]:
    out, todo = set(), list(units)
    while todo:
        u = todo.pop()
        if u not in out:
            out.add(u)
            todo.extend(READS[u])
    return out


def _section(annotation: typing.Any) -> type[BaseModel] | None:
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def leaf_fields(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, typing.Any]:
    """Every leaf setting of the config model: dotted path -> annotation."""
    out: dict[str, typing.Any] = {}
    for name, f in model.model_fields.items():
        sub = _section(f.annotation)
        if sub is not None:
            out.update(leaf_fields(sub, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = f.annotation
    return out


def _sample(t: typing.Any) -> typing.Any:
    """A valid non-default value of type ``t`` (None-able settings)."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        return _sample(next(a for a in args if a is not type(None)))
    if origin is typing.Literal:
        return args[-1]
    if origin in (list, tuple):
        return [_sample(args[0])]
    if origin is dict:
        return {_sample(args[0]) if args else "x": _sample(args[1]) if args else "x"}
    return {int: 1, float: 0.5, str: "other", bool: True}.get(t, "other")


def changed_value(current: typing.Any, t: typing.Any) -> typing.Any:
    """A valid value other than ``current`` (None when the setting has only one)."""
    lits = [a for a in typing.get_args(t) if typing.get_origin(t) is typing.Literal]
    if lits:
        return next((a for a in lits if a != current), None)
    if current is None:
        return _sample(t)
    if isinstance(current, bool):
        return not current
    if isinstance(current, int):
        return current + 1
    if isinstance(current, float):
        return current / 2 if current else 0.1
    if isinstance(current, str):
        return current + "-other"
    if isinstance(current, (list, tuple)):
        if current and isinstance(current[0], int):
            return [current[0] + 1, *current[1:]]
        if current and isinstance(current[0], float):  # fixed-length ranges such as (0.08, 1.0)
            return [current[0] / 2 if current[0] else 0.1, *current[1:]]
        return list(current[:-1]) if len(current) > 1 else [*current, _sample(typing.get_args(t)[0])]
    if isinstance(current, dict):
        if current:
            k = next(iter(current))
            return {**current, k: current[k] + 1}
        return _sample(t)
    raise AssertionError(f"no changed value for {current!r}: add one to VALUES")


@pytest.fixture(scope="module")
def world(tmp_path_factory, zoo_dir):
    """Two copies of a tiny ImageFolder (png, jpg, a symlink to a file outside it), two name tables, copies of
    zoo CLIP and SD."""
    base = tmp_path_factory.mktemp("keys")
    root = base / "train"
    for cls in ("a", "b", "c"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / cls / f"{i}.png")
        Image.new("RGB", (8, 8)).save(root / cls / "2.jpg")
    (base / "outside").mkdir()
    Image.new("RGB", (8, 8), (0, 90, 0)).save(base / "outside" / "x.png")
    (root / "a" / "link.png").symlink_to(base / "outside" / "x.png")  # a link out of the set counts (once)
    shutil.copytree(root, base / "train_copy", symlinks=True)
    (base / "names.json").write_text(json.dumps({"a": "apple", "b": "bear", "c": "cat"}))
    (base / "names2.json").write_text(json.dumps({"a": "apricot", "b": "bear", "c": "cat"}))
    shutil.copytree(zoo_dir / "clip", base / "clip_copy")
    shutil.copytree(zoo_dir / "sd" / "tokenizer", base / "sd_copy" / "tokenizer")
    return base


def base_raw(world: Path, **edits: typing.Any) -> dict[str, typing.Any]:
    models = {r: f"zoo:{r}" for r in ("vlm", "clip", "vae", "dit", "sd", "llm")}
    return {"method": "edits", "models": models, "output": {"dir": str(world / "out")},
            "data": {"root": str(world / "train"), "class_names": str(world / "names.json")},
            "edits": edits, "eval": {}, "sweep": {}, "diver": {"stage1": {}}}


def values(world: Path, zoo_dir: Path) -> dict[str, typing.Any]:
    """Changed values the generic rule cannot pick (paths that must exist, ranges, the same zoo)."""
    return {"data.root": str(world / "train_copy"), "data.class_names": str(world / "names2.json"),
            "data.extensions": [".png"], "data.classes": ["a", "b"], "models.clip": str(world / "clip_copy"),
            "models.sd": str(world / "sd_copy"), "models.zoo_dir": str(zoo_dir),
            "diver.inversion_cfg_scale": 2.0, "diver.fusion_window": [40, 24], "eval.augment": "dsa+mixup",
            "data.format": "imagefolder"}


# Settings that are valid only together with another change (the config validates them as a pair).
COMPANIONS: dict[str, dict[str, typing.Any]] = {
    # start_step runs 25..0: the window must lie inside
    "diver.reverse_start": {"diver.fusion_window": [25, 10]},
    "diver.input": {"diver.stage1": None},  # a given input and the built-in stage 1 contradict each other
    "diver.stage1.outer_loop": {"diver.stage1.method": "gm"},  # gradient matching's loops need method gm
    "diver.stage1.inner_loop": {"diver.stage1.method": "gm"},
}


def with_value(raw: dict[str, typing.Any], path: str, value: typing.Any) -> Config:
    raw = json.loads(json.dumps(config_from_dict(raw).model_dump(mode="json")))
    for dotted, v in {**COMPANIONS.get(path, {}), path: value}.items():
        node = raw
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = v
    return config_from_dict(raw, f"<{path} changed>")


def unit_hashes(cfg: Config) -> dict[str, str]:
    from pipeline.edits.run import prepare_run, run_stage_keys

    k = run_stage_keys(prepare_run(cfg, log=lambda _m: None))
    out = {u: settings_hash(k[u]) for u in UNITS if "." not in u}
    out.update({f"prototype.{half}": settings_hash(k["prototype"][half]) for half in ("image", "text")})
    return out


def changed_units(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {u for u in UNITS if a[u] != b[u]}


def test_every_setting_invalidates_exactly_its_stages(world, zoo_dir):
    from pipeline.edits.run import run_stage_keys  # noqa: F401  (import errors fail here, not per field)

    leaves = leaf_fields()
    unclassified = sorted(p for p in leaves if classify(p) is None)
    assert not unclassified, f"classify these config settings in CHANGES: {unclassified}"
    raw = base_raw(world)
    base_cfg = config_from_dict(raw)
    base = unit_hashes(base_cfg)
    overrides = values(world, zoo_dir)
    from pipeline.edits.state import config_value

    wrong = {}
    for path, annotation in leaves.items():
        value = overrides.get(path, changed_value(config_value(base_cfg, path), annotation))
        if value is None:  # a one-choice setting: it must at least be declared by its stages
            continue
        got = changed_units(base, unit_hashes(with_value(raw, path, value)))
        want = downstream(classify(path))
        if got != want:
            wrong[path] = {"changed": sorted(got), "expected": sorted(want), "value": value}
    assert not wrong, f"settings whose change invalidates the wrong stages: {wrong}"


def test_one_choice_settings_are_declared():
    from pipeline.edits.run import stage_declarations

    declared = set()
    for deps in stage_declarations().values():
        for d in (deps.values() if isinstance(deps, dict) else [deps]):
            declared.update(d)
    one_choice = [p for p, t in leaf_fields().items()
                  if typing.get_origin(t) is typing.Literal and len(typing.get_args(t)) == 1]
    assert "edits.scheduler" in one_choice
    undeclared = [p for p in one_choice if classify(p) and p not in declared]
    assert not undeclared, f"settings classified as changing an output but in no DEPENDS_ON: {undeclared}"


@pytest.mark.parametrize("role, units", [("embed", (E,)), ("vae", (PI,)), ("llm", (PT,)), ("generate", (G,))])
def test_each_roles_micro_batch_invalidates_its_stage(world, role, units):
    raw = base_raw(world)
    micro = dict(config_from_dict(raw).ray.micro_batch_sizes)
    micro[role] = micro[role] + 1
    got = changed_units(unit_hashes(config_from_dict(raw)),
                        unit_hashes(with_value(raw, "ray.micro_batch_sizes", micro)))
    assert got == downstream(units)


def test_batch_sizes_matter_where_a_role_has_no_micro_batch(world):
    raw = base_raw(world)
    raw["ray"] = {"micro_batch_sizes": {"embed": 32}}  # caption runs each Ray batch as one model batch
    cfg = config_from_dict(raw)
    bigger = with_value(raw, "ray.batch_sizes", {**cfg.ray.batch_sizes, "caption": 16})
    assert changed_units(unit_hashes(cfg), unit_hashes(bigger)) == downstream((C,))
    embed_bigger = with_value(raw, "ray.batch_sizes", {**cfg.ray.batch_sizes, "embed": 64})
    assert changed_units(unit_hashes(cfg), unit_hashes(embed_bigger)) == set()


def test_backend_only_settings(world):
    raw = base_raw(world)
    raw["models"]["llm_backend"] = "openai"
    cfg = config_from_dict(raw)
    assert changed_units(unit_hashes(cfg), unit_hashes(with_value(raw, "models.llm_url",
                                                                  "http://h:1/v1"))) == {PT, G}
    raw["models"]["vlm_backend"] = "vllm"
    cfg = config_from_dict(raw)
    got = changed_units(unit_hashes(cfg), unit_hashes(with_value(raw, "models.vllm_engine_kwargs",
                                                                 {"seed": 1})))
    assert got == downstream((C, PT))


def test_class_prompt_counts_only_in_the_ablation(world):
    raw = base_raw(world, text_prototype="class_prompt")
    cfg = config_from_dict(raw)
    got = changed_units(unit_hashes(cfg), unit_hashes(with_value(raw, "edits.class_prompt",
                                                                 "a drawing of {class_name}")))
    assert got == {PT, G}


def test_finetuned_generator_invalidates_what_reads_it(world):
    raw = base_raw(world, finetune={"enabled": True}, vae_source="sd")
    cfg = config_from_dict(raw)
    base = unit_hashes(cfg)
    assert changed_units(base, unit_hashes(with_value(raw, "edits.finetune.epochs", 2))) == {FT, PI, G}
    for quiet in ("log_every_steps", "checkpoint_every_steps", "num_cpus_per_worker", "torch_threads"):
        assert changed_units(base, unit_hashes(with_value(raw, f"edits.finetune.{quiet}", 3))) == set(), quiet
    assert changed_units(base, unit_hashes(with_value(raw, "models.vae", "zoo:other"))) == set()  # sd's VAE


@pytest.mark.parametrize("role", ["vlm", "clip", "sd"])
def test_retrained_shipped_weights_redo_what_a_change_of_model_redoes(world, monkeypatch, role):
    """``zoo:demo_sd`` names the same model after ``zoo train-demo`` retrains it: the key holds its digest."""
    from actors import shipped

    raw = base_raw(world)
    raw["models"].update({r: f"zoo:demo_{r}" for r in ("vlm", "clip", "sd")})
    cfg = config_from_dict(raw)
    before = unit_hashes(cfg)
    digest = shipped.role_digest
    monkeypatch.setattr(shipped, "role_digest",
                        lambda r, *a: "retrained" if r == f"demo_{role}" else digest(r, *a))
    assert changed_units(before, unit_hashes(cfg)) == downstream(CHANGES[f"models.{role}"])


def test_a_retrained_sd_redoes_the_fine_tune_and_what_reads_it(world, monkeypatch):
    from actors import shipped

    raw = base_raw(world, finetune={"enabled": True}, vae_source="sd")
    raw["models"]["sd"] = "zoo:demo_sd"
    cfg = config_from_dict(raw)
    before = unit_hashes(cfg)
    digest = shipped.role_digest
    monkeypatch.setattr(shipped, "role_digest",
                        lambda r, *a: "retrained" if r == "demo_sd" else digest(r, *a))
    assert changed_units(before, unit_hashes(cfg)) == {FT, PI, G}


def test_caption_key_names_the_counting_tokenizer_not_the_clip_model(world, zoo_dir, tmp_path):
    from pipeline.edits.state import tokenizer_id

    same = tokenizer_id(str(world / "clip_copy"), None)
    assert same == tokenizer_id("zoo:clip", None) and "tokenizer" in same
    other = tmp_path / "clip_other"
    shutil.copytree(zoo_dir / "clip", other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    word = next(w for w in vocab if len(w) > 3 and w.isalpha())
    vocab[word + "x"] = vocab.pop(word)  # another tokenizer: one word spelt differently
    (other / "tokenizer.json").write_text(json.dumps(spec))
    assert tokenizer_id(str(other), None) != same
    raw = base_raw(world)
    assert C in changed_units(unit_hashes(config_from_dict(raw)),
                              unit_hashes(with_value(raw, "models.clip", str(other))))
    assert tokenizer_id("hub-owner/not-here", None) == {"ref": "hub-owner/not-here", "subfolder": None}


# ---- the stale-cache cases, through the real orchestration (run_edits) with recording stage runners


@pytest.fixture
def recorded(world, monkeypatch, tmp_path):
    """run_edits with every stage runner replaced by one that records its name and writes an artefact."""
    from pipeline.core import faults, ray_setup
    from pipeline.edits import buffer, caption, embed, finetune, generate, prototype
    from pipeline.edits.run import run_edits

    calls: list[str] = []

    def runner(name):
        def run_stage(run, state, force):
            out = run.paths.finetuned(run.cfg) if name == "finetune" else run.paths.art / f"{name}.out"
            state.begin(lambda: shutil.rmtree(out, ignore_errors=True), force)
            out.mkdir(parents=True, exist_ok=True)
            (out / "made").write_text(state.hash)
            calls.append(name)
            return {}
        return run_stage

    for mod, name in ((caption, "caption"), (embed, "embed"), (buffer, "cluster"), (finetune, "finetune"),
                      (prototype, "prototype"), (generate, "generate")):
        monkeypatch.setattr(mod, "run_stage", runner(name))

    @contextmanager
    def no_ray(_cfg):
        yield

    monkeypatch.setattr(ray_setup, "ray_session", no_ray)
    monkeypatch.setattr(faults, "configure_data_context", lambda _cfg: None)
    raw = base_raw(world, finetune={"enabled": True})
    raw["output"]["dir"] = str(tmp_path / "run")

    def run(**changes):
        for path, value in changes.items():
            node = raw
            *parents, last = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
        calls.clear()
        run_edits(config_from_dict(raw), log=lambda _m: None)
        return list(calls)

    assert run() == ["caption", "embed", "cluster", "finetune", "prototype", "generate"]
    return run, tmp_path / "run" / "finetuned_sd" / "made"


def test_output_changing_settings_rerun_their_stage(recorded):
    run, _ = recorded
    assert run(**{"models.dtype": "float32"}) == ["caption", "embed", "cluster", "finetune", "prototype",
                                                  "generate"]
    micro = {"caption": 8, "embed": 32, "vae": 8, "llm": 4, "generate": 4}
    assert run(**{"ray.micro_batch_sizes": micro}) == ["prototype", "generate"]
    assert run(**{"edits.llm_pad_tokens": 64}) == ["prototype", "generate"]
    assert run() == []


def test_bookkeeping_settings_rerun_nothing_and_keep_the_finetuned_model(recorded):
    run, model = recorded
    made = model.read_text()
    assert run(**{"edits.finetune.log_every_steps": 7, "edits.finetune.checkpoint_every_steps": 9,
                  "edits.finetune.num_cpus_per_worker": 2.0, "edits.finetune.torch_threads": 1}) == []
    assert model.read_text() == made


def test_switching_clip_does_not_recaption(recorded, world):
    run, model = recorded
    made = model.read_text()
    assert run(**{"models.clip": str(world / "clip_copy")}) == ["embed", "cluster", "prototype", "generate"]
    assert model.read_text() == made  # the fine-tune reads captions only


def test_gpu_actors_key_the_bf16_default(world):
    """``models.dtype: auto`` became bf16 on CUDA (it was fp16): GPU results made before must not be
    reused."""
    from pipeline.edits.run import prepare_run
    from pipeline.edits.state import run_input

    raw = base_raw(world)
    raw["ray"] = {"actor_num_gpus": 1}
    on_gpu = prepare_run(config_from_dict(raw), log=lambda _m: None)
    assert run_input(on_gpu, "device", {}) == "gpu:auto-bf16"  # the code before keyed this "gpu"
    raw["ray"] = {}
    assert run_input(prepare_run(config_from_dict(raw), log=lambda _m: None), "device", {}) == "cpu"
    assert changed_units(unit_hashes(config_from_dict(raw)), unit_hashes(on_gpu.cfg)) == downstream((C,))
