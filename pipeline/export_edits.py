"""``semdistill export RUN --what captions | prototypes --out OUT``: an EDITS run's intermediate artefacts as
a
Hugging Face dataset (what the peers' users ask for most: the captions and the prototypes behind a set).

``RUN`` is an EDITS ``output.dir`` (``artefacts/`` inside, see ``pipeline/edits/run.py``). ``OUT`` gets
``data/train-00000-of-00001.parquet`` and a ``README.md`` dataset card; ``datasets.load_dataset(OUT)`` or
``load_dataset("parquet", data_files="OUT/data/*.parquet")`` reads it.

- ``captions``: one row per real image the run clustered (``artefacts/buffer/<class>.parquet``): its
  ``image_key`` (path relative to the run's data root), class, caption, whether LOF kept it, its cluster;
  a run not yet clustered gives its caption cache's rows (the run's caption settings, its data root) with
  empty cluster columns, so the captions of a large set are exportable as soon as they are made;
- ``prototypes``: one row per cluster (``artefacts/clusters.json`` and ``prototypes/texts.json`` with its
  journal): the text prototype (and the LLM's raw answer), the member image keys, the ``k_image`` members
  whose latents make the image prototype, the ``k_text`` members and captions the LLM summarised.

The card names the models and settings each exported artefact was made with, read from the stages'
``<stage>.state.json`` (the resolved config values the stage ran with), and the run's ``config.yaml``
when ``semdistill run`` wrote one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pipeline.errors import ConfigError, DataError

WHAT = ("captions", "prototypes")
# the stages each export reads, in run order (the card lists their settings)
STAGES = {"captions": ("caption", "embed", "cluster"), "prototypes": ("caption", "embed", "cluster",
                                                                      "prototype.text")}
ROLE_OF_STAGE = {"caption": "models.vlm", "embed": "models.clip", "prototype.text": "models.llm"}


def _run_view(run: Path) -> Any:
    """What the EDITS readers need of a run: its artefact paths."""
    # start-up: pydantic, yaml (not loaded when this module is imported)
    from pipeline.edits.state import Artefacts

    return SimpleNamespace(paths=Artefacts(run))


def stage_keys(run: Path, stages: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Each stage's recorded settings; a missing or unfinished stage is an error naming its state file."""
    keys = {}
    for stage in stages:
        path = run / "artefacts" / f"{stage}.state.json"
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path} is missing: {run} is not an EDITS run whose {stage} stage ran (give the "
                            f"run's output.dir, or finish it with `semdistill run CONFIG`)") from None
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is not valid JSON ({err}): re-run the {stage} stage "
                            f"(`semdistill run CONFIG --from-stage {stage.split('.')[0]}`)") from None
        if not state.get("complete"):
            raise DataError(f"{path}: the {stage} stage has not completed; finish the run with "
                            "`semdistill run CONFIG` before exporting")
        keys[stage] = state.get("key") or {}
    return keys


def image_key(path: str, root: str | None) -> str:
    """A real image's key: its path relative to the run's data root (the path itself when outside it)."""
    if root and "://" not in root:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            return path
    if root and path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1:]
    return path


def _class_info(run: Any) -> dict[str, dict[str, Any]]:
    # start-up: numpy, pydantic, threadpoolctl, yaml (not loaded when this module is imported)
    from pipeline.edits.buffer import load_clusters

    path = run.paths.clusters
    if not path.is_file():
        raise DataError(f"{path} is missing: the run's cluster stage has not finished (`semdistill run "
                        f"CONFIG`)")
    return load_clusters(run)["classes"]


def caption_rows(run: Any, root: str | None) -> list[dict[str, Any]]:
    """One row per image of the run's buffer, in label then key order."""
    # heavy: PIL, numpy, pydantic, threadpoolctl and 1 more (not loaded when this module is imported)
    from pipeline.core.read import read_parquet
    from pipeline.core.write import component_name
    from pipeline.edits.buffer import cluster_key

    rows = []
    for class_id, info in _class_info(run).items():
        path = run.paths.buffer / f"{component_name(class_id)}.parquet"
        if not path.is_file():
            raise DataError(f"{path} is missing (class {class_id!r} of {run.paths.clusters}): "
                            "re-run the cluster stage (`semdistill run CONFIG --from-stage cluster`)")
        cols = read_parquet(path)
        for p, cap, kept, cl in zip(cols["path"], cols["caption"], cols["kept"], cols["cluster"]):
            cl = int(cl)
            rows.append({"image_key": image_key(str(p), root), "class_id": class_id,
                         "class_name": info["name"],
                         "label": int(info["label"]), "caption": str(cap), "kept": bool(kept),
                         "cluster": cl, "cluster_key": cluster_key(class_id, cl) if cl >= 0 else None})
    return sorted(rows, key=lambda r: (r["label"], r["image_key"]))


def cached_caption_rows(run: Any, key: dict[str, Any], root: str | None) -> list[dict[str, Any]]:
    """Captions of a run whose cluster stage has not run: the caption cache's rows made with the run's
    caption settings (``key``) for images under its data root; no cluster columns."""
    # heavy: PIL, ray, torch, numpy and 2 more (not loaded when this module is imported)
    from pipeline.edits.caption import CaptionCache, cache_settings_hash, row_key

    names = key.get("input:class_names") or {}
    h = cache_settings_hash(key)
    class_of = {row_key(h, name): cid for cid, name in names.items()}
    label = {cid: i for i, cid in enumerate(names)}
    prefix = (root or "").rstrip("/") + "/"
    rows = []
    for (path, rk), cap in CaptionCache(run.paths.captions).rows.items():
        cid = class_of.get(rk)
        if cid is None or (root and not path.startswith(prefix)):
            continue  # another captioner setting, or an image of another data root
        rows.append({"image_key": image_key(path, root), "class_id": cid, "class_name": names[cid],
                     "label": label[cid], "caption": cap, "kept": None, "cluster": None, "cluster_key": None})
    return sorted(rows, key=lambda r: (r["label"], r["image_key"]))


def prototype_rows(run: Any, root: str | None) -> list[dict[str, Any]]:
    """One row per cluster, in label then cluster order: its text prototype and its members' keys."""
    # heavy: PIL, ray, torch, numpy and 2 more (not loaded when this module is imported)
    from pipeline.edits.prototype import load_texts

    texts = load_texts(run)
    rows = []
    for class_id, info in _class_info(run).items():
        for cl in info["clusters"]:
            text = texts.get(cl["key"])
            if text is None:
                raise DataError(f"cluster {cl['key']} has no text prototype in {run.paths.texts}: re-run the "
                                "prototype stage (`semdistill run CONFIG --from-stage prototype`)")
            keys = [image_key(p, root) for p in cl["members"]]
            rows.append({
                "cluster_key": cl["key"], "class_id": class_id, "class_name": info["name"],
                "label": int(info["label"]), "cluster": int(cl["cluster"]), "size": int(cl["size"]),
                "text_prototype": str(text["text"]), "llm_raw": str(text.get("raw", "")),
                "text_source": str(text.get("backend") or ""), "text_model": text.get("model"),
                "members": keys, "member_distances": [float(d) for d in cl["distances"]],
                "image_members": [image_key(p, root) for p in cl["image_members"]],
                "text_members": [image_key(p, root) for p in cl["text_members"]],
                "text_captions": [str(c) for c in cl["text_captions"]]})
    return sorted(rows, key=lambda r: (r["label"], r["cluster"]))


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    # heavy: pyarrow (not loaded when this module is imported)
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _settings_table(stage: str, key: dict[str, Any]) -> list[str]:
    """The stage's recorded config values (its ``DEPENDS_ON`` paths), one table row each."""
    lines = [f"### Stage `{stage}`", "", "| setting | value |", "|---|---|"]
    for name, value in key.items():
        if name.startswith("stage:"):
            continue
        shown = json.dumps(value, default=str)
        if len(shown) > 300:
            shown = shown[:300] + " ..."
        lines.append(f"| `{name}` | `{shown.replace('|', '/')}` |")
    return lines + [""]


def dataset_card(what: str, run: Path, keys: dict[str, dict[str, Any]], rows: list[dict[str, Any]],
                 config: dict[str, Any]) -> str:
    """``README.md``: the Hub's YAML header and the models and settings the exported artefacts were made
    with."""
    # start-up: yaml (not loaded when this module is imported)
    import yaml

    header = {"configs": [{"config_name": "default", "data_files": [{"split": "train",
                                                                     "path": "data/train-*"}]}],
              "tags": ["dataset-distillation", "edits", f"semdistill-edits-{what}"]}
    classes = sorted({(r["label"], r["class_id"], r["class_name"]) for r in rows})
    models = {role: keys[stage].get(role) for stage, role in ROLE_OF_STAGE.items() if stage in keys}
    if (config.get("models") or {}).get("sd"):
        models["models.sd"] = config["models"]["sd"]
    unit = "images" if what == "captions" else "clusters"
    root = (keys.get("caption") or {}).get("input:data_root") or (config.get("data") or {}).get("root")
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
             f"# EDITS {what}: {len(rows)} {unit}, {len(classes)} classes", "",
             f"Exported by `semdistill export {run} --what {what}` from the EDITS run `{run}`"
             + (f" (config name `{config['name']}`)" if config.get("name") else "") + ".",
             f"Image keys are paths relative to the run's data root `{root}`."]
    if what == "captions" and "cluster" not in keys:
        lines.append("The run had not clustered when exported: these are the captions its caption cache "
                     "holds for its settings and data root, and the cluster columns are empty.")
    lines += ["", "## Models", ""]
    lines += [f"- `{role}`: `{ref}`" for role, ref in models.items()]
    lines += ["", "## Columns", ""]
    lines += [f"- `{c}`" for c in rows[0]] if rows else ["(no rows)"]
    lines += ["", "## Settings", "",
              "The values each stage ran with, as recorded in its `artefacts/<stage>.state.json`.", ""]
    for stage, key in keys.items():
        lines += _settings_table(stage, key)
    lines += ["## Classes", "", "| label | class id | name |", "|---:|---|---|"]
    lines += [f"| {lab} | `{cid}` | {name} |" for lab, cid, name in classes]
    lines += ["", "## Load", "", "```python", "from datasets import load_dataset",
              'ds = load_dataset("parquet", data_files="data/train-*.parquet", split="train")', "```", ""]
    return "\n".join(lines)


def _run_config(run: Path) -> dict[str, Any]:
    # start-up: yaml (not loaded when this module is imported)
    import yaml

    path = run / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise DataError(f"{path} is not valid YAML ({err}): fix or remove it") from None


def export_edits(run: str | Path, what: str, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Export ``what`` of the EDITS run at ``run`` into ``out`` (built aside and swapped in whole)."""
    # heavy: PIL, numpy (not loaded when this module is imported)
    from pipeline.core.write import atomic_folder

    if what not in WHAT:
        raise ConfigError(f"--what {what!r}: choose one of {' | '.join(WHAT)}")
    run, out = Path(run), Path(out)
    if not (run / "artefacts").is_dir():
        raise DataError(f"{run / 'artefacts'} is missing: give an EDITS run folder (its output.dir)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
    a, b = out.resolve(), run.resolve()
    if a == b or b in a.parents:
        raise ConfigError(f"--out {out} is inside the run {run}: export to a folder outside it")
    view = _run_view(run)
    from_cache = what == "captions" and not view.paths.clusters.is_file()  # captioned, not yet clustered
    keys = stage_keys(run, ("caption",) if from_cache else STAGES[what])
    config = _run_config(run)
    root = keys["caption"].get("input:data_root") or (config.get("data") or {}).get("root")
    if from_cache:
        rows = cached_caption_rows(view, keys["caption"], root)
    else:
        rows = caption_rows(view, root) if what == "captions" else prototype_rows(view, root)
    if not rows:
        raise DataError(f"{run}: no {what} to export")
    with atomic_folder(out) as tmp:
        _write_parquet(rows, tmp / "data" / "train-00000-of-00001.parquet")
        (tmp / "README.md").write_text(dataset_card(what, run, keys, rows, config), encoding="utf-8")
    return [out / "data" / "train-00000-of-00001.parquet", out / "README.md"]


def main(args: argparse.Namespace) -> int:
    files = export_edits(args.dir, args.what, args.out, overwrite=args.overwrite)
    print(f"exported the {args.what} of the EDITS run {args.dir} as a Hugging Face dataset: {files[0]} "
          f"and its card {files[1]}")
    return 0
