"""Config: YAML + dotted overrides, validation messages that name the bad key."""

from pathlib import Path

import pytest

from pipeline.config import apply_overrides, dump_config, load_config
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_papers_read_values():
    cfg = load_config(None)
    e, d = cfg.edits, cfg.diver
    assert (e.ipc, e.seed, e.tau, e.k_image, e.k_text, e.max_tokens) == (10, 42, 0.01, 5, 5, 77)
    assert (e.strength, e.guidance_scale, e.contamination, e.feature_image_size) == (0.7, 10.0, 0.0, 224)
    assert e.negative_prompt == "cartoon, anime, painting"
    assert (d.start_step, d.gamma, tuple(d.fusion_window), d.cfg_scale) == (25, 0.1, (40, 25), 4.0)
    assert cfg.models.dit == "facebook/DiT-XL-2-256"


def test_yaml_and_dotted_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method: edits\nedits:\n  ipc: 3\noutput:\n  dir: runs/a\n")
    cfg = load_config(p, ["output.dir=runs/demo1", "edits.ipc=10", "edits.tau=0.05",
                          "diver.fusion_window=[30,20]"])
    # resolved against the cwd (test_config_paths.py)
    assert cfg.output.dir == str(Path.cwd() / "runs" / "demo1")
    assert cfg.edits.ipc == 10 and cfg.edits.tau == 0.05
    assert tuple(cfg.diver.fusion_window) == (30, 20)
    assert cfg.method == "edits"


def test_override_creates_optional_section():
    cfg = load_config(None, ["eval.epochs=5"])
    assert cfg.eval is not None and cfg.eval.epochs == 5


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"edits\.ipcc: unknown key"):
        load_config(None, ["edits.ipcc=3"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"edits\.ipc: .*integer"):
        load_config(None, ["edits.ipc=ten"])


def test_range_checks():
    with pytest.raises(ConfigError, match=r"edits\.strength"):
        load_config(None, ["edits.strength=1.5"])
    with pytest.raises(ConfigError, match="fusion_window"):
        load_config(None, ["diver.fusion_window=[10,30]"])
    with pytest.raises(ConfigError, match="start_step"):
        load_config(None, ["diver.start_step=50"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("edits: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["edits.ipc"])


def test_apply_overrides_does_not_mutate_input():
    raw = {"edits": {"ipc": 1}}
    out = apply_overrides(raw, ["edits.ipc=2"])
    assert raw == {"edits": {"ipc": 1}} and out == {"edits": {"ipc": 2}}


def test_dump_roundtrip(tmp_path):
    cfg = load_config(None, ["edits.ipc=7", "name=x"])
    p = tmp_path / "dump.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    load_config(path)


def test_set_dotted_creates_sections_and_names_the_bad_part():
    from pipeline.config import set_dotted

    raw = {"edits": {"ipc": 1}, "diver": None}
    set_dotted(raw, "edits.finetune.enabled", True)
    set_dotted(raw, ["diver", "gamma"], 0.3)
    set_dotted(raw, "name", "x")
    assert raw == {"edits": {"ipc": 1, "finetune": {"enabled": True}}, "diver": {"gamma": 0.3}, "name": "x"}
    with pytest.raises(ConfigError, match=r"^sweep param 'edits.ipc.x': 'ipc' is not a config section$"):
        set_dotted(raw, "edits.ipc.x", 1, what="sweep param 'edits.ipc.x'")
    with pytest.raises(ConfigError, match="override 'name.a=1': 'name' is not a config section"):
        apply_overrides(raw, ["name.a=1"])
