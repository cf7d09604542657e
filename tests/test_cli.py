"""The command line's user errors, help and program name (``broker_plugin.__main__``, ``broker_plugin.cli``).

A user error is one ``error:`` line on stderr and exit status 2, without a traceback unless ``--debug``
(or the DEBUG log level) asks for one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker_plugin.__main__ import main
from broker_plugin.cli import plain_text, program_name
from broker_plugin.commands.demo import DEMO_DATA
from broker_plugin.config import settings_rows

ROOT = Path(__file__).resolve().parents[1]
ALERTS = sorted(DEMO_DATA.glob("*.avro"))[0]  # real simulated Rubin alerts, as shipped
INVALID = "error: BROKER_PLUGIN_MODEL__MIN_FRAMES='abc': Input should be a valid integer"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No BROKER_PLUGIN_* variable and no .env file (the working directory is an empty folder)."""
    for key in list(os.environ):
        if key.startswith("BROKER_PLUGIN_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def subprocess_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_PLUGIN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env | settings


def run_cli(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker_plugin", *args], cwd=cwd, env=subprocess_env(**settings),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_an_invalid_setting_is_one_line_naming_its_variable(tmp_path: Path) -> None:
    result = run_cli("classify", str(ALERTS), cwd=tmp_path, BROKER_PLUGIN_MODEL__MIN_FRAMES="abc")
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(INVALID)


def test_every_invalid_setting_gets_its_own_line(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_PLUGIN_MODEL__MIN_FRAMES", "abc")
    monkeypatch.setenv("BROKER_PLUGIN_MODEL__DEVICE", "gpu")
    monkeypatch.setenv("BROKER_PLUGIN_LOG_LEVEL", "chatty")
    assert main(["inspect", str(ALERTS)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 3 and "Traceback" not in captured.err
    assert any(line.startswith(INVALID) for line in lines)
    assert "error: BROKER_PLUGIN_MODEL__DEVICE='gpu': Input should be 'auto', 'cpu' or 'cuda'" in lines
    level = "error: BROKER_PLUGIN_LOG_LEVEL='chatty': unknown log level"
    assert any(line.startswith(level) for line in lines)


def test_an_invalid_value_in_the_env_file_is_named_the_same_way(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (clean_env / ".env").write_text("BROKER_PLUGIN_MODEL__MIN_FRAMES=abc\n")
    assert main(["inspect", str(ALERTS)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(INVALID)


def test_debug_shows_the_traceback_before_the_line(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_PLUGIN_MODEL__MIN_FRAMES", "abc")
    for argv in (["--debug", "inspect", str(ALERTS)], ["inspect", "--debug", str(ALERTS)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):")
        assert "pydantic_core._pydantic_core.ValidationError" in err
        assert err.splitlines()[-1].startswith(INVALID)


def test_a_secret_value_is_never_shown(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_PLUGIN_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("BROKER_PLUGIN_KAFKA__SECURITY_PROTOCOL", "TLS")
    assert main(["inspect", str(ALERTS)]) == 2
    err = capsys.readouterr().err
    assert "BROKER_PLUGIN_KAFKA__SECURITY_PROTOCOL='TLS'" in err and "hunter2" not in err


def test_a_missing_model_artifact_is_one_line_for_classify(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = clean_env / "no-model"
    monkeypatch.setenv("BROKER_PLUGIN_MODEL__ARTIFACT", str(missing))
    assert main(["classify", str(ALERTS)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"error: no model artifact at {missing} (BROKER_PLUGIN_MODEL__ARTIFACT): ")
    assert "not a model artifact" in line


def test_a_tampered_model_artifact_is_one_line_for_demo(
    clean_env: Path, model_artifact: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    copy = clean_env / "model"
    shutil.copytree(model_artifact, copy)
    member = next(copy.glob("*.safetensors"))
    member.write_bytes(member.read_bytes()[:-1] + b"\0")
    monkeypatch.setenv("BROKER_PLUGIN_MODEL__ARTIFACT", str(copy))
    assert main(["demo"]) == 2  # refused before the embedded broker starts
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: unusable model artifact at {copy} (BROKER_PLUGIN_MODEL__ARTIFACT): ")
    assert "SHA-256" in line


def test_run_with_a_missing_model_artifact_exits_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-model"
    settings = {"BROKER_PLUGIN_MODEL__ARTIFACT": str(missing), "BROKER_PLUGIN_METRICS__ENABLED": "false"}
    result = run_cli("run", cwd=tmp_path, **settings)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: no model artifact at {missing} (BROKER_PLUGIN_MODEL__ARTIFACT): ")


def test_the_debug_log_level_shows_the_traceback_too(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_PLUGIN_MODEL__ARTIFACT", str(clean_env / "no-model"))
    monkeypatch.setenv("BROKER_PLUGIN_LOG_LEVEL", "debug")
    assert main(["classify", str(ALERTS)]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and "ArtifactMissingError" in err
    assert err.splitlines()[-1].startswith("error: no model artifact at ")


def test_a_path_that_does_not_exist_is_one_line(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(clean_env / "nothing.avro")]) == 2
    assert capsys.readouterr().err == f"error: {clean_env / 'nothing.avro'} does not exist\n"


def test_run_help_lists_every_setting_in_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "BROKER_PLUGIN_KAFKA__BOOTSTRAP_SERVERS (default: localhost:9092)" in text
    for variable, _default, _meaning in settings_rows():
        assert variable in text
    words = " ".join(text.split())  # the meanings are wrapped
    assert "Frames an object needs before it is classified [count]." in words


@pytest.mark.parametrize("command", [[], ["run"], ["demo"], ["replay"], ["inspect"], ["classify"]])
def test_help_is_plain_text(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = capsys.readouterr().out
    assert "``" not in text and not re.search(r":(class|func|mod|meth):", text)
    assert "--debug" in text


def test_help_names_the_program_as_invoked(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: python -m broker_plugin [-h]")
    assert "__main__.py" not in result.stdout


def test_program_name() -> None:
    assert program_name("broker_plugin", "broker-plugin", "/venv/bin/broker-plugin") == "broker-plugin"
    assert (
        program_name("broker_plugin", "broker-plugin", "/site/broker_plugin/__main__.py")
        == "python -m broker_plugin"
    )


def test_plain_text_drops_rest_markup() -> None:
    text = "``python -m x`` and :class:`~broker_plugin.cli.UserError`, :func:`broker_plugin.cli.plain_text`"
    assert plain_text(text) == "python -m x and UserError, broker_plugin.cli.plain_text"
    assert plain_text(":mod:`broker_plugin.commands.offline`") == "broker_plugin.commands.offline"
