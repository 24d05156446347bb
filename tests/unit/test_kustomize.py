"""devstack/kustomize.py: the kustomize semantics deploy/k8s relies on, on small cases."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import pytest

from devstack import kustomize
from devstack.kustomize import KustomizeError, build, json_patch, split_image, strategic_merge

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: example/web:1.0
          args: ["--one"]
          envFrom:
            - configMapRef: {name: web-config}
          env:
            - name: A
              value: "1"
            - name: PASSWORD
              valueFrom:
                secretKeyRef: {name: web-secret, key: PASSWORD}
          volumeMounts:
            - name: config
              mountPath: /config
        - name: sidecar
          image: example/sidecar
      volumes:
        - name: config
          configMap: {name: web-config}
        - name: creds
          secret: {secretName: web-secret}
"""
SERVICE = """
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: 8080}
"""


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text).lstrip())
    return directory


def base(tmp_path: Path, generators: str = "") -> Path:
    return write(
        tmp_path / "base",
        {
            "kustomization.yaml": """
                resources:
                  - deployment.yaml
                  - service.yaml
                """
            + textwrap.dedent(generators),
            "deployment.yaml": DEPLOYMENT,
            "service.yaml": SERVICE,
        },
    )


def by_kind(objects: list[kustomize.Object], kind: str) -> kustomize.Object:
    [found] = [o for o in objects if o["kind"] == kind]
    return found


def container(objects: list[kustomize.Object], index: int = 0) -> kustomize.Object:
    deployment = by_kind(objects, "Deployment")
    result: kustomize.Object = deployment["spec"]["template"]["spec"]["containers"][index]
    return result


def test_resources_come_out_unchanged_in_kustomize_order(tmp_path: Path) -> None:
    objects = build(base(tmp_path))
    assert [o["kind"] for o in objects] == ["Service", "Deployment"]
    assert container(objects)["image"] == "example/web:1.0"
    assert "namespace" not in objects[0]["metadata"]


def test_namespace_applies_to_namespaced_objects_through_an_overlay(tmp_path: Path) -> None:
    base(tmp_path)
    overlay = write(
        tmp_path / "overlay",
        {
            "kustomization.yaml": """
                namespace: shop
                resources: [namespace.yaml, ../base]
                """,
            "namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n",
        },
    )
    objects = build(overlay)
    assert [o["kind"] for o in objects] == ["Namespace", "Service", "Deployment"]
    assert objects[0]["metadata"] == {"name": "shop"}
    assert {o["metadata"].get("namespace") for o in objects[1:]} == {"shop"}


def test_generated_names_carry_a_content_hash_and_references_follow(tmp_path: Path) -> None:
    objects = build(
        base(
            tmp_path,
            """
            configMapGenerator:
              - name: web-config
                literals: [MODE=fast, URL=a=b]
            secretGenerator:
              - name: web-secret
                literals: [PASSWORD=hunter2]
            """,
        )
    )
    config, secret = by_kind(objects, "ConfigMap"), by_kind(objects, "Secret")
    assert config["data"] == {"MODE": "fast", "URL": "a=b"}
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["PASSWORD"]) == b"hunter2"
    config_name, secret_name = config["metadata"]["name"], secret["metadata"]["name"]
    assert config_name.startswith("web-config-") and len(config_name) == len("web-config-") + 10
    assert secret_name.startswith("web-secret-")
    pod = by_kind(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["envFrom"][0]["configMapRef"]["name"] == config_name
    assert pod["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"]["name"] == secret_name
    assert pod["volumes"][0]["configMap"]["name"] == config_name
    assert pod["volumes"][1]["secret"]["secretName"] == secret_name
    assert [o["kind"] for o in objects] == ["ConfigMap", "Secret", "Service", "Deployment"]


def test_an_overlay_merge_changes_the_data_and_so_the_hash(tmp_path: Path) -> None:
    generator = """
        configMapGenerator:
          - name: web-config
            literals: [MODE=fast]
        """
    before = by_kind(build(base(tmp_path, generator)), "ConfigMap")
    overlay = write(
        tmp_path / "overlay",
        {
            "kustomization.yaml": """
                resources: [../base]
                configMapGenerator:
                  - name: web-config
                    behavior: merge
                    literals: [EXTRA=1, MODE=slow]
                """
        },
    )
    after = by_kind(build(overlay), "ConfigMap")
    assert after["data"] == {"MODE": "slow", "EXTRA": "1"}
    assert after["metadata"]["name"] != before["metadata"]["name"]
    assert after["metadata"]["name"].startswith("web-config-")


def test_content_hash_is_stable_and_uses_kustomizes_alphabet() -> None:
    config = {"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "<&>"}}
    first = kustomize.content_hash(config)
    assert first == kustomize.content_hash({**config, "metadata": {"name": "x", "labels": {}}})
    assert len(first) == 10 and not set(first) & set("013ae")
    assert first != kustomize.content_hash({**config, "data": {"a": "other"}})


def test_hash_suffix_can_be_turned_off(tmp_path: Path) -> None:
    objects = build(
        base(
            tmp_path,
            """
            generatorOptions:
              disableNameSuffixHash: true
            configMapGenerator:
              - name: web-config
                literals: [MODE=fast]
            """,
        )
    )
    assert by_kind(objects, "ConfigMap")["metadata"]["name"] == "web-config"


def test_strategic_merge_patch_from_a_file(tmp_path: Path) -> None:
    base(tmp_path)
    overlay = write(
        tmp_path / "overlay",
        {
            "kustomization.yaml": "resources: [../base]\npatches:\n  - path: patch.yaml\n",
            "patch.yaml": """
                apiVersion: apps/v1
                kind: Deployment
                metadata:
                  name: web
                spec:
                  replicas: null
                  template:
                    spec:
                      containers:
                        - name: web
                          args: ["--two"]
                          env:
                            - name: A
                              value: "2"
                            - name: B
                              value: "3"
                          volumeMounts:
                            - name: config
                              mountPath: /config
                              readOnly: true
                """,
        },
    )
    objects = build(overlay)
    deployment = by_kind(objects, "Deployment")
    assert "replicas" not in deployment["spec"]
    web = container(objects)
    assert web["args"] == ["--two"]  # a list without a merge key is replaced
    assert web["env"][0] == {"name": "A", "value": "2"}
    assert web["env"][1]["valueFrom"]["secretKeyRef"]["name"] == "web-secret"
    assert web["env"][2] == {"name": "B", "value": "3"}
    assert web["volumeMounts"] == [{"name": "config", "mountPath": "/config", "readOnly": True}]
    assert container(objects, 1)["image"] == "example/sidecar"


def test_json6902_patch_inline_with_a_target(tmp_path: Path) -> None:
    base(tmp_path)
    overlay = write(
        tmp_path / "overlay",
        {
            "kustomization.yaml": """
                resources: [../base]
                patches:
                  - target: {group: apps, version: v1, kind: Deployment, name: web}
                    patch: |-
                      - op: test
                        path: /spec/replicas
                        value: 2
                      - op: replace
                        path: /spec/replicas
                        value: 5
                      - op: add
                        path: /spec/template/spec/containers/0/args/-
                        value: --three
                      - op: remove
                        path: /spec/template/spec/containers/1
                """
        },
    )
    deployment = by_kind(build(overlay), "Deployment")
    assert deployment["spec"]["replicas"] == 5
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == ["--one", "--three"]
    assert len(deployment["spec"]["template"]["spec"]["containers"]) == 1


def test_json_patch_escapes_and_failures() -> None:
    document = {"metadata": {"annotations": {"a/b": "1", "c~d": "2"}}}
    patched = json_patch(
        document,
        [
            {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "x"},
            {"op": "remove", "path": "/metadata/annotations/c~0d"},
        ],
    )
    assert patched == {"metadata": {"annotations": {"a/b": "x"}}}
    assert document["metadata"]["annotations"]["c~d"] == "2"  # the input is not changed
    with pytest.raises(KustomizeError, match="does not exist"):
        json_patch(document, [{"op": "replace", "path": "/metadata/name", "value": "x"}])
    with pytest.raises(KustomizeError, match="test"):
        json_patch(document, [{"op": "test", "path": "/metadata/annotations/a~1b", "value": "2"}])
    with pytest.raises(KustomizeError, match="not supported"):
        json_patch(document, [{"op": "move", "path": "/metadata", "from": "/x"}])


def test_strategic_merge_of_ports_by_container_port_and_service_port() -> None:
    container_ports = [{"containerPort": 80, "name": "http"}]
    merged = strategic_merge(container_ports, [{"containerPort": 80, "protocol": "TCP"}], "ports")
    assert merged == [{"containerPort": 80, "name": "http", "protocol": "TCP"}]
    service_ports = [{"port": 80, "targetPort": 8080}]
    merged = strategic_merge(service_ports, [{"port": 443, "targetPort": 8443}], "ports")
    assert [p["port"] for p in merged] == [80, 443]
    with pytest.raises(KustomizeError, match="directive"):
        strategic_merge({"a": 1}, {"$patch": "delete"})


def test_images_set_tag_name_and_digest(tmp_path: Path) -> None:
    base(tmp_path)
    overlay = write(
        tmp_path / "overlay",
        {
            "kustomization.yaml": """
                resources: [../base]
                images:
                  - name: example/web
                    newName: registry.local:5000/web
                    newTag: "2.0"
                  - name: example/sidecar
                    digest: sha256:0123
                """
        },
    )
    objects = build(overlay)
    assert container(objects)["image"] == "registry.local:5000/web:2.0"
    assert container(objects, 1)["image"] == "example/sidecar@sha256:0123"


def test_split_image() -> None:
    assert split_image("nginx") == ("nginx", None, None)
    assert split_image("host:5000/a/b:1.2") == ("host:5000/a/b", "1.2", None)
    assert split_image("a/b:1@sha256:ff") == ("a/b", "1", "sha256:ff")
    assert split_image("host:5000/a") == ("host:5000/a", None, None)


@pytest.mark.parametrize(
    ("kustomization", "message"),
    [
        ("resources: [deployment.yaml]\nnamePrefix: x-\n", "unsupported fields"),
        ("resources: [missing.yaml]\n", "not found"),
        ("resources: [deployment.yaml, deployment.yaml]\n", "appears twice"),
        (
            "resources: [deployment.yaml]\npatches:\n  - patch: '[]'\n",
            "needs a target",
        ),
        (
            "resources: [deployment.yaml]\npatches:\n"
            "  - patch: '{kind: Deployment, metadata: {name: other}}'\n",
            "matches nothing",
        ),
        (
            "resources: [deployment.yaml]\nconfigMapGenerator:\n"
            "  - {name: c, behavior: merge, literals: [A=1]}\n",
            "not found",
        ),
        (
            "resources: [deployment.yaml]\nconfigMapGenerator:\n  - {name: c, files: [x]}\n",
            "unsupported",
        ),
    ],
)
def test_refuses_what_it_does_not_support(tmp_path: Path, kustomization: str, message: str) -> None:
    directory = write(
        tmp_path, {"kustomization.yaml": kustomization, "deployment.yaml": DEPLOYMENT}
    )
    with pytest.raises(KustomizeError, match=message):
        build(directory)


def test_a_cycle_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a", {"kustomization.yaml": "resources: [../b]\n"})
    write(tmp_path / "b", {"kustomization.yaml": "resources: [../a]\n"})
    with pytest.raises(KustomizeError, match="cycle"):
        build(tmp_path / "a")


def test_the_command_prints_the_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kustomize.main([str(base(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "kind: Service" in out and "kind: Deployment" in out and "---" in out
    assert kustomize.main([str(tmp_path / "nowhere")]) == 1
    assert kustomize.main([]) == 2
