"""Metric and label names used in PromQL expressions (rules, dashboard), for checks against the service."""

from __future__ import annotations

import re

_METRIC = re.compile(r"\b(broker_plugin_[a-z0-9_]+)\b")
_GROUPING = re.compile(r"\b(?:by|without|ignoring|on)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
#: Labels Prometheus adds to every scraped series, plus histogram buckets.
TARGET_LABELS = {"instance", "job", "le", "namespace", "pod", "service", "container", "endpoint"}


def metric_names(expr: str) -> set[str]:
    """``broker_plugin_*`` series names in an expression."""
    return set(_METRIC.findall(expr))


def label_names(expr: str) -> set[str]:
    """Label names used for grouping, matching or in selectors."""
    names: set[str] = set()
    for group in _GROUPING.findall(expr):
        names |= {name.strip() for name in group.split(",") if name.strip()}
    names |= set(_MATCHER.findall(expr))
    return names


def dashboard_exprs(dashboard: dict) -> list[str]:
    """Every query of every panel (rows included) and templating variable."""
    exprs: list[str] = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            exprs.extend(target["expr"] for target in panel.get("targets", []) if "expr" in target)
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def concrete(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, for a real Prometheus to evaluate."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$__interval", "15s")
        .replace("$instance", ".*")
    )
