"""deploy/kubernetes/: every manifest valid against the Kubernetes API's schemas
(kubernetes-validate), and saying what the service needs: real settings, real commands and
probe paths, replicas within the command partitions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.config import Settings
from service.entrypoints.cli import build_parser

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
# Custom resources of KEDA: the API's own schemas do not have them.
KEDA = {"ScaledObject", "TriggerAuthentication"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def everything() -> list[dict[str, Any]]:
    return [d for path in MANIFESTS for d in documents(path)]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in everything() if d["kind"] == kind]


def containers() -> list[dict[str, Any]]:
    pods = [
        d["spec"]["template"]["spec"] for d in everything() if d["kind"] in {"Deployment", "Job"}
    ]
    return [c for pod in pods for c in pod["containers"]]


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_each_manifest_is_valid_for_the_kubernetes_api(path: Path) -> None:
    version = kubernetes_validate.latest_version()
    for document in documents(path):
        if document["kind"] in KEDA:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(document, version, strict=True)
            assert document["apiVersion"] == "keda.sh/v1alpha1"
            continue
        kubernetes_validate.validate(document, version, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


def test_settings_and_secrets_are_ones_the_service_reads() -> None:
    known = {name.upper() for name in Settings.model_fields}
    for kind in ("ConfigMap", "Secret"):
        [document] = of_kind(kind)
        names = set(document.get("data") or document.get("stringData") or {})
        unknown = {n for n in names - known if not n.startswith("OTEL_")}
        assert not unknown, (kind, unknown)


def test_every_container_runs_a_real_command_with_probes_on_the_health_endpoints() -> None:
    parser = build_parser()
    for container in containers():
        parser.parse_args(container["args"])  # exits (fails) on an unknown command or role
        assert container["resources"]["limits"]["memory"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        if container["args"][0] == "run":
            assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
            assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"


def test_consumers_never_outnumber_the_command_partitions() -> None:
    [config] = of_kind("ConfigMap")
    partitions = int(config["data"]["TOPIC_PARTITIONS_COMMANDS"])
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    [scaled] = of_kind("ScaledObject")
    target = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
    assert "consumer" in target["spec"]["template"]["spec"]["containers"][0]["args"]
    assert target["spec"]["replicas"] <= partitions
    assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= partitions
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == Settings().kafka_consumer_group
    assert trigger["metadata"]["topic"] == Settings().topic_commands
    [authentication] = of_kind("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == authentication["metadata"]["name"]


def test_two_relays_and_disruption_budgets_for_both_deployments() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    relay = deployments["customer-groups-relay"]
    assert relay["spec"]["replicas"] == 2
    assert relay["spec"]["template"]["spec"]["containers"][0]["args"] == ["run", "--role", "relay"]
    covered = [b["spec"]["selector"]["matchLabels"] for b in of_kind("PodDisruptionBudget")]
    for deployment in deployments.values():
        assert deployment["spec"]["selector"]["matchLabels"] in covered
