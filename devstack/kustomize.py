"""A small kustomize renderer: `kustomize build DIR` for the features deploy/k8s uses.

No kustomize binary ships in a Python package, and the tests must run offline, so this
renders the manifests with kustomize's semantics for exactly these fields of a
Kustomization, and refuses any other field rather than ignore it:

- `resources`: YAML files, and directories holding a kustomization (built recursively);
- `namespace`: set on every namespaced object (cluster-scoped kinds are left alone);
- `configMapGenerator`, `secretGenerator` (`literals` only; `behavior` create, merge or
  replace) and `generatorOptions.disableNameSuffixHash`: generated objects get a content
  hash suffix (kustomize's encoding) once the whole build is done, and references to them
  from pod templates (env, envFrom, volumes) are renamed to match;
- `patches`: strategic-merge patches (targeted by the patch's own kind and name, or by
  `target`) and JSON 6902 patches (a list of operations, with `target`), from `path` or
  inline `patch`;
- `images`: `newName`, `newTag` and `digest` for containers whose image has that name.

Objects come out in kustomize's legacy order (namespaces first, workloads after their
configuration). Run `python -m devstack.kustomize DIR` to print a build.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "patches",
    "images",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
# kustomize's legacy output order; kinds not listed come after these, then those below.
ORDER_FIRST = [
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
]
ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
# Strategic-merge keys of the lists in the objects we patch; other lists are replaced.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not support, or is wrong."""


@dataclass
class _Item:
    """One object of a build, and whether it is generated (named by a hash at the end)."""

    obj: Object
    hashed: bool = False

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])


def build(path: Path | str) -> list[Object]:
    """Renders the kustomization in directory `path`, like `kustomize build path`."""
    items = _build_dir(Path(path), stack=())
    _apply_name_hashes(items)
    return sorted((item.obj for item in items), key=_order_key)


def to_yaml(objects: Sequence[Object]) -> str:
    return "---\n".join(yaml.safe_dump(obj, sort_keys=False) for obj in objects)


# ---- one kustomization ------------------------------------------------------------------


def _kustomization(directory: Path) -> Object:
    for name in KUSTOMIZATION_FILES:
        candidate = directory / name
        if candidate.is_file():
            data = yaml.safe_load(candidate.read_text("utf-8")) or {}
            if not isinstance(data, dict):
                raise KustomizeError(f"{candidate}: not a mapping")
            unknown = sorted(set(data) - SUPPORTED_FIELDS)
            if unknown:
                raise KustomizeError(f"{candidate}: unsupported fields {unknown}")
            return data
    raise KustomizeError(f"{directory}: no kustomization file")


def _build_dir(directory: Path, stack: tuple[Path, ...]) -> list[_Item]:
    directory = directory.resolve()
    if directory in stack:
        raise KustomizeError(f"{directory}: cycle through {[str(p) for p in stack]}")
    kust = _kustomization(directory)
    items: list[_Item] = []
    for entry in kust.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            items.extend(_build_dir(target, (*stack, directory)))
        elif target.is_file():
            items.extend(_Item(obj) for obj in _load_objects(target))
        else:
            raise KustomizeError(f"{directory}: resource {entry!r} not found")
    _check_unique(items, directory)

    hashed = not kust.get("generatorOptions", {}).get("disableNameSuffixHash", False)
    for spec in kust.get("configMapGenerator", []):
        _generate(items, spec, "ConfigMap", hashed, directory)
    for spec in kust.get("secretGenerator", []):
        _generate(items, spec, "Secret", hashed, directory)

    for patch in kust.get("patches", []):
        _apply_patch(items, patch, directory)
    if "namespace" in kust:
        for item in items:
            if item.kind not in CLUSTER_SCOPED:
                item.obj["metadata"]["namespace"] = kust["namespace"]
    for image in kust.get("images", []):
        _set_image(items, image)
    _check_unique(items, directory)
    return items


def _load_objects(path: Path) -> list[Object]:
    objects = []
    for doc in yaml.safe_load_all(path.read_text("utf-8")):
        if doc is None:
            continue
        if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= set(doc):
            raise KustomizeError(f"{path}: a document is not a Kubernetes object")
        if doc["kind"] == "List":
            raise KustomizeError(f"{path}: List objects are not supported")
        objects.append(doc)
    return objects


def _check_unique(items: list[_Item], directory: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for item in items:
        key = (item.kind, item.obj["metadata"].get("namespace", ""), item.name)
        if key in seen:
            raise KustomizeError(f"{directory}: {key} appears twice")
        seen.add(key)


# ---- generators -------------------------------------------------------------------------


def _literals(spec: Object, directory: Path) -> dict[str, str]:
    unknown = sorted(set(spec) - {"name", "behavior", "literals", "type"})
    if unknown:
        raise KustomizeError(f"{directory}: generator {spec.get('name')}: unsupported {unknown}")
    data: dict[str, str] = {}
    for literal in spec.get("literals", []):
        key, sep, value = str(literal).partition("=")
        if not sep or not key:
            raise KustomizeError(f"{directory}: literal {literal!r} is not KEY=VALUE")
        data[key] = value
    return data


def _generate(items: list[_Item], spec: Object, kind: str, hashed: bool, dir_: Path) -> None:
    name = spec["name"]
    data = _literals(spec, dir_)
    behavior = spec.get("behavior", "create")
    existing = [item for item in items if item.kind == kind and item.name == name]
    if behavior == "create":
        if existing:
            raise KustomizeError(f"{dir_}: {kind} {name} exists; use behavior merge or replace")
        obj: Object = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
        if kind == "Secret":
            obj["type"] = spec.get("type", "Opaque")
            obj["data"] = _b64(data)
        else:
            obj["data"] = data
        items.append(_Item(obj, hashed=hashed))
        return
    if behavior not in {"merge", "replace"}:
        raise KustomizeError(f"{dir_}: unknown generator behavior {behavior!r}")
    if len(existing) != 1:
        raise KustomizeError(f"{dir_}: {kind} {name} to {behavior} not found in resources")
    target = existing[0].obj
    encoded = _b64(data) if kind == "Secret" else data
    if behavior == "merge":
        target.setdefault("data", {}).update(encoded)
    else:
        target["data"] = encoded


def _b64(data: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


def content_hash(obj: Object) -> str:
    """kustomize's name suffix: SHA-256 of the kind, name and data as Go encodes them in
    JSON, its first ten hex digits with 0, 1, 3, a and e replaced to avoid words."""
    fields: Object = {"kind": obj["kind"], "name": obj["metadata"]["name"], "data": obj["data"]}
    if obj["kind"] == "Secret":
        fields["type"] = obj.get("type", "Opaque")
    encoded = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _apply_name_hashes(items: list[_Item]) -> None:
    renamed: dict[tuple[str, str], str] = {}
    for item in items:
        if item.hashed:
            new = f"{item.name}-{content_hash(item.obj)}"
            renamed[(item.kind, item.name)] = new
            item.obj["metadata"]["name"] = new
    for item in items:
        for pod in _pod_specs(item.obj):
            _rename_references(pod, renamed)


def _rename_references(pod: Object, renamed: dict[tuple[str, str], str]) -> None:
    def fix(ref: Object | None, kind: str, field: str = "name") -> None:
        if ref is not None and (kind, ref.get(field)) in renamed:
            ref[field] = renamed[(kind, ref[field])]

    for container in _containers(pod):
        for source in container.get("envFrom", []):
            fix(source.get("configMapRef"), "ConfigMap")
            fix(source.get("secretRef"), "Secret")
        for var in container.get("env", []):
            value_from = var.get("valueFrom", {})
            fix(value_from.get("configMapKeyRef"), "ConfigMap")
            fix(value_from.get("secretKeyRef"), "Secret")
    for volume in pod.get("volumes", []):
        fix(volume.get("configMap"), "ConfigMap")
        fix(volume.get("secret"), "Secret", "secretName")
        for source in volume.get("projected", {}).get("sources", []):
            fix(source.get("configMap"), "ConfigMap")
            fix(source.get("secret"), "Secret")
    for pull_secret in pod.get("imagePullSecrets", []):
        fix(pull_secret, "Secret")


# ---- pod templates ----------------------------------------------------------------------


def _pod_specs(obj: Object) -> Iterator[Object]:
    kind, spec = obj.get("kind"), obj.get("spec", {})
    if kind == "Pod":
        yield spec
    elif kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        yield spec.get("template", {}).get("spec", {})
    elif kind == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})


def _containers(pod: Object) -> Iterator[Object]:
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def _set_image(items: list[_Item], image: Object) -> None:
    unknown = sorted(set(image) - {"name", "newName", "newTag", "digest"})
    if unknown:
        raise KustomizeError(f"images: unsupported {unknown}")
    for item in items:
        for pod in _pod_specs(item.obj):
            for container in _containers(pod):
                name, tag, digest = split_image(container["image"])
                if name != image["name"]:
                    continue
                name = image.get("newName", name)
                if "digest" in image:
                    tag, digest = None, image["digest"]
                elif "newTag" in image:
                    tag, digest = str(image["newTag"]), None
                container["image"] = (
                    name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
                )


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """'repo/name:tag@sha256:...' -> ('repo/name', 'tag', 'sha256:...')."""
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        return rest[:colon], rest[colon + 1 :], digest or None
    return rest, None, digest or None


# ---- patches ----------------------------------------------------------------------------


def _apply_patch(items: list[_Item], entry: Object, directory: Path) -> None:
    unknown = sorted(set(entry) - {"path", "patch", "target"})
    if unknown:
        raise KustomizeError(f"{directory}: patch field(s) {unknown} not supported")
    if ("path" in entry) == ("patch" in entry):
        raise KustomizeError(f"{directory}: a patch needs exactly one of path and patch")
    text = (directory / entry["path"]).read_text("utf-8") if "path" in entry else entry["patch"]
    content = yaml.safe_load(text)
    target = entry.get("target")
    if isinstance(content, list):
        if target is None:
            raise KustomizeError(f"{directory}: a JSON 6902 patch needs a target")
        matched = _select(items, target)
        for item in matched:
            item.obj = json_patch(item.obj, content)
    elif isinstance(content, dict):
        if target is None:
            target = {
                "kind": content.get("kind"),
                "name": content.get("metadata", {}).get("name"),
            }
        matched = _select(items, target)
        for item in matched:
            item.obj = strategic_merge(item.obj, _without_identity(content))
    else:
        raise KustomizeError(f"{directory}: a patch must be a mapping or a list")
    if not matched:
        raise KustomizeError(f"{directory}: patch target {target} matches nothing")


def _without_identity(patch: Object) -> Object:
    out = {k: v for k, v in patch.items() if k not in {"apiVersion", "kind"}}
    metadata = {k: v for k, v in out.get("metadata", {}).items() if k != "name"}
    if metadata:
        out["metadata"] = metadata
    else:
        out.pop("metadata", None)
    return out


def _select(items: list[_Item], target: Object) -> list[_Item]:
    unknown = sorted(set(target) - {"group", "version", "kind", "name", "namespace"})
    if unknown:
        raise KustomizeError(f"patch target: unsupported {unknown}")
    selected = []
    for item in items:
        api_version = str(item.obj["apiVersion"])
        group, _, version = api_version.rpartition("/")
        candidate = {
            "group": group,
            "version": version,
            "kind": item.kind,
            "name": item.name,
            "namespace": item.obj["metadata"].get("namespace", ""),
        }
        if all(value is None or candidate[key] == value for key, value in target.items()):
            selected.append(item)
    return selected


def strategic_merge(original: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes strategic merge for the patches we write: maps merge, `null` deletes a
    key, lists with a merge key (containers, env, volumes, ...) merge by it, any other list
    is replaced."""
    if isinstance(original, dict) and isinstance(patch, dict):
        merged = dict(original)
        for key, value in patch.items():
            if isinstance(key, str) and key.startswith("$"):
                raise KustomizeError(f"strategic-merge directive {key} is not supported")
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(original, list) and isinstance(patch, list):
        key = _merge_key(field, original, patch)
        if key is None:
            return copy.deepcopy(patch)
        merged_list = [copy.deepcopy(element) for element in original]
        for element in patch:
            index = next(
                (i for i, e in enumerate(merged_list) if e.get(key) == element.get(key)), None
            )
            if index is None:
                merged_list.append(copy.deepcopy(element))
            else:
                merged_list[index] = strategic_merge(merged_list[index], element)
        return merged_list
    return copy.deepcopy(patch)


def _merge_key(field: str, original: list[Any], patch: list[Any]) -> str | None:
    elements = [*original, *patch]
    if field == "ports":  # container ports merge on containerPort, Service ports on port
        key = "containerPort" if any("containerPort" in e for e in elements) else "port"
    else:
        found = MERGE_KEYS.get(field)
        if found is None:
            return None
        key = found
    if not all(isinstance(e, dict) and key in e for e in elements):
        raise KustomizeError(f"list {field!r}: every element needs the merge key {key!r}")
    return key


def json_patch(document: Object, operations: list[Object]) -> Object:
    """RFC 6902 add, remove, replace and test."""
    result = copy.deepcopy(document)
    for op in operations:
        kind, path = op.get("op"), str(op.get("path", ""))
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]]
        if not path.startswith("/") or not tokens:
            raise KustomizeError(f"JSON patch: bad path {path!r}")
        parent: Any = result
        for token in tokens[:-1]:
            parent = parent[int(token)] if isinstance(parent, list) else parent[token]
        last = tokens[-1]
        if kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent[last]
            if current != op["value"]:
                raise KustomizeError(f"JSON patch: test of {path} failed")
        elif kind == "add":
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                parent.insert(index, copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif kind in {"replace", "remove"}:
            if isinstance(parent, list):
                index = int(last)
                if not 0 <= index < len(parent):
                    raise KustomizeError(f"JSON patch: {path} does not exist")
            elif last not in parent:
                raise KustomizeError(f"JSON patch: {path} does not exist")
            if kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            else:
                parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
        else:
            raise KustomizeError(f"JSON patch: operation {kind!r} is not supported")
    return result


def _order_key(obj: Object) -> tuple[int, str, str]:
    kind = str(obj["kind"])
    if kind in ORDER_FIRST:
        rank = ORDER_FIRST.index(kind)
    elif kind in ORDER_LAST:
        rank = len(ORDER_FIRST) + 1 + ORDER_LAST.index(kind)
    else:
        rank = len(ORDER_FIRST)
    return rank, kind, str(obj["metadata"]["name"])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m devstack.kustomize DIR\n")
        return 2
    try:
        sys.stdout.write(to_yaml(build(args[0])))
    except (KustomizeError, OSError, yaml.YAMLError) as exc:
        sys.stderr.write(f"kustomize: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
