"""Compose, Kubernetes, Grafana and Dockerfile: parsed, linted and rendered by the real tools present here."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, ROOT, require_tool, setting_variables

COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "broker-plugin.json"
DOCKERFILE = DEPLOY / "Dockerfile"
METRICS_PORT = 9108


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*map(str, args)], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


def yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def variables_in(mapping: dict) -> set[str]:
    return {key for key in mapping if key.startswith("BROKER_PLUGIN_")}


# ---- every file -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", all_yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert yaml_documents(path)


def test_yamllint() -> None:
    result = run(require_tool("yamllint"), "-s", "-c", DEPLOY / ".yamllint.yaml", DEPLOY)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- compose ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_docker_compose_config_validates() -> None:
    """docker-compose validates the file against its schema and resolves anchors without an engine."""
    result = run(require_tool("docker-compose"), "-f", COMPOSE, "config", "-q")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_stack(compose: dict) -> None:
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["postgres"]["image"].startswith("postgres:")
    plugin = services["broker-plugin"]
    assert plugin["deploy"]["replicas"] == 2
    assert plugin["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / plugin["build"]["context"] / plugin["build"]["dockerfile"]).resolve() == DOCKERFILE
    env = plugin["environment"]
    assert env["BROKER_PLUGIN_STATE__URL"].startswith("postgresql://")  # shared by the replicas
    assert env["BROKER_PLUGIN_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert int(env["BROKER_PLUGIN_METRICS__PORT"]) == METRICS_PORT
    assert {"prometheus", "grafana"} <= set(services)


def test_compose_replay_is_a_one_shot_of_the_bundled_alerts(compose: dict) -> None:
    replay = compose["services"]["replay"]
    command = replay["command"]
    assert command[0] == "replay"
    # The bundled alerts, where the image's non-editable install puts the package.
    assert command[1] == "/opt/venv/lib/python3.11/site-packages/broker_plugin/demo_data"
    assert (ROOT / "broker_plugin" / "demo_data" / "truth.csv").is_file()
    assert "python -m venv /opt/venv" in DOCKERFILE.read_text() and "3.11-slim" in DOCKERFILE.read_text()
    topic = command[command.index("--topic") + 1]
    assert topic == compose["services"]["broker-plugin"]["environment"]["BROKER_PLUGIN_KAFKA__INPUT_TOPICS"]
    assert replay["restart"] == "no"


def test_compose_uses_only_existing_settings(compose: dict) -> None:
    used: set[str] = set()
    for service in compose["services"].values():
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        used |= variables_in(environment)
    assert used
    assert used <= setting_variables(), sorted(used - setting_variables())


def test_compose_mounts_exist(compose: dict) -> None:
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source


def test_prometheus_scrapes_the_compose_replicas() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "broker-plugin")
    assert job["dns_sd_configs"][0]["names"] == ["broker-plugin"]
    assert job["dns_sd_configs"][0]["port"] == METRICS_PORT


def test_grafana_provisioning(compose: dict) -> None:
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/broker-plugin.yaml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("."))
    assert mounts["./grafana/dashboards"] == providers["providers"][0]["options"]["path"]


# ---- Grafana dashboard ------------------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "broker-plugin" and dashboard["title"]
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    queries = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    # what the issue asks to see: throughput, lag, latency percentiles, dead-letter reasons, class mix
    assert "rate(broker_plugin_alerts_consumed_total" in queries
    assert "broker_plugin_consumer_lag_messages" in queries
    assert "histogram_quantile(0.99, sum by (le) (rate(broker_plugin_alert_latency_seconds_bucket" in queries
    assert "sum by (reason) (rate(broker_plugin_alerts_rejected_total" in queries
    assert "sum by (predicted_class) (rate(broker_plugin_classifications_published_total" in queries


# ---- Kubernetes -------------------------------------------------------------------------------------------


def k8s_objects(folder: str) -> dict[str, dict]:
    objects: dict[str, dict] = {}
    for path in sorted((K8S / folder).glob("*.yaml")):
        for doc in yaml_documents(path):
            objects[doc["kind"]] = doc
    return objects


def secret_example() -> dict:
    (secret,) = yaml_documents(K8S / "secret.example.yaml")
    return secret


@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_kustomize_renders(overlay: str) -> None:
    """kubectl kustomize: every object but the Secret, which the operator creates (never overwritten)."""
    result = run(require_tool("kubectl"), "kustomize", K8S / overlay)
    assert result.returncode == 0, result.stderr
    rendered = {doc["kind"]: doc for doc in yaml.safe_load_all(result.stdout)}
    assert {"Deployment", "ConfigMap", "Service", "ServiceMonitor", "PrometheusRule"} <= set(rendered)
    assert "Secret" not in rendered  # `kubectl apply -k` must not replace real credentials with placeholders
    container = rendered["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    if overlay == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert rendered["ConfigMap"]["data"]["BROKER_PLUGIN_MODEL__DEVICE"] == "cuda"
        assert container["image"].endswith("-cuda")
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"  # the base survives the patch


def test_deployment() -> None:
    objects = k8s_objects("base")
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > 30  # the service's shutdown timeout
    assert container["ports"][0]["containerPort"] == METRICS_PORT
    refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert refs == {objects["ConfigMap"]["metadata"]["name"], secret_example()["metadata"]["name"]}
    assert "partitions" in (K8S / "base" / "deployment.yaml").read_text()  # replicas vs partitions explained


def test_gpu_patch() -> None:
    patch = k8s_objects("gpu")["Deployment"]
    limits = patch["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1


def test_k8s_settings_exist_and_secrets_are_in_the_secret() -> None:
    objects = k8s_objects("base")
    config, secret = objects["ConfigMap"]["data"], secret_example()["stringData"]
    assert all(isinstance(value, str) for value in config.values())  # ConfigMap values must be strings
    used = variables_in(config) | variables_in(secret)
    assert used <= setting_variables(), sorted(used - setting_variables())
    assert {"BROKER_PLUGIN_KAFKA__SASL_PASSWORD", "BROKER_PLUGIN_STATE__URL"} <= set(secret)
    assert not {key for key in config if "PASSWORD" in key or key.endswith("STATE__URL")}


def test_service_monitor_selects_the_service() -> None:
    objects = k8s_objects("base")
    service, monitor = objects["Service"], objects["ServiceMonitor"]
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {port["name"] for port in service["spec"]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= port_names
    assert (
        service["spec"]["selector"].items()
        <= objects["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    )


# ---- Dockerfile (no Docker engine here: checked by reading) -----------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    stages = [args for kind, args in instructions if kind == "FROM"]
    assert len(stages) >= 2, "multi-stage"
    final = instructions[max(i for i, (kind, _) in enumerate(instructions) if kind == "FROM") :]
    user = [args for kind, args in final if kind == "USER"]
    assert user and user[-1].split(":")[0] not in {"0", "root"}
    assert json.loads(next(args for kind, args in final if kind == "ENTRYPOINT")) == [
        "python", "-m", "broker_plugin",
    ]  # fmt: skip
    assert json.loads(next(args for kind, args in final if kind == "CMD")) == ["run"]
    healthcheck = next(args for kind, args in final if kind == "HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert f"EXPOSE {METRICS_PORT}" in DOCKERFILE.read_text()
    args = dict(arg.split("=", 1) for kind, arg in instructions if kind == "ARG" and "=" in arg)
    assert args["TORCH_VARIANT"] == "cpu" and "download.pytorch.org/whl/" in args["TORCH_INDEX_URL"]
    env = " ".join(args for kind, args in final if kind == "ENV")
    used = set(re.findall(r"\b(BROKER_PLUGIN_\w+)=", env))
    assert used and used <= setting_variables()


def copy_sources() -> list[str]:
    sources = []
    for kind, args in dockerfile_instructions():
        if kind == "COPY" and not args.startswith("--from"):
            sources += shlex.split(args)[:-1]
    return sources


def test_dockerfile_copies_what_exists_and_the_context_lets_it_through() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for source in copy_sources():
        assert source.rstrip("/") in allowed, f"{source} is excluded by Dockerfile.dockerignore"
        assert (ROOT / source).exists(), source


def test_image_installs_the_package_with_its_default_model() -> None:
    """The package and its data (default model, output schema) are installed into the venv."""
    assert "broker_plugin/" in copy_sources()
    assert (ROOT / "broker_plugin" / "models" / "convention-default" / "SHA256SUMS").is_file()
    installs = [args for kind, args in dockerfile_instructions() if kind == "RUN" and "pip install" in args]
    assert any(re.search(r"pip install --no-deps( --no-compile)? \.", args) for args in installs)
    assert not any(" -e " in args for args in installs)  # editable would need the sources at run time


def test_base_image_is_pinned_by_digest() -> None:
    args = dict(arg.split("=", 1) for kind, arg in dockerfile_instructions() if kind == "ARG" and "=" in arg)
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", args["BASE_IMAGE"])
