"""`semdistill eval`: a preset that sets the protocol is resolved before the protocol is read."""

import argparse

import yaml

import tuning.evaluate
from tuning import eval_cmd


def test_a_soft_label_preset_from_the_config_gets_the_real_train_set(tmp_path, monkeypatch):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "train")}, "eval": {"preset": "rded"}}))
    seen = {}

    def fake_evaluate_sets(sets, real, ev, out, train_root=None, ray_cfg=None):
        seen.update(protocol=ev.protocol, train_root=train_root, optimizer=ev.optimizer)
        return []

    monkeypatch.setattr(tuning.evaluate, "evaluate_sets", fake_evaluate_sets)
    monkeypatch.setattr(tuning.evaluate, "results_markdown", lambda rows: "")
    args = argparse.Namespace(config=str(cfg), overrides=[], students=eval_cmd.CLI_DEFAULT_STUDENTS,
                              distilled=str(tmp_path / "set"), real=str(tmp_path / "val"), out=None,
                              train=None)
    assert eval_cmd.main(args) == 0
    assert seen == {"protocol": "soft", "train_root": str(tmp_path / "train"), "optimizer": "adamw"}
