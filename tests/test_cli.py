"""CLI: help lists every command; data demo / zoo build work offline; errors are one clean line."""

import subprocess
import sys

from pipeline.cli import build_parser, main

COMMANDS = ["data", "zoo", "run", "demo", "eval", "sweep", "submit"]


def test_help_lists_commands(capsys):
    help_text = build_parser().format_help()
    for cmd in COMMANDS:
        assert f"    {cmd} " in help_text
    assert "zoo:<role>" in help_text


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True,
                         check=True)
    assert "semdistill" in out.stdout and "run" in out.stdout


def test_data_demo_command(tmp_path, capsys):
    assert main(["data", "demo", "--out", str(tmp_path / "d")]) == 0
    assert "1438 train + 359 val" in capsys.readouterr().out
    assert len(list((tmp_path / "d" / "train" / "7").glob("*.png"))) > 100


def test_zoo_build_and_list(zoo_dir, capsys):
    assert main(["zoo", "build", "--roles", "clip", "vae"]) == 0
    out = capsys.readouterr().out
    assert "clip      cached" in out and "vae       cached" in out
    assert main(["zoo", "list"]) == 0
    assert "dit       built" in capsys.readouterr().out


def test_config_error_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: diver\nedits:\n  ipcc: 3\n")
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "edits.ipcc: unknown key" in err and "Traceback" not in err


def test_print_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: edits\n")
    assert main(["run", str(cfg), "edits.ipc=4", "--print-config"]) == 0
    assert "ipc: 4" in capsys.readouterr().out
