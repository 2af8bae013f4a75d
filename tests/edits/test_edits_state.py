"""EDITS bookkeeping without Ray: caption cache, parquet round trip, stage states, stage keys."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import config_from_dict
from pipeline.core.read import read_parquet
from pipeline.core.write import write_parquet
from pipeline.edits.caption import CaptionCache, cache_settings_hash, row_key
from pipeline.edits.run import STAGES, check_from_stage
from pipeline.edits.state import StageState
from pipeline.errors import ConfigError


def test_caption_cache_appends_parts_and_reloads(tmp_path):
    cache = CaptionCache(tmp_path / "captions")
    cache.put("/d/a.png", "k1", "a photo of a tench")
    cache.put("/d/b.png", "k1", "a photo of a tench, wet")
    assert cache.flush() == 2 and cache.flush() == 0
    cache.put("/d/a.png", "k2", "other settings, other caption")
    cache.flush()
    again = CaptionCache(tmp_path / "captions")
    assert len(list((tmp_path / "captions").glob("part-*.parquet"))) == 2
    assert again.get("/d/a.png",
                     "k1") == "a photo of a tench" and again.get("/d/a.png", "k2").startswith("other")
    assert again.get("/d/c.png", "k1") is None and len(again) == 3
    key = {"input:fingerprint": "fp1", "input:data_root": "/d", "input:class_names": {"0": "zero"},
           "models.vlm": "zoo:vlm", "edits.caption_max_tokens": 77}
    # the cache key ignores which images there are (captions are per image) but not the captioner
    assert cache_settings_hash(key) == cache_settings_hash({**key, "input:fingerprint": "fp2",
                                                            "input:data_root": "/e"})
    assert cache_settings_hash(key) != cache_settings_hash({**key, "models.vlm": "other"})
    assert row_key("h", "tench") != row_key("h", "dingo")


def test_parquet_round_trip_keeps_feature_matrices(tmp_path):
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_parquet(tmp_path / "f.parquet", {"path": ["a", "b", "c"], "label": np.array([0, 1, 2]),
                                           "img": feats, "kept": np.array([True, False, True])})
    back = read_parquet(tmp_path / "f.parquet")
    np.testing.assert_array_equal(back["img"], feats)
    assert back["path"].tolist() == ["a", "b", "c"] and back["label"].tolist() == [0, 1, 2]
    assert back["kept"].tolist() == [True, False, True]
    assert not list(tmp_path.glob("*.tmp"))


def test_stage_state_new_partial_done_stale(tmp_path):
    cleared = []
    s = StageState(tmp_path, "cluster", {"tau": 0.01})
    assert s.status() == "new"
    s.begin(lambda: cleared.append("new"))
    assert s.status() == "partial" and cleared == ["new"]
    s.begin(lambda: cleared.append("resume"))  # same settings, incomplete: resume, keep outputs
    assert cleared == ["new"]
    s.finish({"clusters": 3})
    assert s.status() == "done" and s.read()["info"] == {"clusters": 3}
    s.begin(lambda: cleared.append("forced"), force=True)
    assert cleared == ["new", "forced"]
    other = StageState(tmp_path, "cluster", {"tau": 0.5})
    assert other.status() == "stale"
    other.begin(lambda: cleared.append("stale"))
    assert cleared[-1] == "stale"


def test_from_stage_names_and_order():
    assert STAGES == ("caption", "embed", "cluster", "finetune", "prototype", "generate")
    assert check_from_stage(None) is None and check_from_stage("prototype") == 4
    with pytest.raises(ConfigError, match="--from-stage must be one of"):
        check_from_stage("buffer")


def test_stage_keys_chain_downstream(tmp_path):
    from types import SimpleNamespace

    from pipeline.core.keys import settings_hash
    from pipeline.edits.run import run_stage_keys

    def keys(**edits):
        cfg = config_from_dict({"method": "edits", "edits": edits})
        run = SimpleNamespace(cfg=cfg, fingerprint="fp", names={"0": "zero"},
                              index=SimpleNamespace(root=str(tmp_path)))
        return run_stage_keys(run)

    base, tau, llm = keys(), keys(tau=0.5), keys(strength=0.5)
    assert base["caption"] == tau["caption"] and base["embed"] == tau["embed"]
    assert settings_hash(base["cluster"]) != settings_hash(tau["cluster"])
    assert settings_hash(base["generate"]) != settings_hash(tau["generate"])  # through the prototype hash
    assert base["prototype"] == llm["prototype"] and base["generate"] != llm["generate"]
    ft = keys(finetune={"enabled": True}, vae_source="sd")
    assert ft["prototype"]["image"]["input:prototype_vae"] == {"finetuned": settings_hash(ft["finetune"])}
