"""``semdistill``: the command line. Each subcommand lives in its own module, imported when it runs."""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.errors import ConfigError, SemdistillError

EPILOG = """examples:
  semdistill demo --out runs/demo                 # everything, offline, on a laptop
  semdistill data demo --out data/digits          # the embedded real dataset (sklearn digits)
  semdistill zoo build                            # tiny local models for every role
  semdistill zoo train-demo --roles demo_sd       # retrain a shipped demo model from its recipe
  semdistill run configs/demo_diver.yaml output.dir=runs/d1 diver.gamma=0.05
  semdistill run configs/edits_imagewoof.yaml edits.ipc=10 --from-stage cluster
  semdistill submit configs/diver_imagenet1k.yaml --address http://head:8265

Configs are YAML; any key can be overridden as dotted key=value after the config path.
Model roles accept a hub id (loaded with from_pretrained on the cluster), a local folder,
or zoo:<role> for the tiny local zoo. See README.md, 'Config reference'.
"""


# One handler per command, each importing its module when called: ``--help`` and the other commands never
# pay a command's imports (torch, diffusers, Ray), and import-linter still sees every edge.
def _data_demo(args: argparse.Namespace) -> int | None:
    from pipeline.demo.commands import data_demo

    return data_demo(args)


def _data_check(args: argparse.Namespace) -> int | None:
    from pipeline.checks.data_check import main as data_check_main

    return data_check_main(args)


def _zoo_build(args: argparse.Namespace) -> int | None:
    from pipeline.demo.commands import zoo_build

    return zoo_build(args)


def _zoo_list(args: argparse.Namespace) -> int | None:
    from pipeline.demo.commands import zoo_list

    return zoo_list(args)


def _zoo_train_demo_dit(args: argparse.Namespace) -> int | None:
    from pipeline.demo.zoo.dit import main as demo_dit_main

    return demo_dit_main(args)


def _zoo_train_demo(args: argparse.Namespace) -> int | None:
    from pipeline.demo.commands import train_demo

    return train_demo(args)


def _run(args: argparse.Namespace) -> int | None:
    from pipeline.run import main as run_main

    return run_main(args)


def _dm(args: argparse.Namespace) -> int | None:
    from pipeline.diver.dm import main as dm_main

    return dm_main(args)


def _demo(args: argparse.Namespace) -> int | None:
    from pipeline.demo.commands import demo

    return demo(args)


def _eval(args: argparse.Namespace) -> int | None:
    from tuning.eval_cmd import main as eval_cmd_main

    return eval_cmd_main(args)


def _sweep(args: argparse.Namespace) -> int | None:
    from pipeline.run import sweep_main

    return sweep_main(args)


def _submit(args: argparse.Namespace) -> int | None:
    from cluster.submit import main as submit_main

    return submit_main(args)


def _plan(args: argparse.Namespace) -> int | None:
    from cluster.plan import main as plan_main

    return plan_main(args)


def _verify(args: argparse.Namespace) -> int | None:
    from pipeline.checks.verify import main as verify_main

    return verify_main(args)


def _export(args: argparse.Namespace) -> int | None:
    """``export``: a distilled set (``--to``) or an EDITS run's artefacts (``--what``), never both."""
    if (args.to is None) == (args.what is None):
        raise ConfigError("give either --to hf|webdataset|pt|imagefolder (DIR is a distilled set) or --what "
                          "captions|prototypes (DIR is an EDITS run)" + (", not both" if args.what else ""))
    if args.what:
        from pipeline.export_edits import main as export_edits_main

        return export_edits_main(args)
    from pipeline.export import main as export_main

    return export_main(args)


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted config overrides, e.g. output.dir=runs/x edits.ipc=10")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semdistill",
        description="Distil image datasets into a few synthetic images per class with EDITS and DIVER on "
                    "Ray.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version="semdistill 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # data
    data = sub.add_parser("data", help="prepare or check datasets (demo digits, data check)")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    d = dsub.add_parser("demo",
                        help="write the embedded demo dataset (sklearn digits, 32x32 RGB ImageFolder)")
    d.add_argument("--out", required=True, help="output folder (gets train/, val/, class_names.json)")
    d.add_argument("--size", type=int, default=32, help="image size in px (default 32)")
    d.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of each class kept for val (default 0.2)")
    d.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default 0)")
    d.set_defaults(func=_data_demo)
    c = dsub.add_parser("check",
                        help="scan a dataset without models: list files it would skip, per-class counts")
    c.add_argument("root",
                   help="dataset root: ImageFolder, parquet or WebDataset shards; a path or s3://, gs://, "
                        "file://")
    c.add_argument("--format", default="auto", choices=["auto", "imagefolder", "parquet", "webdataset"],
                   help="data.format (default auto: shards in ROOT or ROOT/data, else an ImageFolder)")
    c.add_argument("--ipc", type=int, default=1, help="fail when a class has fewer usable images (default 1)")
    c.add_argument("--json", dest="as_json", action="store_true", help="print the report as JSON")
    c.add_argument("--class-names", default=None,
                   help="id -> name table, to warn about duplicate class names")
    c.add_argument("--workers", type=int, default=1, help="decode with this many processes (default 1)")
    c.add_argument("--no-decode", action="store_true", help="only list files, do not decode them (fast)")
    c.set_defaults(func=_data_check)

    # zoo
    zoo = sub.add_parser("zoo",
                         help="the tiny local model zoo (random-init models saved with save_pretrained)")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)
    zb = zsub.add_parser("build", help="build every zoo role that is missing (a second build is a no-op)")
    zb.add_argument("--dir", default=None,
                    help="zoo folder (default $SEMDISTILL_ZOO_DIR or the user cache dir)")
    zb.add_argument("--force", action="store_true", help="rebuild even when present")
    zb.add_argument("--roles", nargs="*", default=None, help="only these roles")
    zb.set_defaults(func=_zoo_build)
    zl = zsub.add_parser("list", help="list the zoo roles and whether each is built")
    zl.add_argument("--dir", default=None)
    zl.set_defaults(func=_zoo_list)
    zt = zsub.add_parser("train-demo-dit",
                         help="train the tiny class-conditional DiT (+VAE) on the demo digits")
    zt.add_argument("--data", default=None, help="demo dataset root (default: written to the zoo folder)")
    zt.add_argument("--dir", default=None, help="zoo folder")
    zt.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    zt.add_argument("--force", action="store_true", help="retrain even when present")
    zt.set_defaults(func=_zoo_train_demo_dit)
    zd = zsub.add_parser("train-demo",
                         help="train the demo zoo (captioner, CLIP, SD, DiT) on the demo digits and "
                                            "ship the checkpoints with their sha256 sums")
    zd.add_argument("--roles", nargs="*", default=None,
                    help="demo_vlm demo_clip demo_sd demo_dit (default: all)")
    zd.add_argument("--data", default=None, help="demo dataset root (default: written to a temp folder)")
    zd.add_argument("--dir", default=None, help="zoo folder (refreshed after training)")
    zd.add_argument("--weights-dir", default=None,
                    help="where the shipped weights go (default actors/demo_weights)")
    zd.add_argument("--force", action="store_true", help="retrain roles whose weights are present")
    zd.set_defaults(func=_zoo_train_demo)

    # run
    r = sub.add_parser("run", help="run a config end to end (method: edits | diver)")
    r.add_argument("config", help="YAML config, e.g. configs/demo_diver.yaml")
    _add_overrides(r)
    r.add_argument("--from-stage", default=None, help="re-run from this stage, reusing earlier artefacts")
    r.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    r.add_argument("--verbose", action="store_true",
                   help="everything on the terminal (default: one line per stage and a progress bar; Ray's "
                        "and the libraries' output in <output.dir>/logs/run.log)")
    r.set_defaults(func=_run)

    # distill (classical stage-1)
    dist = sub.add_parser("distill", help="classical stage-1 distillers (DM) that DIVER recovers")
    dist_sub = dist.add_subparsers(dest="distill_command", metavar="METHOD", required=True)
    dm = dist_sub.add_parser("dm", help="distribution matching (Zhao & Bilen) with random ConvNets")
    dm.add_argument("--data", required=True, help="real ImageFolder root")
    dm.add_argument("--ipc", type=int, default=10)
    dm.add_argument("--out", required=True, help="output folder (ImageFolder + manifest + images.pt)")
    dm.add_argument("--iterations", type=int, default=None)
    dm.add_argument("--seed", type=int, default=0)
    dm.set_defaults(func=_dm)

    # demo
    dm_ = sub.add_parser("demo",
                         help="the whole thing offline on a laptop: data, zoo, methods, evaluation, report")
    dm_.add_argument("--out", required=True, help="output folder")
    dm_.add_argument("--quick", action="store_true", help="smaller settings for a smoke run")
    dm_.add_argument("--full", action="store_true",
                     help="add IPC 10, a second distillation seed for every set (each claim then pairs 6 "
                          "seeds), and gradient matching (DC/DSA) with DIVER on it; under 45 minutes on 2 "
                          "cores")
    dm_.add_argument("--ablations", action="store_true",
                     help="with --full: also herding, k-center, the full real set, DIVER gamma 0, EDITS "
                          "without text prototypes and the runs without augmentation for DD-Ranking's ARS "
                          "(about an hour more)")
    dm_.add_argument("--verbose", action="store_true",
                     help="everything on the terminal (default: logs/run.log)")
    dm_.set_defaults(func=_demo)

    # eval
    e = sub.add_parser("eval", help="train students on a distilled set, test on the real val set")
    e.add_argument("--distilled", required=True, help="distilled ImageFolder (with manifest.json)")
    e.add_argument("--real", required=True, help="real validation ImageFolder")
    e.add_argument("--train", default=None, help="real train ImageFolder (teacher for soft labels)")
    e.add_argument("--students", nargs="+", default=["convnet", "resnet18"])
    e.add_argument("--config", default=None, help="YAML config whose eval section to use")
    e.add_argument("--out", default=None, help="where results.json/.md go (default: the distilled folder)")
    _add_overrides(e)
    e.set_defaults(func=_eval)

    # sweep
    s = sub.add_parser(
        "sweep", help="Ray Tune sweep over method settings (gamma, guidance_scale, ...)",
        description="Each trial distils a set with one choice of the sweep's settings, trains the "
                    "students on it (sweep.repeats seeds) and scores it on a holdout carved from data.root "
                    "(never the val split): the headline mean top-1 over the students outside "
                    "eval.exclude_from_mean, with its std over seeds. ASHA (sweep.scheduler: asha) judges "
                    "every rung on that headline mean.",
        epilog="""terminal: one line per trial and one progress bar; Ray's, Tune's and the trials' output go
to <output.dir>/logs/ (run.log; ray_session links Ray's session logs). Results in <output.dir>/sweep/:
sweep.md (each trial's mean +- std and per-student top-1), sweep_results.json, best.json,
best_config.yaml, sweep.png.
examples:
  semdistill sweep configs/demo_sweep.yaml
  semdistill sweep configs/demo_sweep.yaml sweep.repeats=3 output.dir=runs/demo3""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("config", help="YAML config with a sweep section (e.g. configs/demo_sweep.yaml)")
    _add_overrides(s)
    s.add_argument("--verbose", action="store_true",
                   help="everything on the terminal (default: logs/run.log)")
    s.set_defaults(func=_sweep)

    # submit / plan
    sb = sub.add_parser("submit", help="submit a config to a Ray cluster with `ray job submit`")
    sb.add_argument("config")
    _add_overrides(sb)
    sb.add_argument("--address", default=None, help="Ray dashboard address (default $RAY_ADDRESS)")
    sb.add_argument("--no-wait", action="store_true", help="return after submitting")
    sb.add_argument("--from-stage", default=None, help="re-run from this stage on the cluster")
    sb.add_argument("--dry-run", action="store_true", help="print the equivalent `ray job submit` and exit")
    sb.set_defaults(func=_submit)
    pl = sub.add_parser("plan", help="estimate wall time and GPU hours of a config on N GPUs")
    pl.add_argument("config")
    pl.add_argument("--gpus", type=int, default=8)
    pl.add_argument("--images", type=int, default=None,
                    help="real images (default: count data.root, else ImageNet-1K)")
    pl.add_argument("--classes", type=int, default=None, help="classes (default: from data.root, else 1000)")
    pl.add_argument("--costs", default=None,
                    help="JSON of measured per-item costs (default: bench/results/*.json)")
    pl.add_argument("--json", dest="as_json", action="store_true", help="print the plan as JSON")
    _add_overrides(pl)
    pl.set_defaults(func=_plan)

    # export
    ex = sub.add_parser(
        "export",
        help="write a distilled set as Hugging Face parquet, WebDataset shards, DC/MTT tensors or an "
             "ImageFolder; or an EDITS run's captions / prototypes as a Hugging Face dataset",
        description="Export a distilled set (ImageFolder + manifest.json) for other people's tools "
                    "(--to), or an EDITS run's intermediate artefacts as a Hugging Face dataset (--what).",
        epilog="""formats (--to, DIR is a distilled set):
  hf           data/train-*.parquet (image struct bytes/path, label ClassLabel) + README.md dataset card;
               datasets.load_dataset("parquet", data_files="OUT/data/*.parquet"); push with huggingface_hub
  webdataset   shard-000000.tar ... with <key>.png, <key>.cls, <key>.json (ray.data.read_webdataset)
  pt           images_best.pt + labels_best.pt (DC/MTT layout, normalised with --norm),
               normalization.json and classes.json beside them
  imagefolder  OUT/<class_id>/<image> byte for byte, with manifest.json
artefacts (--what, DIR is an EDITS run's output.dir; Hugging Face parquet + a README.md card naming the
models and the settings each stage ran with):
  captions     one row per real image: image_key (path under the data root), class, caption, LOF kept, cluster
  prototypes   one row per cluster: text prototype (and the LLM's raw answer), member image keys with their
               distances, the k_image members of the image prototype, the k_text members and their captions
examples:
  semdistill export runs/diver/diver --to hf --out exports/diver_hf
  semdistill export runs/edits/distilled --to pt --norm imagenet --out exports/edits_pt
  semdistill export runs/edits --what captions --out exports/edits_captions""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("dir",
                    help="distilled set folder (with manifest.json); with --what, the EDITS run folder")
    ex.add_argument("--to", default=None, choices=["hf", "webdataset", "pt", "imagefolder"],
                    help="output layout of a distilled set")
    ex.add_argument("--what", default=None, choices=["captions", "prototypes"],
                    help="an EDITS run's artefacts to export as a Hugging Face dataset (instead of --to)")
    ex.add_argument("--out", required=True, help="output folder (built aside, then swapped in whole)")
    ex.add_argument("--norm", default="auto", choices=["auto", "imagenet", "cifar10", "cifar100", "none"],
                    help="pt only: normalisation of images_best.pt (auto: the stage-1 input's from the "
                         "manifest, else imagenet; none: pixels in [0, 1])")
    ex.add_argument("--shard-size", type=int, default=1000,
                    help="hf/webdataset: images per shard (default 1000)")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    ex.set_defaults(func=_export)

    # verify
    v = sub.add_parser("verify", help="check a distilled set against its manifest.json")
    v.add_argument("dir")
    v.add_argument("--ipc", type=int, default=None, help="also require exactly this many images per class")
    v.add_argument("--json", dest="as_json", action="store_true", help="print the report as JSON")
    v.add_argument("--no-decode", action="store_true", help="check files and checksums without decoding")
    v.set_defaults(func=_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except SemdistillError as err:
        print(f"semdistill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("semdistill: interrupted; finished outputs are kept, re-run to resume", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
