"""EDITS run state: the artefact paths, what every stage needs, each stage's settings key and state file."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.zoo_paths import zoo_weights_identity
from pipeline.config import Config
from pipeline.core.faults import fault_kwargs
from pipeline.core.keys import settings_hash
from pipeline.errors import ModelLoadError


class StageState:
    """``<stage>.state.json``: the settings a stage ran with and whether it completed."""

    def __init__(self, art: Path, stage: str, key: dict[str, Any]) -> None:
        self.path = art / f"{stage}.state.json"
        self.stage = stage
        self.key = key
        self.hash = settings_hash(key)

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def status(self) -> str:
        """``done`` | ``partial`` (same settings, incomplete) | ``stale`` (other settings) | ``new``."""
        s = self.read()
        if s is None:
            return "new"
        if s.get("hash") != self.hash:
            return "stale"
        return "done" if s.get("complete") else "partial"

    def begin(self, clear: Callable[[], None], force: bool = False) -> str:
        """Clear stale/forced outputs, mark the stage started; returns the status it found."""
        # heavy: PIL, numpy (not loaded when this module is imported)
        from pipeline.core.write import atomic_write_json

        st = self.status()
        if force or st in ("stale", "new"):
            clear()
        atomic_write_json(self.path, {"stage": self.stage, "hash": self.hash, "key": self.key,
                                      "complete": False})
        return st

    def finish(self, info: dict[str, Any] | None = None) -> None:
        # heavy: PIL, numpy (not loaded when this module is imported)
        from pipeline.core.write import atomic_write_json

        atomic_write_json(self.path, {"stage": self.stage, "hash": self.hash, "key": self.key,
                                      "complete": True, "info": info or {}})


@dataclass
class Artefacts:
    """Every path of one run (see the module docstring)."""

    out: Path
    art: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.art = self.out / "artefacts"

    @property
    def captions(self) -> Path:
        return self.art / "captions"

    @property
    def features(self) -> Path:
        return self.art / "features"

    @property
    def buffer(self) -> Path:
        return self.art / "buffer"

    @property
    def clusters_dir(self) -> Path:
        return self.art / "clusters"

    @property
    def clusters(self) -> Path:
        return self.art / "clusters.json"

    @property
    def latents(self) -> Path:
        return self.art / "prototypes" / "latents"

    @property
    def texts(self) -> Path:
        return self.art / "prototypes" / "texts.json"

    @property
    def texts_journal(self) -> Path:
        """Text prototypes made since ``texts.json`` was last written (one fsync'd append per batch)."""
        return self.art / "prototypes" / "texts.journal.jsonl"

    @property
    def distilled(self) -> Path:
        return self.out / "distilled"

    @property
    def contact_sheet(self) -> Path:
        return self.out / "contact_sheet.png"

    def finetuned(self, cfg: Config) -> Path:
        return Path(cfg.edits.finetune.output) if cfg.edits.finetune.output else self.out / "finetuned_sd"


@dataclass
class EditsRun:
    """What every stage needs: config, the scanned index, class names, paths, the skip log."""

    cfg: Config
    index: Any
    names: dict[str, str]
    paths: Artefacts
    skips: Any
    fingerprint: str
    log: Callable[[str], None] = print

    @property
    def zoo_dir(self) -> str | None:
        return self.cfg.models.zoo_dir

    def generator_ref(self) -> str:
        """The SD model the run generates with: the fine-tuned folder when the fine-tune is on."""
        if self.cfg.edits.finetune.enabled:
            return str(self.paths.finetuned(self.cfg))
        return self.cfg.models.sd

    def faults(self) -> dict | None:
        return fault_kwargs(self.cfg)


# ---------------------------------------------------------------- stage keys
#
# Each stage module declares beside its code what its output depends on: ``DEPENDS_ON``, a tuple
# of names (the prototype stage: a dict of two such tuples, one per half, each with its own state).
# A name is
#   - a dotted config path: ``"edits.tau"``; a dict entry as ``"ray.micro_batch_sizes.caption"``;
#   - ``"stage:<name>"``: the settings hash of an upstream stage whose outputs this stage reads;
#   - ``"input:<name>"``: a value derived from the run or from several settings (``run_input``).
# ``stage_keys`` assembles the keys from these declarations, in ``STAGES`` order (``pipeline.edits.run``). A
# setting that
# is in no declaration changes no output (tests/edits/test_edits_state_keys.py checks both ways).


@functools.lru_cache(maxsize=32)
def tokenizer_id(ref: str, zoo_dir: str | None, subfolder: str | None = None, role: str = "clip") -> Any:
    """What identifies a token-counting tokenizer: a hash of its full definition (vocabulary, merges,
    normaliser, special tokens), so two checkpoints sharing one tokenizer share this id.

    When the tokenizer cannot be loaded here (no local copy), the reference itself stands in: a
    change of reference then counts as a change (never a stale reuse).
    """
    # heavy: PIL, torch, numpy (not loaded when this module is imported)
    from actors.captioner import load_count_tokenizer

    try:
        tok = load_count_tokenizer(ref, zoo_dir, subfolder, role=role)
    except (ModelLoadError, OSError, ValueError):
        return {"ref": ref, "subfolder": subfolder}
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer: no single serialisable definition
        return {"ref": ref, "subfolder": subfolder}
    spec = json.loads(backend.to_str())
    for call_time in ("truncation", "padding"):  # set per call by transformers, not part of the tokenizer
        spec.pop(call_time, None)
    return {"tokenizer": settings_hash(spec)}


def config_value(cfg: Config, path: str) -> Any:
    """The JSON-able value of a dotted config path (a missing dict entry is ``None``)."""
    from pydantic import BaseModel

    node: Any = cfg
    for part in path.split("."):
        if isinstance(node, BaseModel):
            if part not in type(node).model_fields:
                raise KeyError(f"{path!r} is not a config setting ({part!r} is not a field of "
                               f"{type(node).__name__}); fix the stage's DEPENDS_ON")
            node = getattr(node, part)
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            raise KeyError(f"{path!r} is not a config setting ({part!r} is below a plain value); "
                           "fix the stage's DEPENDS_ON")
    return node.model_dump(mode="json") if isinstance(node, BaseModel) else node


def run_input(run: EditsRun, name: str, keys: dict[str, Any]) -> Any:
    """The value of ``input:<name>`` (``keys``: the keys of the stages computed so far)."""
    cfg, e, m = run.cfg, run.cfg.edits, run.cfg.models
    kind, _, arg = name.partition(":")
    if kind == "fingerprint":  # which files (root-relative) of which classes
        return run.fingerprint
    if kind == "data_root":  # the same relative layout under another root is other images
        root = str(run.index.root)
        return root if "://" in root else str(Path(root).resolve())
    if kind == "class_names":
        return run.names
    if kind == "device":  # actors and cluster tasks run on a GPU only when given one (dtype auto: bf16 there)
        return "gpu:auto-bf16" if cfg.ray.actor_num_gpus > 0 else "cpu"  # not "gpu": auto was fp16 before
    if kind == "model_batch":  # the model batch of a role: fixed micro-batch, else the whole Ray batch
        micro = cfg.ray.micro_batch_sizes.get(arg)
        return micro if micro else {"ray_batch": cfg.ray.batch_sizes.get(arg, 8)}
    if kind == "clip_tokenizer":  # counts the caption's tokens (the CLIP image weights do not matter)
        return tokenizer_id(m.clip, m.zoo_dir)
    if kind == "sd_tokenizer":  # counts the text prototype's tokens (a fine-tune keeps the base's)
        return tokenizer_id(m.sd, m.zoo_dir, "tokenizer", role="sd")
    if kind == "weights":  # a zoo model's version and shipped-weights digest (models.<arg> is only its name)
        return zoo_weights_identity(getattr(m, arg))
    if kind in ("generator", "prototype_vae"):
        return _loaded_model(run, kind, keys)
    if kind == "text_source":  # the LLM, or the ablation's class prompt (its template matters only then)
        return "llm" if e.text_prototype == "llm" else {"class_prompt": e.class_prompt}
    if kind == "llm_endpoint":  # only the openai backend talks to an endpoint
        return m.llm_url if m.llm_backend == "openai" else None
    if kind == "vllm":  # vLLM engine settings, only when that role runs on vLLM
        backend = {"vlm": m.vlm_backend, "llm": m.llm_backend}[arg]
        return [m.vllm_engine_kwargs, m.vllm_processor_kwargs] if backend == "vllm" else None
    raise KeyError(f"unknown stage input {'input:' + name!r}; fix the stage's DEPENDS_ON")


def _loaded_model(run: EditsRun, kind: str, keys: dict[str, Any]) -> dict[str, Any]:
    """The SD pipeline generate (and vae_source=sd) loads, or the VAE of the image prototypes."""
    e, m = run.cfg.edits, run.cfg.models
    if kind == "prototype_vae" and e.vae_source != "sd":
        return {"vae": m.vae, "weights": zoo_weights_identity(m.vae)}
    if e.finetune.enabled:
        return {"finetuned": settings_hash(keys["finetune"])}
    return {"sd": m.sd, "weights": zoo_weights_identity(m.sd)}


def _key(run: EditsRun, deps: tuple[str, ...], keys: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dep in deps:
        if dep.startswith("stage:"):
            out[dep] = settings_hash(keys[dep[len("stage:"):]])
        elif dep.startswith("input:"):
            out[dep] = run_input(run, dep[len("input:"):], keys)
        else:
            out[dep] = config_value(run.cfg, dep)
    return out


Declarations = Mapping[str, "tuple[str, ...] | dict[str, tuple[str, ...]]"]


def stage_keys(run: EditsRun, declarations: Declarations) -> dict[str, dict[str, Any]]:
    """The key of every declared stage, in the order given: the values of its ``DEPENDS_ON``, upstream
    stages by hash (an upstream stage must come earlier in ``declarations``)."""
    keys: dict[str, dict[str, Any]] = {}
    for name, deps in declarations.items():
        if isinstance(deps, dict):
            keys[name] = {part: _key(run, d, keys) for part, d in deps.items()}
        else:
            keys[name] = _key(run, deps, keys)
    return keys
