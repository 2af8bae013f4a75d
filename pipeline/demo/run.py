"""``semdistill demo``: the whole system offline on a laptop, step by step.

1. the demo digits (``out/data``) and the local model zoo;
2. baselines: ``random_real`` (IPC real images per class) and DM from noise (the built-in stage-1
   distiller, long enough that its images are abstract: the set DIVER exists to recover);
3. DIVER on the DM set and EDITS, each from its demo config (``configs/demo_diver.yaml`` /
   ``configs/demo_edits.yaml`` when present, else ``configs/demo.yaml``), at every IPC of the plan;
4. cross-architecture evaluation on Ray Train: the ConvNet (the stage-1 proxy, out of the headline mean)
   plus unseen ResNet-18 and LeNet, one TorchTrainer per IPC, at that IPC's epochs and batch
   (``DEMO_EVAL_BY_IPC``, chosen on a holdout of the train split);
5. ``out/results.json``, ``out/results.md`` and ``out/report.html`` (tables, DD-Ranking, a bar chart,
   DIVER's input beside its output, EDITS's prototypes, image grids, and the sweep plot when
   ``semdistill sweep ... output.dir=<out>`` ran before).

What runs is ``demo_plan(quick, full, ablations)`` (``DemoPlan``): the headline is IPC 1 (``HEADLINE_IPC``),
where a distilled set has room above random real. ``make demo`` runs IPC 1 alone (``DEMO_IPCS``: IPC 10 too
would not fit its 12 minutes) and evaluates every set with ``DEMO_EVAL_SEEDS`` seeds; ``full=True``
(``semdistill demo --full``) adds IPC 10 (``FULL_IPCS``), distils every method's set and random real with each
of ``FULL_DISTILL_SEEDS`` and evaluates each with ``FULL_EVAL_SEEDS`` seeds, and adds gradient matching
(DC/DSA, pipeline/diver/gm.py) at IPC 1, a stage-1 set that overfits its ConvNet, with DIVER on it.
``ablations=True`` (``--full --ablations``) adds the papers' baselines and ablations: herding, k-center and
the full real set, DIVER's plain DiT pass (gamma 0), EDITS without text prototypes, and the no-augmentation
runs DD-Ranking's ARS needs (every set but ``full_real``: ARS compares a set with random real images, with and
without augmentation); these use distillation seed 0 only. The terminal shows one line per stage and one
progress bar per long stage; everything else goes to ``out/logs/``.

Rows and seeds, for the claim code: ``results.json`` holds one row per (method, IPC, distillation seed,
student, augment); ``row["distill_seed"]`` is the seed the set was made with (``d``) and ``row["runs"]`` one
entry per evaluation seed (``run["seed"] = eval.seed + r``, r < the plan's evaluation seeds; the same
evaluation seeds for every set). A set distilled with seed ``d`` uses each method's own seed shifted by
``d`` (random real and the coresets: ``seed=d``; DM / GM: ``diver.stage1.seed + d``; DIVER:
``diver.seed + d``, recovering its stage-1 set of the same ``d``; EDITS: ``edits.seed + d``). Two sets at
one IPC are compared pairwise on ``(distill_seed, evaluation seed)``: the same evaluation seed within the
same distillation seed (in ``make demo`` only ``d = 0``: the pairs are the evaluation seeds). A recovered
set names the set it recovered in ``row["stage1"]`` (``STAGE1_OF``: diver -> dm, diver_gm -> gm,
diver_gamma0 -> dm).

A method whose module is missing (or that fails) is skipped with a message, and the rest
still runs. A re-run reuses every finished stage and every evaluation whose set is unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from actors import zoo
from pipeline.config import Config, EvalConfig, config_from_dict
from pipeline.core.console import quiet_terminal, stage, tagged_lines
from pipeline.core.digits import DIGIT_NAMES, write_demo_dataset
from pipeline.core.write import JOURNAL, atomic_folder, atomic_write_json
from pipeline.demo.claims import FULL_MIN_SEEDS, MIN_SEEDS, claim_lines
from pipeline.demo.recognition import cached_judge, recognise, recognition_line
from pipeline.errors import ConfigError
from tuning.evaluate import in_mean, mean_top1

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
HEADLINE_IPC = 1
DEMO_IPCS = (HEADLINE_IPC,)  # make demo: IPC 10 too would not fit 12 minutes on 2 cores (measured below)
FULL_IPCS = (HEADLINE_IPC, 10)
# make demo on a fresh clone, 2 idle cores: 5 min 30 s (DM and its recovery 64 s, EDITS 87 s, evaluation 133 s
# for 36 runs). IPC 10 would add, by demo --full's stages on the same machine, about 76 s of DM and recovery,
# 165 s of EDITS (its SmolLM2 text prototypes alone 138 s) and 157 s for 36 more runs: about 12 min 10 s in
# all, so it runs in demo --full (27 min 45 s).
DEMO_EVAL_SEEDS = 3
DEMO_PROXY_WIDTH = 64  # the stage-1 ConvNet's width (diver.stage1.net_width in configs/demo_diver.yaml)
# demo --full: every set distilled with 2 seeds and each evaluated with 3, so each claim pairs 6 seeds
FULL_EVAL_SEEDS = 3
FULL_DISTILL_SEEDS = (0, 1)
# The demo's evaluation: the "demo" preset (DSA, SGD, cosine) with a narrower ResNet-18. The ConvNet is the
# stage-1 proxy (out of the headline mean): the very network DM and GM match in stage 1 (width 64, depth 3;
# diver.stage1.net_width in configs/demo_diver.yaml), as DC/DM evaluate on their distillation ConvNet.
# ResNet-18 and LeNet (DC/DSA's cross-architecture students) are unseen. MobileNetV2 left the demo for its
# cost: one SGD step at batch 10 takes 261 ms on one thread against LeNet's 3.5 (ConvNet 90 at width 128,
# ResNet-18 w16 72); at IPC 1 it was 1,197 of the 1,807 run-seconds of make demo's evaluation on a fresh
# clone. One CPU and one torch thread per Ray Train worker, so the two cores are never oversubscribed.
# ResNet-18 trains channels-last (the same math; its steps 1.15x faster on one idle thread,
# bench/channels_last.py). Epochs and batch per IPC below.
DEMO_EVAL = {"students": ["convnet", "resnet18", "lenet"], "preset": "demo", "dataset": "digits",
             "epochs": 20, "batch_size": 16, "repeats": DEMO_EVAL_SEEDS, "eval_every": 10,
             "student_kwargs": {"convnet": {"width": DEMO_PROXY_WIDTH}, "resnet18": {"width": 16}},
             "channels_last": ["resnet18"], "cpus_per_job": 1.0}
FULL_EVAL = {**DEMO_EVAL, "repeats": FULL_EVAL_SEEDS}
QUICK_EVAL = {**DEMO_EVAL, "epochs": 4, "repeats": 1, "eval_every": 0}
# Epochs and batch per IPC, chosen on a holdout carved from the train split (20% per class, seed 0), never on
# val: scripts/choose_demo_eval_batch.sh, random real at that IPC, top-1 on the holdout.
# IPC 10 (2 seeds, 20 epochs): batch 64 left MobileNetV2 at chance (10.3%; ResNet-18 68.2, ConvNet 92.5),
# 32 gave 76.7 (90.9, 92.3), 16 gave 90.1 (92.6, 92.5): batch 16, 140 SGD steps.
# IPC 1 (3 seeds, final top-1; a batch is capped at the set's 10 images, so 10 is the full batch and 16 the
# same run): 100 epochs gave ConvNet 74.3, ResNet-18 59.1, MobileNetV2 53.1, LeNet 61.30; 300 epochs gave
# ConvNet 75.9, ResNet-18 65.5 (above 100 epochs at each of the 3 seeds), LeNet 68.61: 300 epochs, full batch,
# tests at 150 and 300 as IPC 10's halfway. LeNet at IPC 10 (20 epochs, 2 seeds): batch 32 gave 28.08, 16 gave
# 79.97, so batch 16 stays. The ConvNet at the stage-1 width (64, was 128) on the same holdout and seeds gave
# the same choices: IPC 1, 100 epochs 73.63, 300 epochs 76.03; IPC 10, batch 32 92.29, 16 92.81.
DEMO_EVAL_BY_IPC = {1: {"epochs": 300, "batch_size": 10, "eval_every": 150},
                    10: {"epochs": 20, "batch_size": 16, "eval_every": 10}}
FULL_BASELINES = ("herding", "k_center", "full_real")
# DD-Ranking's ARS (ddranking/metrics/aug_robust.py) trains the set and random real images with and without
# augmentation; the full real set only enters LRS (with augmentation), so it gets no no-augmentation run.
NOT_IN_ARS = ("full_real",)
# What the whole-system demo trims from the per-method demo configs (IPC 10 is 5x their IPC 2
# clusters) to stay under 20 minutes on 2 cores; `semdistill run configs/demo_<method>.yaml`
# keeps the full settings.
DEMO_TRIM = {
    "edits": {"num_inference_steps": 25, "max_tokens": 40, "finetune": {"max_steps": 160, "vae_steps": 0},
              "llm_pad_tokens": 384},  # the demo's prompts are about 320 SmolLM2 tokens
    "ray": {"batch_sizes": {"llm": 20}, "micro_batch_sizes": {"llm": 20}},  # at most; see method_config
    # DM from noise (not the reference's real init): its images end abstract, fitted to the proxy ConvNet,
    # which is the kind of set DIVER recovers; 400 iterations at 32 real images per class fit 2 cores
    "diver": {"stage1": {"iterations": 400, "init": "noise", "batch_real": 32}},
    # gradient matching (DC/DSA) from noise at IPC 1 with DC's own loops there (get_loops(1) = 1, 1) and
    # lr_img (0.1), on DM's proxy ConvNet (width 64, depth 3); 200 of DC's 1000 iterations fit 2 cores
    "gm": {"method": "gm", "ipcs": [1], "iterations": 200, "init": "noise", "batch_real": 32, "lr_img": None,
           "outer_loop": None, "inner_loop": None},
}
# EDITS's stage lines ("[edits] caption: running") on the terminal under the demo's own, the rest in the log
EDITS_LINES = tagged_lines("[edits]", lambda msg: stage("      " + msg))
# the set each recovered set starts from (claims: DIVER against its stage-1 input at the same seeds)
STAGE1_OF = {"diver": "dm", "diver_gm": "gm", "diver_gamma0": "dm"}
FALLBACK = {"name": "demo", "data": {"image_size": 32},
            "models": {"vlm": "zoo:demo_vlm", "clip": "zoo:demo_clip", "vae": "zoo:vae", "dit": "zoo:dit",
                       "sd": "zoo:demo_sd",
                       "llm": "zoo:llm"},
            "ray": {"num_cpus": 2, "actor_num_cpus": 0.5}}


@dataclass(frozen=True)
class DemoPlan:
    """What one demo run makes and evaluates (``demo_plan``)."""

    ipcs: tuple[int, ...]  # the headline IPC first
    distill_seeds: tuple[int, ...]  # each method's and random real's set once per seed (coresets, ablations:
    # the first only)
    eval_seeds: int  # evaluation seeds eval.seed + r, r < eval_seeds, the same for every set
    students: tuple[str, ...]
    baselines: tuple[str, ...]  # sets of real images, at every IPC (full_real: the whole split, once)
    stage1: dict[str, tuple[int, ...]]  # built-in stage-1 distiller -> its IPCs; DIVER recovers each
    ablations: bool  # DIVER gamma 0, EDITS without text prototypes, the no-augmentation (ARS) runs

    def sets(self) -> list[SetSpec]:
        """Every set the plan evaluates, in the order they are made."""
        specs: list[SetSpec] = []
        for ipc in self.ipcs:
            # random real at every seed (the claims' reference); coresets at the first
            for d in self.distill_seeds:
                specs += [SetSpec(b, ipc, d) for b in self.baselines
                          if b == "random_real" or (b != "full_real" and d == self.distill_seeds[0])]
        if "full_real" in self.baselines:
            specs.append(SetSpec("full_real", None, 0))
        for method, ipcs in self.stage1.items():
            recovered = "diver" if method == "dm" else f"diver_{method}"
            for d in self.distill_seeds:
                for ipc in ipcs:
                    specs += [SetSpec(method, ipc, d), SetSpec(recovered, ipc, d, stage1=method)]
                    if self.ablations and method == "dm" and d == self.distill_seeds[0]:
                        specs.append(SetSpec("diver_gamma0", ipc, d, stage1="dm"))
        for ipc in self.ipcs:
            for d in self.distill_seeds:
                specs.append(SetSpec("edits", ipc, d))
                if self.ablations and d == self.distill_seeds[0]:
                    specs.append(SetSpec("edits_no_text", ipc, d))
        return specs


@dataclass(frozen=True)
class SetSpec:
    """One set: its method, IPC (None: the whole real split), distillation seed and, when it recovers
    another set, that set's method."""

    method: str
    ipc: int | None
    distill_seed: int
    stage1: str | None = None

    @property
    def name(self) -> str:
        """Its key in the demo (``dm_ipc1``, ``diver_ipc10_d1``, ``full_real``) and its folder's name."""
        if self.ipc is None:
            return self.method
        return f"{self.method}_ipc{self.ipc}" + (f"_d{self.distill_seed}" if self.distill_seed else "")


def demo_plan(quick: bool = False, full: bool = False, ablations: bool = False) -> DemoPlan:
    """``quick``: a smoke run (headline IPC, one seed); default: ``make demo``; ``full``: ``demo --full``;
    ``ablations`` (with ``full``): the coresets, the full real set, the ablations and DD-Ranking's runs
    too."""
    if ablations and not full:
        raise ConfigError("demo: --ablations adds to --full; run `semdistill demo --full --ablations`")
    if quick:
        return DemoPlan(ipcs=(HEADLINE_IPC,), distill_seeds=(0,), eval_seeds=QUICK_EVAL["repeats"],
                        students=tuple(QUICK_EVAL["students"]), baselines=("random_real",),
                        stage1={"dm": (HEADLINE_IPC,)}, ablations=False)
    if full:
        return DemoPlan(ipcs=FULL_IPCS, distill_seeds=FULL_DISTILL_SEEDS, eval_seeds=FULL_EVAL["repeats"],
                        students=tuple(FULL_EVAL["students"]),
                        baselines=("random_real",) + (FULL_BASELINES if ablations else ()),
                        stage1={"dm": FULL_IPCS, "gm": tuple(DEMO_TRIM["gm"]["ipcs"])}, ablations=ablations)
    return DemoPlan(ipcs=DEMO_IPCS, distill_seeds=(0,), eval_seeds=DEMO_EVAL["repeats"],
                    students=tuple(DEMO_EVAL["students"]), baselines=("random_real",),
                    stage1={"dm": DEMO_IPCS}, ablations=False)


def eval_config(plan: DemoPlan, ipc: int | None, quick: bool = False) -> EvalConfig:
    """The evaluation of the plan's sets at ``ipc`` (None: the full real set, at the largest IPC's
    settings)."""
    table = QUICK_EVAL if quick else {**DEMO_EVAL, **DEMO_EVAL_BY_IPC[ipc or max(DEMO_EVAL_BY_IPC)]}
    return EvalConfig.model_validate({**table, "students": list(plan.students), "repeats": plan.eval_seeds})


def prepare_demo(out: Path) -> dict[str, Any]:
    """Demo digits under ``out/data`` and the local zoo; both are skipped when present."""
    data_dir = out / "data"
    if not (data_dir / "dataset.json").exists():
        write_demo_dataset(data_dir)
    print(f"demo data: {data_dir}")
    print(f"local model zoo: {zoo.default_zoo_dir()}")
    zoo.build_zoo()
    return {"data": str(data_dir), "zoo": str(zoo.default_zoo_dir())}


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """Deep-merge ``extra`` into ``into`` (nested dicts merged, other values replaced by copies: ``into``
    never shares a dict with ``extra``)."""
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def method_config(method: str, out: Path, data: Path, quick: bool, logs: Path | None = None,
                  ipcs: tuple[int, ...] = (HEADLINE_IPC,)) -> Config:
    """The method's demo config with this demo's data, output folder and IPCs (``logs``: Ray's logs there;
    EDITS makes one IPC a run, the first of ``ipcs``; DIVER's stage 1 makes each)."""
    path = REPO_CONFIGS / f"demo_{method}.yaml"
    if not path.is_file():
        path = REPO_CONFIGS / "demo.yaml"
    raw = yaml.safe_load(path.read_text()) if path.is_file() else json.loads(json.dumps(FALLBACK))
    raw.pop("eval", None)
    raw.pop("sweep", None)
    raw["method"] = method
    raw.setdefault("data", {}).update({"root": str(data / "train"), "val_root": str(data / "val"),
                                       "class_names": str(data / "class_names.json"), "classes": None})
    raw.setdefault("output", {})["dir"] = str(out / method)
    if logs is not None:  # workers' output stays in Ray's session logs, linked from logs/
        raw.setdefault("ray", {}).update({"log_to_driver": False, "logs_dir": str(logs)})
    if method == "edits":
        raw.setdefault("edits", {})["ipc"] = ipcs[0]
        if not quick:
            _merge(raw, {"edits": DEMO_TRIM["edits"], "ray": DEMO_TRIM["ray"]})
            # one text prototype per cluster: below a full model call the call holds them all (at IPC 1 a
            # call of 20 would pad the 10 prompts with 10 repeats)
            calls = raw["ray"]["micro_batch_sizes"]
            calls["llm"] = raw["ray"]["batch_sizes"]["llm"] = min(calls["llm"], len(DIGIT_NAMES) * ipcs[0])
        if quick:
            raw["edits"]["num_inference_steps"] = min(int(raw["edits"].get("num_inference_steps", 50)), 10)
            ft = raw["edits"].setdefault("finetune", {})
            ft["max_steps"] = min(int(ft.get("max_steps") or 50), 50)
            raw.setdefault("models", {})["llm"] = "zoo:llm"  # the tiny LLM: a smoke run, not a text prototype
    if method == "diver":
        d = raw.setdefault("diver", {})
        d.pop("input", None)
        stage1 = d.get("stage1") or {}
        stage1.update({"ipc": ipcs[0], "ipcs": list(ipcs)})
        if not quick:
            stage1.update(DEMO_TRIM["diver"]["stage1"])
        if quick:
            stage1.update({"iterations": min(int(stage1.get("iterations", 1000)), 20), "init": "noise"})
        d["stage1"] = stage1
    return config_from_dict(raw, source=str(path))


def _set_fingerprint(set_dir: Path, ev: EvalConfig) -> str:
    man, journal = set_dir / "manifest.json", set_dir / JOURNAL
    h = hashlib.sha256(man.read_bytes() if man.is_file() else str(set_dir).encode())
    if journal.is_file():  # entries of an unfinished run not yet folded into manifest.json
        h.update(journal.read_bytes())
    h.update(json.dumps(ev.model_dump(mode="json"), sort_keys=True).encode())
    return h.hexdigest()[:16]


def ars_sets(sets: dict[str, Path]) -> dict[str, Path]:
    """The sets DD-Ranking's ARS trains again without augmentation: all but ``NOT_IN_ARS``."""
    return {n: d for n, d in sets.items() if n not in NOT_IN_ARS}


def tag_rows(rows: list[dict], sets: dict[str, Path], specs: dict[str, SetSpec]) -> list[dict]:
    """Each row gains its set's ``distill_seed`` and, for a recovered set, ``stage1`` (found by its
    folder)."""
    by_dir = {str(d): specs[n] for n, d in sets.items() if n in specs}
    for r in rows:
        spec = by_dir.get(str(r.get("distilled")))
        if spec is not None:
            r["distill_seed"] = spec.distill_seed
            if spec.stage1:
                r["stage1"] = spec.stage1
    return rows


def evaluate_demo(sets: dict[str, Path], data: Path, out: Path, ev: EvalConfig, ray_cfg: Any,
                  tag: str = "", shown: dict[str, Path] | None = None,
                  specs: dict[str, SetSpec] | None = None) -> list[dict]:
    """Evaluate the sets whose manifest or eval settings changed since the last demo run (``tag``: one
    record per evaluation, e.g. the no-augmentation runs); returns the rows of ``results.json``, earlier
    evaluations included (``shown``: only those whose method is a key of it). ``specs`` (set name ->
    ``SetSpec``) names each row's method and distillation seed."""
    # imported when called: tests replace it on its module
    from tuning.evaluate import evaluate_sets, write_results

    specs = specs or {}
    done_path = out / f"eval_done{tag}.json"
    done = json.loads(done_path.read_text()) if done_path.is_file() else {}
    todo = {n: d for n, d in sets.items() if done.get(n) != _set_fingerprint(d, ev)}
    for n in sets:
        if n not in todo:
            print(f"eval {n}{tag}: unchanged since the last run, reusing its results")
    rows: list[dict] = []
    if todo:
        methods = {n: specs[n].method if n in specs else n for n in todo}
        # the real train split gives the normalisation every set and the val split share (eval.normalize auto)
        rows = tag_rows(evaluate_sets(todo, data / "val", ev, out, train_root=data / "train", ray_cfg=ray_cfg,
                                      methods=methods, write=False), todo, specs)
        done.update({n: _set_fingerprint(d, ev) for n, d in todo.items()})
    all_rows = write_results(rows, out)
    atomic_write_json(done_path, done)
    return all_rows if shown is None else [r for r in all_rows if r["method"] in shown]


def planned_rows(rows: list[dict], specs: dict[str, SetSpec]) -> list[dict]:
    """The rows of this plan's sets (``results.json`` may hold rows of an earlier, other plan)."""
    keys = {(s.method, s.distill_seed, s.ipc) for s in specs.values()}
    return [r for r in rows if (r["method"], r.get("distill_seed"), r["ipc"]) in keys
            or (r["method"] == "full_real" and ("full_real", 0, None) in keys)]


def stage1_record(rows: list[dict], method: str = "dm", ipc: int | None = None) -> dict[str, float] | None:
    """A stage-1 set's proxy (ConvNet, out of the mean) vs unseen-architecture accuracy, from its rows
    (``ipc``: that IPC's rows only; distillation seed 0 when rows carry one)."""
    mine = [r for r in rows if r["method"] == method and r.get("augment") != "none"
            and (ipc is None or r["ipc"] == ipc) and r.get("distill_seed", 0) == 0]
    proxy = [r["top1_mean"] for r in mine if not in_mean(r)]
    if not mine or not proxy:
        return None
    return {"proxy": round(float(sum(proxy) / len(proxy)), 2), "unseen_mean": round(mean_top1(mine), 2)}


def gamma0_config(cfg: Config, dm_set: Path, out: Path, name: str = "diver_gamma0") -> Config:
    """DIVER's ablation: the same DiT pass from the same DM set with the guidance off (inheritance only)."""
    raw = cfg.model_dump(mode="json")
    raw["diver"].update({"stage1": None, "input": str(dm_set), "input_format": "pt", "gamma": 0.0})
    raw["output"]["dir"] = str(out / name)
    return config_from_dict(raw, source="demo: diver gamma 0")


def diver_seed_config(cfg: Config, out: Path, method: str, ipcs: tuple[int, ...],
                      distill_seed: int) -> Config:
    """DIVER on the built-in stage-1 ``method`` (dm | gm) at ``ipcs`` with distillation seed ``d``: the
    stage-1
    seed and DIVER's seed both shifted by ``d``; output ``out/diver[_gm][_d<d>]``."""
    raw = cfg.model_dump(mode="json")
    stage1 = raw["diver"]["stage1"]
    if method != "dm":
        stage1.update({k: v for k, v in DEMO_TRIM[method].items() if k != "ipcs"})
    stage1.update({"ipc": ipcs[0], "ipcs": list(ipcs), "seed": stage1["seed"] + distill_seed})
    raw["diver"]["seed"] += distill_seed
    name = "diver" + ("" if method == "dm" else f"_{method}") + (f"_d{distill_seed}" if distill_seed else "")
    raw["output"]["dir"] = str(out / name)
    return config_from_dict(raw, source=f"demo: diver on {method}, distillation seed {distill_seed}")


def _copy_artefacts(src: Path, dst: Path) -> None:
    """Start ``dst`` from a copy of ``src``'s EDITS artefacts: stage keys then reuse what is the same."""
    if src.is_dir() and not dst.exists():  # a re-run resumes from its own artefacts
        with atomic_folder(dst) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)


def edits_seed_config(cfg: Config, out: Path, ipc: int, distill_seed: int,
                      first: Config | None = None) -> Config:
    """EDITS at ``ipc`` with distillation seed ``d`` (``edits.seed + d``) into ``out/edits_ipc<K>[_d<d>]``.

    Every run after ``first`` starts from a copy of its artefacts and shares its fine-tuned SD, so captions,
    features and the fine-tune are made once; clusters, prototypes and images follow the IPC and seed.
    """
    raw = cfg.model_dump(mode="json")
    raw["edits"].update({"ipc": ipc, "seed": cfg.edits.seed + distill_seed})
    name = SetSpec("edits", ipc, distill_seed).name
    raw["output"]["dir"] = str(out / name)
    if first is not None:
        first_out = Path(first.output.dir)
        raw["edits"]["finetune"]["output"] = str(Path(first.edits.finetune.output
                                                      or first_out / "finetuned_sd"))
        _copy_artefacts(first_out / "artefacts", out / name / "artefacts")
    return config_from_dict(raw, source=f"demo: edits at IPC {ipc}, distillation seed {distill_seed}")


def no_text_config(cfg: Config, out: Path, name: str = "edits_no_text") -> Config:
    """EDITS's ablation without text prototypes: the same run with ``edits.class_prompt`` as every prompt.

    It starts from a copy of the full run's artefacts and uses the same ``edits.finetune.output``:
    the stage keys then reuse the captions, features, clusters, image prototypes and fine-tuned SD,
    and redo only the text half (its key holds ``edits.text_prototype``) and the images.
    """
    raw = cfg.model_dump(mode="json")
    full_out = Path(cfg.output.dir)
    raw["edits"]["text_prototype"] = "class_prompt"
    raw["edits"]["finetune"]["output"] = str(Path(cfg.edits.finetune.output or full_out / "finetuned_sd"))
    raw["output"]["dir"] = str(out / name)
    _copy_artefacts(full_out / "artefacts", out / name / "artefacts")
    return config_from_dict(raw, source="demo: edits without text prototypes")


def run_demo(out: Path, quick: bool = False, full: bool = False, verbose: bool = False,
             ablations: bool = False) -> dict[str, Any]:
    """Data -> baselines, DIVER, EDITS -> evaluation -> report; returns a summary dict.

    The terminal gets one line per stage and a bar per long stage; the rest goes to ``out/logs/run.log``
    (``verbose``: everything on the terminal, as before).
    """
    demo_plan(quick, full, ablations)  # a bad combination of flags fails before anything is written
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    if not verbose:  # Ray Data's own bars would only fill the log with carriage returns
        os.environ.setdefault("SEMDISTILL_PROGRESS", "0")
    with contextlib.nullcontext() if verbose else quiet_terminal(logs):
        return _run_demo(out, quick, full, logs, ablations)


def _failed(skipped: dict[str, str], key: str, err: Exception, logs: Path) -> None:
    skipped[key] = f"{key} failed: {type(err).__name__}: {err}"
    stage(f"      {skipped[key]} (traceback in {logs / 'run.log'})")
    print(traceback.format_exc())


def _run_diver_sets(plan: DemoPlan, base: Config, out: Path, sets: dict[str, Path], specs: dict[str, SetSpec],
                    panels: dict[str, Path], skipped: dict[str, str], logs: Path) -> None:
    """DIVER on each built-in stage-1 set of the plan, per distillation seed (and the gamma-0 ablation)."""
    from pipeline.diver.run import run_diver  # its model stack loads when this step runs
    for method, ipcs in plan.stage1.items():
        recovered = "diver" if method == "dm" else f"diver_{method}"
        for d in plan.distill_seeds:
            cfg = diver_seed_config(base, out, method, ipcs, d)
            s1 = cfg.diver.stage1
            stage(f"      {method.upper()} from {s1.init} ({s1.iterations} iterations, IPC "
                  f"{', '.join(map(str, ipcs))}, seed {s1.seed}), then DiT recovery")
            try:
                result = run_diver(cfg)
            except Exception as err:  # noqa: BLE001 - one failing method must not sink the demo
                _failed(skipped, f"{recovered} (distillation seed {d})", err, logs)
                for ipc in ipcs:  # the stage-1 set finished before DIVER failed
                    s1_dir = Path(cfg.output.dir) / f"ipc{ipc}" / "stage1"
                    if (s1_dir / "manifest.json").is_file():
                        spec = SetSpec(method, ipc, d)
                        sets[spec.name], specs[spec.name] = s1_dir, spec
                continue
            for ipc in ipcs:
                entry = result["sets"][f"ipc{ipc}"]
                s1_spec, rec_spec = SetSpec(method, ipc, d), SetSpec(recovered, ipc, d, stage1=method)
                sets[s1_spec.name], specs[s1_spec.name] = Path(entry["stage1"]), s1_spec
                sets[rec_spec.name], specs[rec_spec.name] = Path(entry["recovered"]), rec_spec
                if entry.get("side_by_side") and d == plan.distill_seeds[0]:
                    panels[f"DIVER at IPC {ipc}: the {method.upper()} set (left) and its recovery (right), "
                           "one row per class"] = Path(entry["side_by_side"])
                if plan.ablations and method == "dm" and d == plan.distill_seeds[0]:
                    stage(f"      DIVER ablation at IPC {ipc}: the plain DiT pass (inheritance only, "
                          "gamma 0)")
                    g0 = SetSpec("diver_gamma0", ipc, d, stage1="dm")
                    try:
                        res0 = run_diver(gamma0_config(base, Path(entry["stage1"]), out, name=g0.name))
                        g0_path = next(iter(res0["sets"].values()))["recovered"]
                        sets[g0.name], specs[g0.name] = Path(g0_path), g0
                    except Exception as err:  # noqa: BLE001
                        _failed(skipped, g0.name, err, logs)


def _run_edits_sets(plan: DemoPlan, out: Path, data: Path, quick: bool, sets: dict[str, Path],
                    specs: dict[str, SetSpec], skipped: dict[str, str], logs: Path) -> Path | None:
    """EDITS at each IPC and distillation seed (and without text prototypes); returns the headline set's
    folder."""
    # heavy: ray, threadpoolctl (not loaded when this module is imported)
    from pipeline.edits.run import run_edits  # its model stack loads when this step runs
    first: Config | None = None
    headline: Path | None = None
    for ipc in plan.ipcs:
        for d in plan.distill_seeds:
            spec = SetSpec("edits", ipc, d)
            stage(f"      EDITS at IPC {ipc}, seed {d}")
            try:
                base = method_config("edits", out, data, quick, logs=logs, ipcs=(ipc,))
                cfg = edits_seed_config(base, out, ipc, d, first)
                sets[spec.name] = Path(run_edits(cfg, log=EDITS_LINES)["output"])
                specs[spec.name] = spec
                first = first or cfg
                headline = headline or sets[spec.name]
                if plan.ablations and d == plan.distill_seeds[0]:
                    stage(f"      EDITS ablation at IPC {ipc}: without text prototypes (the class prompt for "
                          "every image)")
                    nt = SetSpec("edits_no_text", ipc, d)
                    res_nt = run_edits(no_text_config(cfg, out, name=nt.name), log=EDITS_LINES)
                    sets[nt.name], specs[nt.name] = Path(res_nt["output"]), nt
            except Exception as err:  # noqa: BLE001 - one failing method must not sink the demo
                _failed(skipped, spec.name, err, logs)
    return headline


def _run_demo(out: Path, quick: bool, full: bool, logs: Path, ablations: bool = False) -> dict[str, Any]:
    # heavy: ray (not loaded when this module is imported)
    from pipeline.core.ray_setup import ray_session
    from tuning.baselines import build_baseline

    plan = demo_plan(quick, full, ablations)
    ipc_text = ", ".join(map(str, plan.ipcs))
    n_steps = 6
    t_all = time.time()
    timings: dict[str, float] = {}
    stage(f"[1/{n_steps}] demo data and local model zoo (logs: {logs})")
    summary: dict[str, Any] = prepare_demo(out)
    timings["prepare_s"] = round(time.time() - t_all, 1)
    data = Path(summary["data"])
    sets: dict[str, Path] = {}
    specs: dict[str, SetSpec] = {}
    notes: list[str] = []
    skipped: dict[str, str] = {}

    t0 = time.time()
    stage(f"[2/{n_steps}] baselines at IPC {ipc_text}: {', '.join(plan.baselines)}")
    for spec in (s for s in plan.sets() if s.method in plan.baselines):
        res = build_baseline(spec.method, data / "train", out / spec.name, ipc=spec.ipc or 1,
                             seed=spec.distill_seed)
        sets[spec.name], specs[spec.name] = Path(res["output"]), spec
    timings["baselines_s"] = round(time.time() - t0, 1)

    # its ray section runs the demo
    base = method_config("diver", out, data, quick, logs=logs, ipcs=plan.ipcs)
    panels: dict[str, Path] = {}
    with ray_session(base.ray):
        t0 = time.time()
        stage(f"[3/{n_steps}] DIVER on {' and '.join(m.upper() for m in plan.stage1)} at IPC {ipc_text}, "
              f"distillation seed(s) {', '.join(map(str, plan.distill_seeds))}")
        _run_diver_sets(plan, base, out, sets, specs, panels, skipped, logs)
        timings["diver_s"] = round(time.time() - t0, 1)

        t0 = time.time()
        stage(f"[4/{n_steps}] EDITS at IPC {ipc_text}")
        edits_dir = _run_edits_sets(plan, out, data, quick, sets, specs, skipped, logs)
        timings["edits_s"] = round(time.time() - t0, 1)

        t0 = time.time()
        by_ipc: dict[int | None, dict[str, Path]] = {}
        for name, d in sets.items():
            by_ipc.setdefault(specs[name].ipc, {})[name] = d
        rows: list[dict] = []
        for ipc in [*plan.ipcs, None]:
            group = by_ipc.get(ipc)
            if not group:
                continue
            ev = eval_config(plan, ipc, quick)
            stage(f"[5/{n_steps}] evaluation at {f'IPC {ipc}' if ipc else 'the full real set'}: {len(group)} "
                  f"sets x {len(ev.students)} students x {ev.repeats} seeds ({ev.epochs} epochs at batch "
                  f"{ev.batch_size})")
            rows = evaluate_demo(group, data, out, ev, base.ray, specs=specs)
            if plan.ablations:  # DD-Ranking's ARS: distillation seed 0 again without augmentation
                plain = ev.model_copy(update={"augment": "none"})
                ars = {n: d for n,
                       d in ars_sets(group).items() if specs[n].distill_seed == plan.distill_seeds[0]}
                if ars:
                    stage("      the same runs without augmentation (DD-Ranking ARS; distillation seed "
                          f"{plan.distill_seeds[0]}, not the full real set)")
                    rows = evaluate_demo(ars, data, out, plain, base.ray, tag="_noaug", specs=specs)
        timings["eval_s"] = round(time.time() - t0, 1)

    # imported when called: tests replace it on its module
    from pipeline.report import write_report

    stage(f"[6/{n_steps}] report, with how a classifier of the real digits reads each set's images")
    judge = cached_judge(data, out / "judge")
    judged = {n: recognise(judge, d) for n, d in sets.items() if specs[n].ipc is not None}
    timings["total_s"] = round(time.time() - t_all, 1)
    rows = planned_rows(rows, specs)
    for ipc in plan.ipcs:
        ev = eval_config(plan, ipc, quick)
        notes.append(f"IPC {ipc}: students trained {ev.epochs} epochs at batch {ev.batch_size} ({ev.preset} "
                     f"preset: DSA, SGD, cosine; epochs and batch chosen on a holdout of the train split), "
                     f"{ev.repeats} evaluation seed(s) per set.")
    notes.append(f"dataset: sklearn digits as 32x32 RGB ({data}); distillation seed(s) "
                 f"{', '.join(map(str, plan.distill_seeds))}; the ConvNet at the stage-1 width "
                 f"{DEMO_PROXY_WIDTH}, ResNet-18 at width "
                 f"{DEMO_EVAL['student_kwargs']['resnet18']['width']}; headline = mean over the unseen "
                 f"architectures ({', '.join(s for s in plan.students if s != 'convnet')}); the ConvNet is "
                 f"the stage-1 proxy.")
    records: dict[str, dict[str, float]] = {}
    for method, ipcs in plan.stage1.items():
        for ipc in ipcs:
            rec = stage1_record(rows, method, ipc)
            if rec:
                records[f"{method}_ipc{ipc}"] = rec
                notes.append(f"stage-1 {method.upper()} set at IPC {ipc} (from noise, distillation seed 0): "
                             f"proxy ConvNet {rec['proxy']:.2f}%, unseen-architecture mean "
                             f"{rec['unseen_mean']:.2f}% (gap {rec['proxy'] - rec['unseen_mean']:+.2f} "
                             f"points).")
    notes += claim_lines(rows, min_seeds=FULL_MIN_SEEDS if full else MIN_SEEDS)
    notes.append(recognition_line(judge, judged))
    notes.append("stage times (s): " + ", ".join(f"{k[:-2]} {v}" for k, v in timings.items()))
    notes += list(skipped.values())
    sweep_dir = out / "sweep"
    first_seed = plan.distill_seeds[0]
    grids = {specs[n].method: d for n, d in sets.items()  # one grid per method: the headline IPC, seed 0
             if specs[n].ipc in (plan.ipcs[0], None) and specs[n].distill_seed == first_seed}
    paths = write_report(out, rows, sets=grids, sweep_dir=sweep_dir if sweep_dir.is_dir() else None,
                         title=f"semdistill demo{' (full)' if full else ''}: digits", notes=notes,
                         panels=panels, edits_dir=edits_dir)
    summary.update({"sets": {n: str(d) for n, d in sets.items()},
                    "set_specs": {n: {"method": s.method, "ipc": s.ipc, "distill_seed": s.distill_seed,
                                      "stage1": s.stage1} for n, s in specs.items()},
                    "plan": {"ipcs": list(plan.ipcs), "distill_seeds": list(plan.distill_seeds),
                             "eval_seeds": plan.eval_seeds, "students": list(plan.students)},
                    "skipped": skipped, "timings": timings, "stage1": records,
                    "recognition": {"judge_val_accuracy": judge.val_accuracy,
                                    "sets": {n: asdict(r) for n, r in judged.items()}},
                    "results": str(out / "results.json"), "logs": str(logs), **paths})
    atomic_write_json(out / "demo_summary.json", summary)
    stage(f"done in {timings['total_s'] / 60:.1f} min: {paths['report_html']}")
    return summary
