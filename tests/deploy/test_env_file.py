"""The committed environment file is exactly what ``Settings`` generates, and reads back as the defaults."""

from __future__ import annotations

import os
import re

import pytest

from broker_plugin.config import Settings
from tests.deploy.conftest import DEPLOY, load_env_module, setting_variables

ENV_FILE = DEPLOY / "broker-plugin.env.example"


def test_env_file_is_current() -> None:
    assert ENV_FILE.read_text() == load_env_module().render(), "run: python deploy/env.py"


def test_env_file_lists_every_setting_once() -> None:
    names = re.findall(r"^#?(BROKER_PLUGIN_\w+)=", ENV_FILE.read_text(), flags=re.MULTILINE)
    assert len(names) == len(set(names))
    assert set(names) == setting_variables()


def test_secrets_are_blank() -> None:
    text = ENV_FILE.read_text()
    for var in ("BROKER_PLUGIN_KAFKA__SASL_PASSWORD", "BROKER_PLUGIN_SCHEMA_REGISTRY__PASSWORD"):
        assert re.search(rf"^#{var}=$", text, flags=re.MULTILINE), var


def test_env_file_reads_back_as_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("BROKER_PLUGIN_"):
            monkeypatch.delenv(key)
    assert Settings(_env_file=ENV_FILE) == Settings(_env_file=None)


def test_check_mode_detects_drift(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_env_module()
    assert module.main(["--check"]) == 0
    stale = tmp_path / "stale.env"
    stale.write_text("BROKER_PLUGIN_LOG_LEVEL=INFO\n")
    monkeypatch.setattr(module, "ENV_FILE", stale)
    assert module.main(["--check"]) == 1
