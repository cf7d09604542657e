"""Shared helpers for the deployment checks: paths, the generator module, metric and setting names."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from broker_plugin.config import settings_rows
from broker_plugin.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def load_env_module() -> ModuleType:
    """``deploy/env.py`` (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("deploy_env", DEPLOY / "env.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metric_families() -> dict[str, set[str]]:
    """Every metric the service exports (name without suffixes), with its label names."""
    from prometheus_client.metrics import MetricWrapperBase

    metrics = ServiceMetrics(class_names=["SNIa"])
    return {
        metric._name: set(metric._labelnames)  # private in prometheus_client
        for metric in vars(metrics).values()
        if isinstance(metric, MetricWrapperBase)
    }


def exported_series_names() -> set[str]:
    """Every series name a scrape can return (counters with ``_total``, histogram ``_bucket`` etc.)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in ServiceMetrics(class_names=["SNIa"]).registry.collect():
        names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def setting_variables() -> set[str]:
    """Every ``BROKER_PLUGIN_*`` variable ``Settings`` reads."""
    return {var for var, _, _ in settings_rows()}


#: The oldest kubectl whose built-in kustomize reads the base's ``labels:`` field (kustomize v4.2).
KUBECTL_MIN = (1, 22)


def require_tool(name: str) -> str:
    """The tool's path; skip, saying why, when it is not installed (or, for kubectl, too old)."""
    path = shutil.which(name)
    if path is None:
        how = (
            "Debian packages it as kubernetes-client, but bookworm's 1.20 is too old for the kustomization;"
            " install kubectl >= 1.22 from the Kubernetes apt repository"
            if name == "kubectl"
            else "`make system-deps` as root installs it from Debian"
        )
        pytest.skip(f"{name} is not installed ({how})")
    if name == "kubectl":
        version = subprocess.run([path, "version", "--client"], capture_output=True, text=True, check=False)
        minor = re.search(r'Major:"(\d+)", Minor:"(\d+)', version.stdout) or re.search(
            r"Client Version: v(\d+)\.(\d+)", version.stdout
        )
        if minor is None or (int(minor[1]), int(minor[2])) < KUBECTL_MIN:
            pytest.skip(f"kubectl at {path} is older than 1.22 (its kustomize cannot read `labels:`)")
    return path
