"""deploy/k8s, checked without a cluster: base and overlays rendered by the real tool
(`kubectl kustomize`), every object validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict), then checked against the services' own code and the
project's own policy.

The generic hardening checks (root filesystem, capabilities, probes, resources, ...) are
checkov's: `make policy` runs checkov itself on these renders, with the skips and their
reasons in deploy/k8s/.checkov.yaml. Only what checkov cannot know is asserted here.
"""

from __future__ import annotations

import ast
import base64
import functools
import importlib
import ipaddress
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from imgpipe.common.config import split_host_port
from support.promql_files import RULES
from support.tools import kustomize

Object = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BUILDS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}
OVERLAYS = ("dev", "prod")
# The oldest release docs/deploy.md supports, and the newest whose schemas the package ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
IMGPIPE_IMAGE = "imgpipe"
SETTING = re.compile(r"^(IMGPIPE_[A-Z0-9_]+|DATABASE_URL|AWS_[A-Z0-9_]+)$")
# Variables set for something other than imgpipe's code, with the reason.
RUNTIME_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "glibc malloc: big image buffers from mmap, returned on free",
    "MALLOC_TRIM_THRESHOLD_": "glibc malloc: no heap trim after every free",
}
# The keys of the Secret `imgpipe-secrets` that production provides (docs/deploy.md lists
# them), with stand-in values to parse the settings with.
EXTERNAL_SECRET_VALUES = {
    "DATABASE_URL": "postgresql://imgpipe:stand-in@db.internal:5432/imgpipe",
    "AWS_ACCESS_KEY_ID": "stand-in-key-id",
    "AWS_SECRET_ACCESS_KEY": "stand-in-secret",
    "AWS_REGION": "eu-west-1",
    "AWS_ENDPOINT_URL_S3": "https://s3.eu-west-1.amazonaws.com",
    "IMGPIPE_STORAGE_URL": "s3://imgpipe-outputs/outputs",
    "IMGPIPE_AUTH_TOKENS": "stand-in-token-1,stand-in-token-2",
    "IMGPIPE_WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"\x00" * 24).decode(),
}
# The label the OpenTelemetry Operator gives the collectors it runs.
OTLP_COLLECTOR = {"app.kubernetes.io/component": "opentelemetry-collector"}
PRIVATE_V4 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")
PRIVATE_V6 = ("fc00::/7", "fe80::/10")
GRPC_PORTS = {"ingest": 50051, "processor": 50052}
HTTP_PORTS = {"ingest": 8080, "processor": 8081}


# Custom resources (the Prometheus Operator's PrometheusRule in prod) are not in Kubernetes'
# own schemas; tests/unit/test_observability_files.py checks the rule and its PromQL.
CUSTOM_RESOURCE_GROUPS = ("monitoring.coreos.com/",)


# ---- rendering ------------------------------------------------------------------------


def rendered(build: str) -> list[Object]:
    return kustomize(BUILDS[build])


def image_name(image: str) -> str:
    """`imgpipe` of `imgpipe:0.1.0`, `registry:5000/imgpipe@sha256:...` and the like."""
    return image.split("@", maxsplit=1)[0].rsplit("/", 1)[-1].split(":", maxsplit=1)[0]


def find(objects: list[Object], kind: str, name: str) -> Object:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return found[0]


def pod_templates(objects: list[Object]) -> Iterator[tuple[Object, Object]]:
    """(workload, pod template) for every workload."""
    for obj in objects:
        if obj["kind"] in WORKLOAD_KINDS:
            yield obj, obj["spec"]["template"]


def containers(pod_spec: Object) -> list[Object]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def imgpipe_containers(objects: list[Object]) -> Iterator[tuple[Object, Object, str]]:
    """(workload, container, service) for every container running the imgpipe image."""
    scripts = console_scripts()
    for workload, template in pod_templates(objects):
        for container in containers(template["spec"]):
            if image_name(container["image"]) != IMGPIPE_IMAGE:
                continue
            command = container["command"]
            assert command[0] in scripts, f"{command[0]} is not a console script"
            module = scripts[command[0]].split(":")[0]
            assert module.startswith(("imgpipe.ingest.", "imgpipe.processor.")), (
                f"{command[0]} is not a service"
            )
            yield workload, container, module.split(".")[1]


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def service_pods(objects: list[Object], service: Object) -> list[str]:
    """Names of the workloads whose pods the Service (a plain label map) selects."""
    return pods_selected(objects, {"matchLabels": service["spec"]["selector"]})


def pods_selected(objects: list[Object], selector: Mapping[str, Any]) -> list[str]:
    """Names of the workloads whose pods the selector selects (in the same namespace)."""
    return [
        w["metadata"]["name"]
        for w, t in pod_templates(objects)
        if selects(selector, t["metadata"]["labels"])
    ]


# ---- what the services read ---------------------------------------------------------------


@functools.cache
def console_scripts() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        scripts: dict[str, str] = tomllib.load(f)["project"]["scripts"]
    return scripts


def _sources(service: str) -> list[Path]:
    return sorted([*(ROOT / "services" / service).rglob("*.py"), *(ROOT / "shared").rglob("*.py")])


@functools.cache
def settings_read(service: str) -> frozenset[str]:
    """Every environment variable name that the service's code (and shared/) names."""
    names = set()
    for path in _sources(service):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and SETTING.match(node.value)
            ):
                names.add(node.value)
    return frozenset(names)


@functools.cache
def settings_required(service: str) -> frozenset[str]:
    """The settings read with `env_str(env, NAME)`, no default: start fails without them."""
    names = set()
    for path in _sources(service):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "env_str"
                and len(node.args) == 2
                and not node.keywords
                and isinstance(node.args[1], ast.Constant)
            ):
                names.add(str(node.args[1].value))
    return frozenset(names)


def parse_settings(service: str, env: Mapping[str, str]) -> Any:
    module = importlib.import_module(f"imgpipe.{service}.settings")
    return module.Settings.from_env(env)


def container_env(objects: list[Object], container: Object) -> dict[str, str]:
    """The environment the container starts with: ConfigMaps and Secrets resolved (Secrets
    not in the build are production's, stood in for by EXTERNAL_SECRET_VALUES)."""

    def config_map(name: str) -> dict[str, str]:
        data: dict[str, str] = find(objects, "ConfigMap", name).get("data", {})
        return data

    def secret(name: str) -> dict[str, str] | None:
        found = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == name]
        if not found:
            return None
        data = found[0].get("data", {})
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"envFrom {source}: only ConfigMaps are expected"
        env.update(config_map(source["configMapRef"]["name"]))
    for var in container.get("env", []):
        name = var["name"]
        if "value" in var:
            env[name] = str(var["value"])
            continue
        value_from = var["valueFrom"]
        if "configMapKeyRef" in value_from:
            ref = value_from["configMapKeyRef"]
            env[name] = config_map(ref["name"])[ref["key"]]
        elif "secretKeyRef" in value_from:
            ref = value_from["secretKeyRef"]
            data = secret(ref["name"])
            if data is None:
                assert ref["key"] in EXTERNAL_SECRET_VALUES, f"{ref}: not a documented key"
                env[name] = EXTERNAL_SECRET_VALUES[ref["key"]]
            elif ref["key"] in data:
                env[name] = data[ref["key"]]
            else:
                assert ref.get("optional"), f"{name}: key {ref['key']} missing from the Secret"
        else:
            raise AssertionError(f"{name}: unexpected valueFrom {value_from}")
    return env


def set_names(objects: list[Object], container: Object) -> set[str]:
    names = {var["name"] for var in container.get("env", [])}
    for source in container.get("envFrom", []):
        names |= set(find(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    return names


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def pre_stop_seconds(container: Object) -> int:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    return int(command[1]) if len(command) == 2 and command[0] == "sleep" else 0


# ---- schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("build", sorted(BUILDS))
def test_every_object_validates_against_the_kubernetes_schemas(build: str, version: str) -> None:
    objects = rendered(build)
    assert objects
    for obj in objects:
        if obj["apiVersion"].startswith(CUSTOM_RESOURCE_GROUPS):
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{build} {obj['kind']}/{obj['metadata']['name']}: {exc.message}")


def test_strict_validation_rejects_a_misspelt_field() -> None:
    deployment = find(rendered("base"), "Deployment", "imgpipe-ingest")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_base_and_overlays_hold_what_the_issue_lists() -> None:
    base = rendered("base")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in base}
    assert {
        ("ServiceAccount", "imgpipe-ingest"),
        ("Deployment", "imgpipe-ingest"),
        ("Service", "imgpipe-ingest"),
        ("ServiceAccount", "imgpipe-processor"),
        ("Deployment", "imgpipe-processor"),
        ("Service", "imgpipe-processor"),
        ("HorizontalPodAutoscaler", "imgpipe-processor"),
        ("PodDisruptionBudget", "imgpipe-processor"),
    } <= kinds
    assert find(base, "Deployment", "imgpipe-ingest")["spec"]["replicas"] == 2
    assert find(base, "Service", "imgpipe-processor")["spec"]["clusterIP"] == "None"
    assert {p["port"] for p in find(base, "Service", "imgpipe-ingest")["spec"]["ports"]} == {
        GRPC_PORTS["ingest"],
        HTTP_PORTS["ingest"],
    }
    dev = rendered("dev")
    for name in ("postgres", "minio"):
        statefulset = find(dev, "StatefulSet", name)
        assert statefulset["spec"]["volumeClaimTemplates"], f"{name} has no PVC"
        find(dev, "Service", name)
    job = find(dev, "Job", "minio-create-bucket")
    assert [c["image"].split(":")[0] for c in job["spec"]["template"]["spec"]["containers"]] == [
        "minio/mc"
    ]
    prod = rendered("prod")
    assert not [o for o in prod if o["kind"] in {"StatefulSet", "Secret"}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_an_overlay_puts_everything_in_the_namespace_it_creates(overlay: str) -> None:
    objects = rendered(overlay)
    [namespace] = [o for o in objects if o["kind"] == "Namespace"]
    assert objects[0]["kind"] == "Namespace", "kustomize lists namespaces first"
    name = namespace["metadata"]["name"]
    assert {o["metadata"].get("namespace") for o in objects[1:]} == {name}


# ---- settings and ports against the code --------------------------------------------------


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_every_variable_set_is_one_the_service_reads(build: str) -> None:
    objects = rendered(build)
    seen = set()
    for workload, container, service in imgpipe_containers(objects):
        seen.add(service)
        unknown = set_names(objects, container) - settings_read(service) - set(RUNTIME_ENV)
        assert not unknown, f"{build} {workload['metadata']['name']}: {service} reads no {unknown}"
    assert seen == {"ingest", "processor"}


def test_the_settings_scan_finds_what_the_services_read() -> None:
    assert {"DATABASE_URL", "IMGPIPE_PROCESSOR_TARGET", "IMGPIPE_STORAGE_URL"} <= settings_read(
        "ingest"
    )
    assert {"IMGPIPE_WORKERS", "AWS_ENDPOINT_URL_S3"} <= settings_read("processor")
    assert "IMGPIPE_PROCESSOR_TARGET" not in settings_read("processor")
    assert settings_required("ingest") >= {"DATABASE_URL", "IMGPIPE_STORAGE_URL"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_start_with_the_environment_the_overlay_gives_them(overlay: str) -> None:
    """Required settings present, and the whole environment accepted by the services' own
    settings parser; ports, probes, scrape annotations and grace period agree with it."""
    objects = rendered(overlay)
    for workload, container, service in imgpipe_containers(objects):
        where = f"{overlay} {workload['metadata']['name']}"
        env = container_env(objects, container)
        missing = settings_required(service) - set(env)
        assert not missing, f"{where}: required {missing} not set"
        settings = parse_settings(service, env)
        grpc_port = split_host_port(settings.common.grpc_addr)[1]
        http_port = split_host_port(settings.common.http_addr)[1]
        assert (grpc_port, http_port) == (GRPC_PORTS[service], HTTP_PORTS[service])

        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": grpc_port, "http": http_port}, where
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if settings.common.grpc.tls_cert:
                # Kubernetes' gRPC probes cannot speak TLS: the HTTP side answers them.
                assert "grpc" not in container[probe], f"{where}: {probe}"
                assert container[probe]["httpGet"]["port"] == http_port, f"{where}: {probe}"
                assert container[probe]["httpGet"]["path"] in {"/readyz", "/healthz"}
                continue
            assert container[probe]["grpc"]["port"] == grpc_port, f"{where}: {probe}"
            assert container[probe]["grpc"].get("service", "") == "", f"{where}: {probe}"

        pod = workload["spec"]["template"]
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(http_port)
        assert annotations["prometheus.io/path"] == "/metrics"

        grace = settings.common.grace_seconds
        period = pod["spec"]["terminationGracePeriodSeconds"]
        assert period >= pre_stop_seconds(container) + grace + 10, f"{where}: {period} s"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_processor_threads_and_memory_fit_its_limits(overlay: str) -> None:
    objects = rendered(overlay)
    for _, container, service in imgpipe_containers(objects):
        if service != "processor":
            continue
        settings = parse_settings(service, container_env(objects, container))
        limits = container["resources"]["limits"]
        assert settings.workers <= cpu_cores(limits["cpu"])
        env = {v["name"]: v.get("value") for v in container["env"]}
        assert env["MALLOC_MMAP_THRESHOLD_"] == "33554432"
        assert env["MALLOC_TRIM_THRESHOLD_"] == "1073741824"


@pytest.mark.parametrize("build", OVERLAYS)
def test_ingest_can_fill_every_processor_slot_at_the_hpa_maximum(build: str) -> None:
    """Ingest replicas x calls in flight >= processors at the HPA's maximum x each one's
    slots; with fewer, processors past some count would only ever stand idle."""
    objects = rendered(build)
    in_flight = {}
    for _, container, service in imgpipe_containers(objects):
        settings = parse_settings(service, container_env(objects, container))
        in_flight[service] = (
            settings.dispatch.max_in_flight if service == "ingest" else settings.max_in_flight
        )
    replicas = find(objects, "Deployment", "imgpipe-ingest")["spec"]["replicas"]
    most = find(objects, "HorizontalPodAutoscaler", "imgpipe-processor")["spec"]["maxReplicas"]
    assert replicas * in_flight["ingest"] >= most * in_flight["processor"]


def test_prod_asks_for_more_than_base() -> None:
    base, prod = rendered("base"), rendered("prod")

    def limits(objects: list[Object], name: str) -> Object:
        result: Object = find(objects, "Deployment", name)["spec"]["template"]["spec"][
            "containers"
        ][0]["resources"]["limits"]
        return result

    for name in ("imgpipe-ingest", "imgpipe-processor"):
        assert cpu_cores(limits(prod, name)["cpu"]) > cpu_cores(limits(base, name)["cpu"])
        assert memory_bytes(limits(prod, name)["memory"]) > memory_bytes(
            limits(base, name)["memory"]
        )
    replicas = find(prod, "Deployment", "imgpipe-ingest")["spec"]["replicas"]
    assert replicas > find(base, "Deployment", "imgpipe-ingest")["spec"]["replicas"]
    hpa, base_hpa = (
        find(o, "HorizontalPodAutoscaler", "imgpipe-processor")["spec"] for o in (prod, base)
    )
    assert hpa["minReplicas"] > base_hpa["minReplicas"]
    assert hpa["maxReplicas"] > base_hpa["maxReplicas"]
    ingest = find(prod, "Deployment", "imgpipe-ingest")["spec"]["template"]["spec"]
    tokens = [v for v in ingest["containers"][0]["env"] if v["name"] == "IMGPIPE_AUTH_TOKENS"]
    assert tokens[0]["valueFrom"]["secretKeyRef"].get("optional") is False


def test_dev_stores_outputs_in_the_in_cluster_minio() -> None:
    dev = rendered("dev")
    for _, container, _service in imgpipe_containers(dev):
        env = container_env(dev, container)
        assert env["IMGPIPE_STORAGE_URL"] == "s3://imgpipe/outputs"
        endpoint = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", env["AWS_ENDPOINT_URL_S3"])
        assert endpoint, env["AWS_ENDPOINT_URL_S3"]
        service = find(dev, "Service", endpoint[1])
        assert int(endpoint[2]) in {p["port"] for p in service["spec"]["ports"]}
        assert service_pods(dev, service) == ["minio"]
        database = env.get("DATABASE_URL")
        if database is not None:
            host = re.search(r"@([a-z0-9-]+):5432/", database)
            assert host, database
            assert service_pods(dev, find(dev, "Service", host[1])) == ["postgres"]
    job = find(dev, "Job", "minio-create-bucket")
    assert "dev/imgpipe" in job["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_prod_uses_mutual_tls_between_ingest_and_the_processors() -> None:
    """The processors require a client certificate; ingest verifies theirs and presents its
    own; every file the settings name comes from a mounted Secret (issued by cert-manager,
    docs/deploy.md)."""
    prod = rendered("prod")
    mounted: dict[str, dict[str, str]] = {}
    for workload, container, service in imgpipe_containers(prod):
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        env = container_env(prod, container)
        secret_paths = {
            m["mountPath"]: volumes[m["name"]]["secret"]["secretName"]
            for m in container.get("volumeMounts", [])
            if "secret" in volumes[m["name"]]
        }
        files = {
            name: value
            for name, value in env.items()
            if name.startswith(("IMGPIPE_TLS_", "IMGPIPE_PROCESSOR_TLS_"))
            and name != "IMGPIPE_PROCESSOR_TLS_SERVER_NAME"
        }
        for name, path in files.items():
            assert path.rsplit("/", 1)[0] in secret_paths, f"{service}: {name}={path}"
        mounted[service] = files
    assert set(mounted["processor"]) == {
        "IMGPIPE_TLS_CERT",
        "IMGPIPE_TLS_KEY",
        "IMGPIPE_TLS_CLIENT_CA",
    }
    assert set(mounted["ingest"]) == {
        "IMGPIPE_PROCESSOR_TLS_CA",
        "IMGPIPE_PROCESSOR_TLS_CERT",
        "IMGPIPE_PROCESSOR_TLS_KEY",
    }
    docs = (ROOT / "docs" / "deploy.md").read_text("utf-8")
    for secret in ("imgpipe-processor-tls", "imgpipe-ingest-client-tls"):
        assert f"`{secret}`" in docs


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_ingest_mounts_the_tenants_file_docs_deploy_names(build: str) -> None:
    """The file docs/deploy.md puts in IMGPIPE_AUTH_TOKENS_FILE lies in ingest's read-only
    mount of the Secret `imgpipe-tenants`, which is optional: ingest starts without it."""
    docs = (ROOT / "docs" / "deploy.md").read_text("utf-8")
    found = re.search(r"IMGPIPE_AUTH_TOKENS_FILE=(\S+)", docs)
    assert found, "docs/deploy.md names no IMGPIPE_AUTH_TOKENS_FILE"
    folder, name = found.group(1).rsplit("/", 1)
    assert f"--from-file={name}" in docs
    [(workload, container)] = [
        (w, c) for w, c, service in imgpipe_containers(rendered(build)) if service == "ingest"
    ]
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    assert mount.get("readOnly") is True
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "imgpipe-tenants" and secret.get("optional") is True
    assert "`imgpipe-tenants`" in docs


def test_documented_secret_keys() -> None:
    """Every key production's Secret must hold is named in docs/deploy.md."""
    docs = (ROOT / "docs" / "deploy.md").read_text("utf-8")
    prod = rendered("prod")
    used = {
        var["valueFrom"]["secretKeyRef"]["key"]
        for _, container, _s in imgpipe_containers(prod)
        for var in container["env"]
        if "secretKeyRef" in var.get("valueFrom", {})
    }
    assert used <= set(EXTERNAL_SECRET_VALUES)
    assert not [key for key in used if f"`{key}`" not in docs]


# ---- references, selectors, the processor target ----------------------------------------


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_selectors_match_the_pods_they_are_meant_for(build: str) -> None:
    objects = rendered(build)
    for workload, template in pod_templates(objects):
        name = workload["metadata"]["name"]
        if workload["kind"] != "Job":
            assert selects(workload["spec"]["selector"], template["metadata"]["labels"]), name
        for constraint in template["spec"].get("topologySpreadConstraints", []):
            assert pods_selected(objects, constraint["labelSelector"]) == [name]
    for obj in objects:
        if obj["kind"] == "Service":
            selected = service_pods(objects, obj)
            assert len(selected) == 1, f"Service {obj['metadata']['name']} selects {selected}"
            workload = find_workload(objects, selected[0])
            port_names = {
                p.get("name")
                for c in workload["spec"]["template"]["spec"]["containers"]
                for p in c["ports"]
            }
            for port in obj["spec"]["ports"]:
                assert port["targetPort"] in port_names, f"{obj['metadata']['name']}: {port}"
        if obj["kind"] == "PodDisruptionBudget":
            assert pods_selected(objects, obj["spec"]["selector"]) == [obj["metadata"]["name"]]


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_the_hpa_scales_the_processor_deployment_and_only_it_sets_replicas(build: str) -> None:
    objects = rendered(build)
    hpas = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    assert len(hpas) == 1
    target = hpas[0]["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        "imgpipe-processor",
    )
    deployment = find(objects, "Deployment", "imgpipe-processor")
    assert "replicas" not in deployment["spec"], "kubectl apply would undo the HPA's count"
    assert [m["resource"]["name"] for m in hpas[0]["spec"]["metrics"]] == ["cpu"]
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "cpu" in resources["requests"], "CPU utilization is relative to the request"
    assert hpas[0]["spec"]["minReplicas"] <= hpas[0]["spec"]["maxReplicas"]


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_ingest_targets_the_headless_processor_service(build: str) -> None:
    objects = rendered(build)
    ingest = [c for _, c, s in imgpipe_containers(objects) if s == "ingest"]
    assert len(ingest) == 1
    target = container_env(objects, ingest[0])["IMGPIPE_PROCESSOR_TARGET"]
    match = re.fullmatch(
        r"dns:///(?P<name>[a-z0-9-]+)(?:\.(?P<ns>[a-z0-9-]+)\.svc\.cluster\.local)?:(?P<port>\d+)",
        target,
    )
    assert match, f"not a dns:/// target of a Service: {target}"
    service = find(objects, "Service", match["name"])
    assert service["spec"].get("clusterIP") == "None", "round_robin needs a headless Service"
    assert not service["spec"].get("publishNotReadyAddresses"), "only ready pods in DNS"
    namespace = service["metadata"].get("namespace")
    assert match["ns"] is None or match["ns"] == namespace
    assert int(match["port"]) in {p["port"] for p in service["spec"]["ports"]}
    assert int(match["port"]) == GRPC_PORTS["processor"]
    assert service_pods(objects, service) == ["imgpipe-processor"]


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_references_name_objects_that_exist(build: str) -> None:
    """ServiceAccounts, ConfigMaps and Secrets named by pods exist in the build, except the
    Secret `imgpipe-secrets`, which the base and prod leave to the operator."""
    objects = rendered(build)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    external = {("Secret", "imgpipe-secrets")} if build != "dev" else set()
    for workload, template in pod_templates(objects):
        spec = template["spec"]
        account = spec.get("serviceAccountName")
        if account:
            assert ("ServiceAccount", account) in names
        for container in containers(spec):
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names
            for var in container.get("env", []):
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = var.get("valueFrom", {}).get(key)
                    if ref is not None:
                        assert (kind, ref["name"]) in names | external, (
                            f"{workload['metadata']['name']}: {kind} {ref['name']}"
                        )


# ---- network policies ----------------------------------------------------------------------


def policies(objects: list[Object]) -> list[Object]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


def policies_for(objects: list[Object], workload: str, direction: str) -> list[Object]:
    labels = find_workload(objects, workload)["spec"]["template"]["metadata"]["labels"]
    return [
        p
        for p in policies(objects)
        if direction in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)
    ]


def find_workload(objects: list[Object], name: str) -> Object:
    found = [w for w, _ in pod_templates(objects) if w["metadata"]["name"] == name]
    assert len(found) == 1, name
    return found[0]


def port_numbers(rule: Object) -> set[int] | None:
    """The rule's TCP/UDP port numbers; None when it allows every port."""
    if not rule.get("ports"):
        return None
    return {int(p["port"]) for p in rule["ports"]}


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_network_policies_select_real_pods(build: str) -> None:
    objects = rendered(build)
    for policy in policies(objects):
        spec = policy["spec"]
        if spec["podSelector"]:
            assert pods_selected(objects, spec["podSelector"]), policy["metadata"]["name"]
        for rule in [*spec.get("ingress", []), *spec.get("egress", [])]:
            for peer in [*rule.get("from", []), *rule.get("to", [])]:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert pods_selected(objects, peer["podSelector"]), peer
    deny = find(objects, "NetworkPolicy", "imgpipe-default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_only_ingest_may_call_the_processors(build: str) -> None:
    objects = rendered(build)
    grpc = GRPC_PORTS["processor"]
    allowing = []
    for policy in policies_for(objects, "imgpipe-processor", "Ingress"):
        for rule in policy["spec"].get("ingress", []):
            ports = port_numbers(rule)
            if ports is not None and grpc not in ports:
                continue
            assert rule.get("from"), f"{policy['metadata']['name']}: {grpc} open to all"
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, f"{policy['metadata']['name']}: {peer}"
                assert pods_selected(objects, peer["podSelector"]) == ["imgpipe-ingest"]
            allowing.append(policy["metadata"]["name"])
    assert allowing
    # ...and ingest may call them.
    assert any(
        grpc in (port_numbers(rule) or {grpc})
        and any(
            "podSelector" in peer
            and pods_selected(objects, peer["podSelector"]) == ["imgpipe-processor"]
            for peer in rule.get("to", [])
        )
        for policy in policies_for(objects, "imgpipe-ingest", "Egress")
        for rule in policy["spec"].get("egress", [])
    )


def _private(cidr: str) -> bool:
    network = ipaddress.ip_network(cidr)
    ranges = PRIVATE_V4 if network.version == 4 else PRIVATE_V6
    return any(network.overlaps(ipaddress.ip_network(r)) for r in ranges)


@pytest.mark.parametrize("build", sorted(BUILDS))
@pytest.mark.parametrize("workload", ["imgpipe-processor", "imgpipe-ingest"])
def test_egress_reaches_the_internet_but_not_private_ranges(build: str, workload: str) -> None:
    """To the internet less the private, CGNAT and link-local (metadata) ranges; to pods
    only by selector; DNS only to kube-dns; in other namespaces, only a trace collector's
    OTLP ports. Ingest alone may reach a database at a private address, on 5432 only."""
    objects = rendered(build)
    internet = dns = otlp = False
    for policy in policies_for(objects, workload, "Egress"):
        for rule in policy["spec"].get("egress", []):
            assert rule.get("to"), f"{policy['metadata']['name']}: egress to everywhere"
            for peer in rule["to"]:
                if "ipBlock" in peer:
                    block = peer["ipBlock"]
                    if ipaddress.ip_network(block["cidr"]).prefixlen == 0:
                        wanted = PRIVATE_V4 if ":" not in block["cidr"] else PRIVATE_V6
                        assert set(wanted) <= set(block.get("except", [])), block
                        internet = True
                    else:
                        assert _private(block["cidr"]), block
                        assert workload == "imgpipe-ingest" and port_numbers(rule) == {5432}
                elif peer.get("namespaceSelector") == {}:
                    assert peer["podSelector"] == {"matchLabels": OTLP_COLLECTOR}
                    assert port_numbers(rule) == {4317, 4318}
                    otlp = True
                elif "namespaceSelector" in peer:
                    assert peer["namespaceSelector"] == {
                        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                    }
                    assert peer["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
                    assert port_numbers(rule) == {53}
                    dns = True
                else:
                    assert pods_selected(objects, peer["podSelector"]), peer
    assert internet and dns and otlp


# ---- the project's own policy (checkov, run by `make policy`, does the generic checks) ------


Violation = tuple[str, str, str]


def policy_violations(objects: list[Object]) -> list[Violation]:
    """(rule, object, problem) for the rules of this project that checkov has no check for."""
    found: list[Violation] = []
    for obj in objects:
        if obj["kind"] == "Namespace":
            labels = obj["metadata"].get("labels", {})
            if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
                found.append(("PSA", obj["metadata"]["name"], "not Pod Security restricted"))
    for workload, template in pod_templates(objects):
        found += _pod_violations(workload, template["spec"])
    return found


def _pod_violations(workload: Object, spec: Object) -> list[Violation]:
    context = spec.get("securityContext", {})
    checks = [
        (
            all(isinstance(context.get(k), int) for k in ("runAsUser", "runAsGroup")),
            "IDS",
            "non-numeric user or group",
        ),
        (spec.get("enableServiceLinks") is False, "LINKS", "service links in env"),
    ]
    for container in containers(spec):
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        checks.append(("/tmp" in mounts, "TMP", "no writable /tmp"))
        for var in container.get("env", []):
            secret = re.search(r"PASSWORD|SECRET|TOKEN|DATABASE_URL|KEY", var["name"])
            checks.append((not (secret and "value" in var), "SECRET_ENV", var["name"]))
        if image_name(container["image"]) == IMGPIPE_IMAGE:
            checks += [
                (context.get("fsGroup") == context.get("runAsGroup"), "IDS", "fsGroup"),
                (bool(spec.get("topologySpreadConstraints")), "SPREAD", "no topology spread"),
                ("startupProbe" in container, "STARTUP", "no startup probe"),
            ]
    name = workload["metadata"]["name"]
    return [(rule, name, problem) for ok, rule, problem in checks if not ok]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_project_policy(overlay: str) -> None:
    assert policy_violations(rendered(overlay)) == []


def test_project_policy_finds_violations() -> None:
    objects = rendered("dev")
    ingest = find(objects, "Deployment", "imgpipe-ingest")
    pod = ingest["spec"]["template"]["spec"]
    pod["containers"][0]["env"].append({"name": "IMGPIPE_AUTH_TOKENS", "value": "plain"})
    pod["enableServiceLinks"] = True
    del pod["containers"][0]["startupProbe"]
    find(objects, "Namespace", "imgpipe-dev")["metadata"]["labels"].clear()
    found = {(rule, name) for rule, name, _ in policy_violations(objects)}
    assert found == {
        ("SECRET_ENV", "imgpipe-ingest"),
        ("LINKS", "imgpipe-ingest"),
        ("STARTUP", "imgpipe-ingest"),
        ("PSA", "imgpipe-dev"),
    }


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_every_checkov_skip_in_the_manifests_gives_its_reason(build: str) -> None:
    """checkov honours `checkov.io/skip*: CHECK=reason` annotations; this project allows a
    skip only with its reason, as deploy/k8s/.checkov.yaml gives one for each skip of
    the whole scan."""
    for obj in rendered(build):
        annotations = obj["metadata"].get("annotations", {})
        for key, value in annotations.items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV_K8S_\d+", check), f"{key}: {value}"
                assert len(reason.split()) >= 5, f"{obj['metadata']['name']}: {value}"


def test_the_prod_overlay_applies_the_alert_rules_in_its_namespace() -> None:
    [rule] = [o for o in rendered("prod") if o["kind"] == "PrometheusRule"]
    assert rule["metadata"]["namespace"] == "imgpipe"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())["spec"]
