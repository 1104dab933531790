"""Offline checks of the lab's files: what can be verified without Docker or a cluster.

- Compose files against the Compose Specification JSON schema (draft-07).
- Knative objects against the openAPIV3Schema of their CRDs, strictly (an unknown field is
  an error, as with `kubectl apply`'s default strict field validation), and Trigger filters
  (each entry of `filters` holds exactly one dialect, at every depth).
- Core Kubernetes objects against the Kubernetes Python client's models (unknown fields).
- Images pinned: compose services, Kubernetes pod specs, Dockerfile FROM lines.
Each function returns a list of problems (strings naming the file and the place); empty = ok.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator

FILTER_DIALECTS = ("exact", "prefix", "suffix", "all", "any", "not", "cesql")
KNATIVE_GROUPS = ("serving.knative.dev", "eventing.knative.dev", "sources.knative.dev", "messaging.knative.dev")
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


# ------------------------------------------------------------------ loading

def yaml_documents(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, document) for each non-empty mapping document of a YAML file."""
    with path.open() as f:
        for i, doc in enumerate(yaml.safe_load_all(f)):
            if isinstance(doc, dict):
                yield i, doc


def manifest_files(*dirs: Path) -> list[Path]:
    out: list[Path] = []
    for d in dirs:
        if d.is_dir():
            out += sorted(p for p in d.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    return out


# ------------------------------------------------------------------ Compose

def compose_errors(path: Path, spec: Path) -> list[str]:
    schema = json.loads(spec.read_text())
    doc = yaml.safe_load(path.read_text())
    v = Draft7Validator(schema)
    return [f"{path.name}: {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(v.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


# ------------------------------------------------------------------ Knative CRDs

# Fields Knative's Go types and webhooks accept that the 1.22 CRD schemas do not list (they sit
# under x-kubernetes-preserve-unknown-fields): DeliverySpec.timeout, feature `delivery-timeout`,
# "Beta, enabled by default" (knative.dev/docs/eventing/features/delivery-timeout).
_UNLISTED_DELIVERY_FIELDS = {"timeout": {"type": "string"}}


def _strict(node: Any) -> Any:
    """An OpenAPI v3 (Kubernetes structural) schema as JSON Schema, closed to unknown fields."""
    if isinstance(node, list):
        return [_strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    props = out.get("properties")
    if isinstance(props, dict) and isinstance(props.get("delivery"), dict):
        dprops = props["delivery"].get("properties")
        if isinstance(dprops, dict) and "backoffDelay" in dprops:
            for k, v in _UNLISTED_DELIVERY_FIELDS.items():
                dprops.setdefault(k, v)
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    # Knative's webhooks decode strictly even under x-kubernetes-preserve-unknown-fields, so an
    # object whose fields are listed is closed; free-form maps (no properties) stay open
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _crd_root(schema: dict[str, Any]) -> dict[str, Any]:
    root = _strict(schema)
    props = root.setdefault("properties", {})
    for k in ("apiVersion", "kind"):
        props.setdefault(k, {"type": "string"})
    props.setdefault("metadata", {"type": "object"})
    root["additionalProperties"] = False
    return root


def load_crd_schemas(knative_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, for every served version of every CRD found."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in manifest_files(knative_dir):
        for _, doc in yaml_documents(path):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for ver in spec.get("versions", []):
                if ver.get("served") and "schema" in ver:
                    key = (f"{spec['group']}/{ver['name']}", spec["names"]["kind"])
                    schemas[key] = _crd_root(ver["schema"]["openAPIV3Schema"])
    return schemas


def is_knative(doc: dict[str, Any]) -> bool:
    return str(doc.get("apiVersion", "")).split("/")[0] in KNATIVE_GROUPS


def knative_errors(doc: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]], where: str) -> list[str]:
    key = (str(doc.get("apiVersion")), str(doc.get("kind")))
    if key not in schemas:
        return [f"{where}: no CRD schema for {key[1]} {key[0]} (not a served Knative 1.22 API)"]
    v = Draft7Validator(schemas[key])
    errs = [f"{where}: {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in v.iter_errors(doc)]
    if doc.get("kind") == "Trigger":
        errs += trigger_filter_errors(doc, where)
    meta = doc.get("metadata") or {}
    if not meta.get("name"):
        errs.append(f"{where}: metadata.name is required")
    return errs


def _filter_errors(entry: Any, path: str) -> list[str]:
    if not isinstance(entry, dict):
        return [f"{path}: a filter is a mapping with one dialect, not {type(entry).__name__}"]
    keys = list(entry)
    dialects = [k for k in keys if k in FILTER_DIALECTS]
    errs = [f"{path}: unknown filter dialect {k!r}" for k in keys if k not in FILTER_DIALECTS]
    if len(dialects) != 1:
        errs.append(f"{path}: holds {len(dialects)} dialects {dialects}; exactly one is allowed")
    for k in dialects:
        val = entry[k]
        if k in ("all", "any"):
            if not isinstance(val, list) or not val:
                errs.append(f"{path}.{k}: needs a non-empty list of filters")
            else:
                for i, sub in enumerate(val):
                    errs += _filter_errors(sub, f"{path}.{k}[{i}]")
        elif k == "not":
            errs += _filter_errors(val, f"{path}.not")
        elif k == "cesql":
            if not isinstance(val, str) or not val.strip():
                errs.append(f"{path}.cesql: needs an expression")
        elif not isinstance(val, dict) or not val or not all(isinstance(x, str) for x in val.values()):
            errs.append(f"{path}.{k}: needs a mapping of attribute -> string")
    return errs


def trigger_filter_errors(doc: dict[str, Any], where: str) -> list[str]:
    filters = (doc.get("spec") or {}).get("filters")
    if filters is None:
        return []
    if not isinstance(filters, list):
        return [f"{where}: spec.filters must be a list"]
    errs: list[str] = []
    for i, entry in enumerate(filters):
        errs += _filter_errors(entry, f"{where}: spec.filters[{i}]")
    return errs


# ------------------------------------------------------------------ core Kubernetes objects

_CORE_MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "Service"): "V1Service",
    ("v1", "Secret"): "V1Secret",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
}
_PRIMITIVES: dict[str, type | tuple[type, ...]] = {
    "str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "date": str,
}


def _model_errors(value: Any, type_name: str, path: str) -> list[str]:
    import kubernetes.client.models as m

    if type_name == "object":
        return []
    low = type_name.lower()      # client versions write list[X]/dict(str, X) or List[X]/Dict[str, X]
    if low.startswith("list["):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        inner = type_name[5:-1]
        return [e for i, x in enumerate(value) for e in _model_errors(x, inner, f"{path}[{i}]")]
    if low.startswith(("dict(", "dict[")):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        inner = type_name[5:-1].split(",", 1)[1].strip()
        return [e for k, x in value.items() for e in _model_errors(x, inner, f"{path}.{k}")]
    if type_name in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {type(value).__name__}"]
    cls = getattr(m, type_name, None)
    if cls is None:
        return []
    if type_name == "IntOrString" or not hasattr(cls, "attribute_map"):
        return []
    if not isinstance(value, dict):
        return [f"{path}: expected a mapping ({type_name})"]
    by_json = {j: attr for attr, j in cls.attribute_map.items()}
    errs: list[str] = []
    for k, x in value.items():
        if k not in by_json:
            errs.append(f"{path}: unknown field {k!r} in {type_name}")
            continue
        errs += _model_errors(x, cls.openapi_types[by_json[k]], f"{path}.{k}")
    return errs


def core_errors(doc: dict[str, Any], where: str) -> list[str]:
    """Unknown fields and wrong types in a core object, by the kubernetes client's models."""
    key = (str(doc.get("apiVersion")), str(doc.get("kind")))
    if key not in _CORE_MODELS:
        return [f"{where}: {key[1]} {key[0]} is not a kind these checks know"]
    try:
        import kubernetes.client.models  # noqa: F401  (the [lab] extra)
    except ImportError:
        return [f"{where}: cannot check {key[1]}: the kubernetes client is not installed (pip install '.[lab]')"]
    errs = _model_errors(doc, _CORE_MODELS[key], where)
    if not (doc.get("metadata") or {}).get("name"):
        errs.append(f"{where}: metadata.name is required")
    return errs


# ------------------------------------------------------------------ image pinning

def pin_problem(image: str) -> str | None:
    """Why an image reference is not pinned, or None when it has a version tag or a digest."""
    if not image or "${" in image:
        return f"{image!r}: not a literal image reference"
    if _DIGEST.search(image):
        return None
    name = image.rsplit("/", 1)[-1]
    if ":" not in name:
        return f"{image}: no tag (means :latest)"
    tag = name.split(":", 1)[1]
    if tag in ("latest", "stable", "main", "master", "edge", "") or not re.search(r"\d", tag):
        return f"{image}: tag {tag!r} is not a version"
    return None


def compose_images(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(service, image) for every compose service; a build without image gets ''."""
    return [(name, str(svc.get("image", ""))) for name, svc in (doc.get("services") or {}).items()
            if "image" in svc or "build" in svc]


def pod_images(doc: dict[str, Any]) -> list[str]:
    """Container images anywhere in a manifest (pod templates, Knative Services, sources)."""
    found: list[str] = []

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            if key in ("containers", "initContainers"):
                found.extend(str(c.get("image", "")) for c in node if isinstance(c, dict))
            for x in node:
                walk(x)

    walk(doc)
    return found


def dockerfile_froms(path: Path) -> list[str]:
    """Base images of a Dockerfile (stage names used as bases are skipped)."""
    stages: set[str] = set()
    bases: list[str] = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].upper() == "FROM":
            args = [p for p in parts[1:] if not p.startswith("--")]
            if not args:
                continue
            if args[0].lower() not in stages:
                bases.append(args[0])
            if len(args) >= 3 and args[1].upper() == "AS":
                stages.add(args[2].lower())
    return bases


# ------------------------------------------------------------------ all of them

def offline_problems(shared: Path) -> list[str]:
    """Every offline check over the lab's files (what `testbed lab check` prints)."""
    from testbed.lab import layout as L
    from testbed.lab import render
    from testbed.lab.subscribers import SubscriberError, load
    from testbed.lab.versions import VersionsError, read_versions

    problems: list[str] = []
    try:
        subs = load(L.SUBSCRIBERS_FILE)
        problems += [f"{p}: out of date, run `testbed lab render`" for p in render.stale_files(L.REPO, subs)]
    except SubscriberError as e:
        problems.append(str(e))
    try:
        kind_image = read_versions()["KIND_NODE_IMAGE"]
        nodes = yaml.safe_load(L.KIND_CONFIG.read_text()).get("nodes", [])
        if [n.get("image") for n in nodes] != [kind_image]:
            problems.append(f"{L.KIND_CONFIG.name}: node image differs from KIND_NODE_IMAGE in versions.env")
    except VersionsError as e:
        problems.append(str(e))
    spec = shared / "compose-spec/compose-spec.json"
    crds = shared / "knative"
    if not spec.is_file() or not crds.is_dir():
        problems.append(f"shared schemas not found under {shared} (set MEC_SHARED or --shared)")
        return problems
    schemas = load_crd_schemas(crds)
    for f in (L.COMPOSE_DIR / "docker-compose.yaml", L.COMPOSE_DIR / "docker-compose.tap.yaml"):
        problems += compose_errors(f, spec)
        for service, image in compose_images(yaml.safe_load(f.read_text())):
            if (why := pin_problem(image)) is not None:
                problems.append(f"{f.name}: {service}: {why}")
    dirs = [L.K8S_DIR / d for d in ("detector", "install", "knative")]
    for f in manifest_files(*dirs):
        for i, doc in yaml_documents(f):
            where = f"{f.relative_to(L.REPO)}#{i}"
            problems += knative_errors(doc, schemas, where) if is_knative(doc) else core_errors(doc, where)
            problems += [f"{where}: {why}" for img in pod_images(doc) if (why := pin_problem(img)) is not None]
    dockerfiles = sorted(L.DOCKER_DIR.glob("*.Dockerfile")) + sorted(L.COMPOSE_DIR.rglob("*.Dockerfile"))
    for f in dockerfiles:
        problems += [f"{f.relative_to(L.REPO)}: {why}" for b in dockerfile_froms(f)
                     if (why := pin_problem(b)) is not None]
    return problems
