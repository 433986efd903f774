"""The Kubernetes and KServe manifests parse and agree with the server: ports, probe paths that the
server answers (from the committed OpenAPI description, and live), names the HPA and Service point at,
and flags the server accepts."""

import json
import pathlib
import subprocess
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(kind):
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        found += [d for d in docs(path) if d["kind"] == kind]
    assert found, f"no {kind} in deploy/"
    return found


def openapi_paths():
    with open(ROOT / "openapi" / "openapi.json") as f:
        return set(json.load(f)["paths"])


def test_every_manifest_parses_with_kind_and_name():
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        for d in docs(path):
            assert d.get("apiVersion") and d.get("kind"), path
            assert d["metadata"]["name"], path


def test_deployment_probes_and_ports_match_the_server(addresses):
    (deployment,) = by_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FER_LISTEN"].endswith(f":{ports['http']}")
    assert env["FER_GRPC_LISTEN"].endswith(f":{ports['grpc']}")
    paths = openapi_paths()
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        path = container[probe]["httpGet"]["path"]
        assert path in paths, f"{probe} {path} is not a route"
        with urllib.request.urlopen(f"http://{addresses['http']}{path}") as r:
            assert r.status == 200
    # The drain must finish before Kubernetes kills the pod.
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert int(env["FER_DRAIN_TIMEOUT_MS"]) / 1000 < grace
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]


def test_service_and_hpa_point_at_the_deployment():
    (deployment,) = by_kind("Deployment")
    (service,) = by_kind("Service")
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_kserve_runtime_uses_flags_the_server_accepts(server_bin):
    (runtime,) = by_kind("ClusterServingRuntime")
    (container,) = runtime["spec"]["containers"]
    args = container["args"]
    assert args[0] == "serve"
    usage = subprocess.run(
        [server_bin, "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for arg in args[1:]:
        flag = arg.split("=")[0]
        assert flag in usage, f"fer-server serve has no {flag}"
    paths = openapi_paths()
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in paths
    (service,) = by_kind("InferenceService")
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert service["spec"]["predictor"]["model"]["modelFormat"]["name"] in formats
