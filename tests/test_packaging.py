"""The package works where users install it: a wheel in a fresh virtual environment, run from elsewhere.

The wheel is built from a copy of the sources and installed with ``--no-deps`` into a new venv whose only
extra is a ``.pth`` line naming this environment's site-packages, so the dependencies (torch, ...) come
from what is already installed instead of being downloaded again; the package itself, its data and its
console scripts come only from the wheel. Everything then runs from a folder outside the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "broker_plugin", "broker_plugin_train"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        cwd=out,
    )
    (built,) = out.glob("broker_plugin-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; its ``bin`` folder."""
    env = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # Dependencies from this environment, after the venv's own site-packages (the wheel wins).
    (Path(purelib) / "_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
    )
    return env / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_PLUGIN_", "PYTHONPATH"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_wheel_holds_the_data_and_no_generic_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"broker_plugin", "broker_plugin_train"}
    assert "broker_plugin/schemas/1/0/broker_plugin.v1_0.classification.avsc" in names
    assert "broker_plugin/schemas/1/0/sample_data/classification.json" in names
    assert "broker_plugin/models/convention-default/SHA256SUMS" in names
    assert any(name.startswith("broker_plugin/models/convention-default/member-") for name in names)
    assert "broker_plugin/demo_data/truth.csv" in names
    assert "broker_plugin_train/configs/default.toml" in names
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "broker-plugin = broker_plugin.__main__:main" in scripts
    assert "broker-plugin-train = broker_plugin_train.__main__:main" in scripts


def test_installed_package_is_the_wheel_and_finds_its_data(installed: Path, tmp_path: Path) -> None:
    code = (
        "import json, broker_plugin, broker_plugin_train, importlib.util\n"
        "from broker_plugin.config import Settings\n"
        "from broker_plugin.serde.classifications import classification_schema, schema_path\n"
        "from broker_plugin_train.config import load_config\n"
        "classification_schema()\n"
        "print(json.dumps({'package': broker_plugin.__file__, 'schema': str(schema_path()),\n"
        "  'artifact': str(Settings().model.artifact),\n"
        "  'train_top_level': importlib.util.find_spec('train') is not None,\n"
        "  'config_net': load_config('default').training.net.name}))\n"
    )
    result = _run(installed, "python", "-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    env = str(installed.parent)
    assert found["package"].startswith(env) and found["schema"].startswith(env)
    assert found["artifact"].startswith(env) and Path(found["artifact"], "SHA256SUMS").is_file()
    assert found["train_top_level"] is False
    assert found["config_net"].startswith("convention")


def test_console_scripts_answer_help(installed: Path, tmp_path: Path) -> None:
    for script in ("broker-plugin", "broker-plugin-train"):
        result = _run(installed, script, "--help", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout


def test_classify_runs_from_outside_the_repository(installed: Path, tmp_path: Path) -> None:
    demo = ROOT / "broker_plugin" / "demo_data"
    alerts = tmp_path / "alerts"
    alerts.mkdir()
    for path in sorted(demo.glob("alerts-*.avro"))[:4]:
        shutil.copy2(path, alerts / path.name)
    result = _run(installed, "broker-plugin", "classify", str(alerts), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stdout
    assert all(abs(sum(c["probability"] for c in line["classes"]) - 1) < 1e-4 for line in lines)


@pytest.mark.integration
def test_service_demo_runs_from_outside_the_repository(installed: Path, tmp_path: Path) -> None:
    """``demo``: embedded broker, replay, the service with the bundled model, its outputs read back."""
    result = _run(installed, "broker-plugin", "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "classifications" in result.stdout
