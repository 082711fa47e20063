"""Validate rendered Kubernetes objects offline against the Kubernetes API schema.

Reads a YAML stream (the output of `kubectl kustomize <overlay>`) on stdin and prints one JSON
line per object: {"kind", "name", "version", "errors": [...]} (errors empty when it passed).
Exit status 0 when every object passed, 1 otherwise, 2 on unreadable input.

- Built-in kinds: kubernetes-validate's strict JSON schemas (generated from the Kubernetes
  OpenAPI document, shipped in the package; "strict" rejects properties the API does not
  define), for each Kubernetes version given with --kubernetes-version (repeatable).
- ServiceMonitor (monitoring.coreos.com/v1, a custom resource the API schema does not hold):
  cloudcoil's prometheus-operator models, generated from the operator's CRD schema. Those
  models accept unknown properties, so an object also has to survive a round trip: a
  property the model does not define is dropped by it and reported as unknown.
- Any other kind has no schema here and is an error, so that nothing passes unchecked.

Usage: python validate.py --kubernetes-version 1.30 --kubernetes-version 1.37 < rendered.yaml
"""

import argparse
import json
import sys

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError


def servicemonitor_errors(obj):
    """Errors of a monitoring.coreos.com/v1 ServiceMonitor against the operator's schema."""
    import pydantic
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    try:
        model = ServiceMonitor.model_validate(obj)
    except pydantic.ValidationError as e:
        return [
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        ]
    dumped = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [f"{path}: unknown property" for path in dropped(obj, dumped, "")]


def dropped(given, kept, path):
    """Paths of `given` that a model round trip (`kept`) no longer has."""
    out = []
    if isinstance(given, dict) and isinstance(kept, dict):
        for key, value in given.items():
            where = f"{path}.{key}" if path else key
            if key not in kept:
                out.append(where)
            else:
                out.extend(dropped(value, kept[key], where))
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (g, k) in enumerate(zip(given, kept)):
            out.extend(dropped(g, k, f"{path}.{i}"))
    return out


def builtin_errors(obj, version):
    """Errors of a built-in kind against the strict schema of Kubernetes `version`."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except ValidationError as e:
        return [f"{'.'.join(str(p) for p in e.path)}: {e.message}"]
    except SchemaNotFoundError:
        return [f"no schema for {obj.get('apiVersion')} {obj.get('kind')} in Kubernetes {version}"]
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", action="append", required=True)
    args = parser.parse_args()
    try:
        objects = [o for o in yaml.safe_load_all(sys.stdin) if o is not None]
    except yaml.YAMLError as e:
        print(f"unreadable YAML: {e}", file=sys.stderr)
        return 2
    failed = False
    for obj in objects:
        if not isinstance(obj, dict):
            print(f"not an object: {obj!r}", file=sys.stderr)
            return 2
        kind = obj.get("kind")
        name = (obj.get("metadata") or {}).get("name")
        for version in args.kubernetes_version:
            if obj.get("apiVersion") == "monitoring.coreos.com/v1" and kind == "ServiceMonitor":
                errors = servicemonitor_errors(obj)
            else:
                errors = builtin_errors(obj, version)
            failed |= bool(errors)
            print(json.dumps({"kind": kind, "name": name, "version": version, "errors": errors}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
