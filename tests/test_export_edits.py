"""`semdistill export RUN --what captions|prototypes`: an EDITS run's captions, text prototypes and cluster
membership as a Hugging Face dataset, read back with `datasets.load_dataset`.

The run folder is written by the EDITS stages' own writers (the cluster stage's ``process_class`` and
``_save_class``, the stage state files, the text prototypes' journal), not by running the pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from pipeline.cli import build_parser, main
from pipeline.config import EditsConfig
from pipeline.core.journal import append_records
from pipeline.core.write import atomic_write_json
from pipeline.edits.buffer import ClusterSettings, _save_class, process_class
from pipeline.edits.state import Artefacts, StageState
from pipeline.errors import DataError
from pipeline.export_edits import export_edits

datasets = pytest.importorskip("datasets")

NAMES = {"n01440764": "tench", "n02102040": "English springer"}
PER_CLASS = 6
KEYS = {
    "caption": {"input:data_root": None, "input:class_names": NAMES, "models.vlm": "zoo:vlm",
                "edits.caption_max_tokens": 12, "edits.caption_style": "vlm"},
    "embed": {"stage:caption": "abc", "models.clip": "openai/clip-vit-base-patch32",
              "edits.feature_image_size": 224},
    "cluster": {"stage:embed": "def", "edits.ipc": 2, "edits.tau": 0.01, "edits.fusion": "concat",
                "edits.k_image": 2, "edits.k_text": 2},
    "prototype.text": {"stage:cluster": "ghi", "models.llm": "HuggingFaceTB/SmolLM2-360M-Instruct",
                       "edits.max_tokens": 77},
}


@pytest.fixture
def edits_run(tmp_path):
    """An EDITS run after its prototype stage: 2 classes x 6 images, IPC 2, half the texts still in the
    journal."""
    root = tmp_path / "data"
    out = tmp_path / "run"
    run = SimpleNamespace(paths=Artefacts(out), names=NAMES)
    settings = ClusterSettings.from_edits(EditsConfig(ipc=2, k_image=2, k_text=2, kmeans_nredo=2))
    rng = np.random.default_rng(0)
    merged, captions = {}, {}
    for label, cid in enumerate(NAMES):
        paths = [f"{root}/{cid}/img_{i}.png" for i in range(PER_CLASS)]
        caps = [f"a photo of a {NAMES[cid]}, view {i}" for i in range(PER_CLASS)]
        captions.update(dict(zip(paths, caps)))
        img, txt = rng.normal(size=(PER_CLASS, 8)), rng.normal(size=(PER_CLASS, 8))
        feats = {"path": np.asarray(paths, dtype=object), "caption": np.asarray(caps, dtype=object),
                 "label": np.full(PER_CLASS, label, dtype=np.int64)}
        merged[cid] = _save_class(run, feats, process_class(cid, img.astype(np.float32),
                                                            txt.astype(np.float32), settings))
    atomic_write_json(run.paths.clusters, {"settings": settings.as_dict(), "classes": merged})
    keys = json.loads(json.dumps(KEYS))
    keys["caption"]["input:data_root"] = str(root)
    for stage, key in keys.items():
        StageState(run.paths.art, stage, key).finish()
    clusters = [cl for c in merged.values() for cl in c["clusters"]]
    texts = {cl["key"]: {"text": f"summary of {cl['key']}", "raw": f"Summary: {cl['key']}",
                         "class_id": cl["key"].rsplit("_", 1)[0], "caption_ids": cl["text_members"],
                         "backend": "transformers",
                         "model": KEYS["prototype.text"]["models.llm"]} for cl in clusters}
    first = sorted(texts)[:2]
    atomic_write_json(run.paths.texts, {k: texts[k] for k in first})
    append_records(run.paths.texts_journal, [{"key": k, "value": v} for k,
                                             v in texts.items() if k not in first])
    (out / "config.yaml").write_text(yaml.safe_dump({"name": "edits_tiny", "models": {"sd": "zoo:sd"}}))
    return {"out": out, "root": root, "merged": merged, "captions": captions, "texts": texts}


def _rel(path: str, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def test_captions_export_loads_with_datasets(edits_run, tmp_path):
    files = export_edits(edits_run["out"], "captions", tmp_path / "caps")
    assert [f.name for f in files] == ["train-00000-of-00001.parquet", "README.md"]
    # the card's configs name the files
    ds = datasets.load_dataset(str(tmp_path / "caps"), split="train", cache_dir=str(tmp_path / "hf_cache"))
    assert len(ds) == 2 * PER_CLASS
    root = edits_run["root"]
    want = {_rel(p, root): c for p, c in edits_run["captions"].items()}
    assert {r["image_key"]: r["caption"] for r in ds} == want
    assert (ds[0]["image_key"] == "n01440764/img_0.png" and ds[0]["class_name"] == "tench"
            and ds[0]["label"] == 0)
    for r in ds:  # every image sits in the cluster whose member list names it
        cl = next(c for c in edits_run["merged"][r["class_id"]]["clusters"] if c["key"] == r["cluster_key"])
        assert r["image_key"] in [_rel(p, root) for p in cl["members"]] and r["kept"] is True
        assert r["cluster_key"] == f"{r['class_id']}_{r['cluster']:03d}"
    card = (tmp_path / "caps" / "README.md").read_text()
    for text in ("- `models.vlm`: `zoo:vlm`", "- `models.clip`: `openai/clip-vit-base-patch32`",
                 "- `models.sd`: `zoo:sd`", "| `edits.tau` | `0.01` |", "| `edits.fusion` | `\"concat\"` |",
                 "| `edits.caption_max_tokens` | `12` |", "| 1 | `n02102040` | English springer |",
                 "path: data/train-*", "config name `edits_tiny`", f"data root `{root}`"):
        assert text in card, text
    assert "models.llm" not in card  # the captions do not depend on the LLM


def test_prototypes_export_has_texts_and_member_keys(edits_run, tmp_path):
    export_edits(edits_run["out"], "prototypes", tmp_path / "protos")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "protos" / "data" / "*.parquet"),
                               split="train", cache_dir=str(tmp_path / "hf_cache"))
    root = edits_run["root"]
    clusters = {cl["key"]: cl for c in edits_run["merged"].values() for cl in c["clusters"]}
    assert list(ds["cluster_key"]) == sorted(clusters) and len(ds) == 4  # IPC 2 x 2 classes, label order
    for r in ds:
        cl = clusters[r["cluster_key"]]
        # texts.json and the journal
        assert r["text_prototype"] == edits_run["texts"][r["cluster_key"]]["text"]
        assert (r["llm_raw"] == f"Summary: {r['cluster_key']}"
                and r["text_model"] == KEYS["prototype.text"]["models.llm"])
        assert r["members"] == [_rel(p, root) for p in cl["members"]] and r["size"] == len(r["members"])
        assert r["member_distances"] == pytest.approx(cl["distances"])
        assert len(r["image_members"]) == 2 and set(r["image_members"]) <= set(r["members"])
        assert r["text_captions"] == cl["text_captions"] and len(r["text_members"]) == 2
    assert sorted(k for r in ds for k in r["members"]) == sorted(_rel(p, root) for p in edits_run["captions"])
    card = (tmp_path / "protos" / "README.md").read_text()
    assert ("- `models.llm`: `HuggingFaceTB/SmolLM2-360M-Instruct`" in card
            and "| `edits.max_tokens` | `77` |" in card)
    assert "# EDITS prototypes: 4 clusters, 2 classes" in card


def test_cli_export_what_and_its_errors(edits_run, tmp_path, capsys):
    run = str(edits_run["out"])
    help_text = build_parser()._subparsers._group_actions[0].choices["export"].format_help()
    assert "--what {captions,prototypes}" in help_text and "member image keys" in help_text
    assert main(["export", run, "--what", "prototypes", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "README.md").is_file()
    assert main(["export", run, "--what", "captions", "--to", "hf", "--out", str(tmp_path / "x")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["export", run, "--out", str(tmp_path / "x")]) == 2
    assert "give either --to" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--what", "captions", "--out", str(tmp_path / "x")]) == 2
    assert f"{tmp_path / 'artefacts'} is missing: give an EDITS run folder" in capsys.readouterr().err
    state = edits_run["out"] / "artefacts" / "prototype.text.state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "complete": False}))
    assert main(["export", run, "--what", "prototypes", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert f"{state}: the prototype.text stage has not completed" in err and not (tmp_path / "y").exists()
    assert main(["export", run, "--what", "captions", "--out", str(tmp_path / "y")]) == 0  # needs no LLM


def test_captions_of_a_run_not_yet_clustered_come_from_its_caption_cache(edits_run, tmp_path):
    """Captioned but not clustered (a large set's captions are wanted first): the cache's rows made with the
    run's caption settings for images under its data root; other settings and other roots are left out."""
    import shutil

    from pipeline.edits.caption import CaptionCache, cache_settings_hash, row_key

    art = edits_run["out"] / "artefacts"
    for name in ("buffer", "clusters", "clusters.json", "embed.state.json", "cluster.state.json"):
        path = art / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    key = json.loads((art / "caption.state.json").read_text())["key"]
    h = cache_settings_hash(key)
    cache = CaptionCache(art / "captions")
    for path, cap in edits_run["captions"].items():
        cid = Path(path).parent.name
        cache.put(path, row_key(h, NAMES[cid]), cap)
        cache.put(path, row_key("other-captioner", NAMES[cid]), "made with other settings")
    cache.put("/elsewhere/n01440764/img_0.png", row_key(h, "tench"), "an image of another data root")
    cache.flush()
    export_edits(edits_run["out"], "captions", tmp_path / "caps")
    ds = datasets.load_dataset(str(tmp_path / "caps"), split="train", cache_dir=str(tmp_path / "hf_cache"))
    root = edits_run["root"]
    assert {r["image_key"]: r["caption"] for r in ds} == {_rel(p, root): c for p,
                                                          c in edits_run["captions"].items()}
    assert [r["label"] for r in ds] == [0] * PER_CLASS + [1] * PER_CLASS
    assert all(r["cluster"] is None and r["cluster_key"] is None for r in ds)
    card = (tmp_path / "caps" / "README.md").read_text()
    assert ("had not clustered" in card and "- `models.vlm`: `zoo:vlm`" in card
            and "Stage `cluster`" not in card)
    with pytest.raises(DataError, match=r"embed.state.json is missing: .* whose embed stage ran"):
        export_edits(edits_run["out"], "prototypes", tmp_path / "protos")
