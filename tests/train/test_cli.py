"""``broker_plugin_train``'s command line: one-line config errors, help that documents the overrides."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker_plugin_train.__main__ import main, parse
from broker_plugin_train.config import bundled_configs, load_config

ROOT = Path(__file__).resolve().parents[2]
SMALL = str(ROOT / "broker_plugin_train" / "configs" / "small.toml")


def only_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    (line,) = captured.err.splitlines()
    return line


def test_a_missing_config_file_is_one_line_listing_the_bundled_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pretrain", "--config", str(tmp_path / "nope.toml")]) == 2
    names = ", ".join(sorted(bundled_configs()))
    assert only_line(capsys) == (
        f"error: config file {tmp_path / 'nope.toml'} not found (give a path, or a bundled config: {names})"
    )


def test_a_bundled_config_is_found_by_its_name() -> None:
    _, config = parse(["pretrain", "--config", "small"])
    assert config == load_config(SMALL)


def test_a_malformed_override_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "--config", SMALL, "training.seed=3"]) == 2
    assert only_line(capsys) == (
        "error: expected --dotted.key=value (e.g. --training.seed=7), got 'training.seed=3'"
    )


def test_an_invalid_override_value_is_one_line_naming_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "--config", SMALL, "--training.pretrain.epochs=abc"]) == 2
    assert only_line(capsys).startswith(
        "error: --training.pretrain.epochs='abc': Input should be a valid integer"
    )


def test_an_unknown_key_is_one_line_per_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--config", SMALL, "--simulation.sead=7", "--training.pretrain.epochs=-1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert "error: --simulation.sead=7: unknown key (a typo? see the bundled configs for every key)" in lines
    assert any(line.startswith("error: --training.pretrain.epochs=-1: Input should be") for line in lines)


def test_an_invalid_value_in_the_file_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mine.toml"
    config.write_text('[training.pretrain]\nepochs = "many"\n')
    assert main(["pretrain", "--config", str(config)]) == 2
    line = only_line(capsys)
    assert line.startswith(f"error: training.pretrain.epochs='many' in {config}: Input should be")
    config.write_text("[training\n")
    assert main(["pretrain", "--config", str(config)]) == 2
    assert only_line(capsys).startswith(f"error: config file {config}: ")


def test_debug_adds_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--debug", "pretrain", "--config", "nope"], ["pretrain", "--debug", "--config", "nope"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):") and "ConfigError" in err
        assert err.splitlines()[-1].startswith("error: config file nope not found")


def test_help_documents_the_override_syntax_and_the_bundled_configs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["--help"], ["pretrain", "--help"], ["simulate", "--help"], ["ablation", "--help"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
        text = capsys.readouterr().out
        words = " ".join(text.split())  # argparse wraps lines
        assert "--dotted.key=value" in words
        assert "--training.pretrain.epochs=3 --simulation.seed=7" in text
        assert f"bundled config: {', '.join(sorted(bundled_configs()))}" in words
        assert "``" not in text and not re.search(r":(class|func|mod|meth):", text)


def test_help_names_the_program_as_invoked(tmp_path: Path) -> None:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-m", "broker_plugin_train", "pretrain", "--help"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m broker_plugin_train pretrain [-h] --config")
