"""Prometheus files checked by the real tools (promtool) and a real Prometheus scraping a plugin endpoint."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from broker_plugin.metrics import REJECTION_REASONS, Health, MetricsServer, ServiceMetrics
from tests.deploy.conftest import DEPLOY, exported_series_names, metric_families, require_tool
from tests.deploy.promql import TARGET_LABELS, concrete, dashboard_exprs, label_names, metric_names

PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "rules" / "broker-plugin.rules.yml"
RULE_TESTS = PROMETHEUS / "tests" / "broker-plugin.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "broker-plugin.json"


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_promtool_check_config() -> None:
    result = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_promtool_rule_unit_tests() -> None:
    """Each alert fires on synthetic series shaped like the plugin's, and stays quiet when it should."""
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_prometheusrule_has_the_same_rules(tmp_path: Path) -> None:
    rule = yaml.safe_load((DEPLOY / "k8s" / "base" / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    extracted = tmp_path / "operator.rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = promtool("check", "rules", extracted)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_cover_the_required_alerts() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    names = {rule["alert"] for group in groups for rule in group["rules"]}
    assert {
        "BrokerPluginConsumerLagGrowing",
        "BrokerPluginDeadLetterRate",
        "BrokerPluginNoClassifications",
        "BrokerPluginLatencyP99OverBudget",
        "BrokerPluginInternalErrors",
        "BrokerPluginKafkaDisconnected",
    } <= names


def test_rules_and_dashboard_use_only_exported_metrics_and_labels() -> None:
    series = exported_series_names()
    labels = set().union(*metric_families().values()) | TARGET_LABELS
    exprs = rule_exprs() + dashboard_exprs(json.loads(DASHBOARD.read_text()))
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert used, "no broker_plugin_* metric found in the expressions"
    assert used <= series, f"not exported by broker_plugin.metrics: {sorted(used - series)}"
    used_labels = set().union(*(label_names(expr) for expr in exprs))
    assert used_labels <= labels, f"unknown labels: {sorted(used_labels - labels)}"
    # the rule tests feed series with real label values
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for item in test["input_series"]:
            name = item["series"].split("{")[0]
            assert name == "up" or name in series, name
            for reason in re.findall(r'reason="([^"]+)"', item["series"]):
                assert reason in REJECTION_REASONS, reason


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _api(base: str, path: str, **params: str) -> dict:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def _wait(predicate, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = predicate()
        except (OSError, AssertionError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for Prometheus")
        time.sleep(0.25)


@pytest.fixture
def plugin_endpoint():
    """A plugin metrics endpoint with some traffic recorded, as the running service would serve it."""
    metrics = ServiceMetrics(class_names=["AGN", "SNIa", "SNII"])
    health = Health()
    metrics.alerts_consumed.inc(120)
    metrics.alerts_rejected.labels(reason="unknown_schema").inc(2)
    metrics.frames_stored.inc(118)
    metrics.classifications_published.labels(predicted_class="SNIa").inc(40)
    metrics.consumer_lag.labels(topic="alerts", partition="0").set(17)
    metrics.consumer_lag.labels(topic="alerts", partition="1").set(3)
    metrics.alert_latency.observe(0.2)
    metrics.inference_duration.observe(0.03)
    metrics.inference_batch_size.observe(16)
    metrics.objects_tracked.set(55)
    server = MetricsServer(metrics, health, "127.0.0.1", 0).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_real_prometheus_scrapes_the_plugin(tmp_path: Path, plugin_endpoint: MetricsServer) -> None:
    binary = require_tool("prometheus")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(RULES.read_text())
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    # the compose file discovers replicas by DNS; here the one endpoint is static, same job name
    config["scrape_configs"][0] = {
        "job_name": "broker-plugin",
        "static_configs": [{"targets": [f"127.0.0.1:{plugin_endpoint.port}"]}],
    }
    port = _free_port()
    config["scrape_configs"][1]["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        up = _wait(lambda: _api(base, "query", query='up{job="broker-plugin"} == 1')["result"])
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{plugin_endpoint.port}"

        names = set(_api(base, "label/__name__/values", **{"match[]": '{job="broker-plugin"}'}))
        assert exported_series_names() <= names, sorted(exported_series_names() - names)

        consumed = _api(base, "query", query="broker_plugin_alerts_consumed_total")["result"]
        assert float(consumed[0]["value"][1]) == 120

        rejected = _api(base, "series", **{"match[]": "broker_plugin_alerts_rejected_total"})
        assert {series["reason"] for series in rejected} == set(REJECTION_REASONS)
        lag = _api(base, "query", query="broker_plugin_consumer_lag_messages")["result"]
        partitions = {(s["metric"]["topic"], s["metric"]["partition"]) for s in lag}
        assert partitions == {("alerts", "0"), ("alerts", "1")}
        published = _api(base, "series", **{"match[]": "broker_plugin_classifications_published_total"})
        assert {series["predicted_class"] for series in published} == {"AGN", "SNIa", "SNII"}

        # the alert rules load and evaluate against the real series
        def rules_evaluated() -> list[dict]:
            rules = [r for g in _api(base, "rules")["groups"] for r in g["rules"]]
            evaluated = all(r.get("lastEvaluation", "0001").startswith("2") for r in rules)
            return rules if len(rules) == 8 and evaluated else []

        rules = _wait(rules_evaluated)
        assert all(rule["health"] == "ok" for rule in rules), rules

        # every dashboard query is valid PromQL for this Prometheus and finds the plugin's series
        for expr in dashboard_exprs(json.loads(DASHBOARD.read_text())):
            if expr.startswith("label_values("):
                continue
            _api(base, "query", query=concrete(expr))
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
