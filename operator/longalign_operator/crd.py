"""The LongAlignRun CustomResourceDefinition, generated from the spec and status models.

    python -m longalign_operator.crd > manifests/crd/longalignruns.yaml
    python -m longalign_operator.crd --helm > charts/longalign-operator/templates/crd.yaml

A test fails when a committed file differs from what this prints, so the schema cannot drift from the
models, and the chart ships the very same CRD. The conversion turns pydantic's JSON Schema into a Kubernetes
structural schema: references inlined, optional fields made plain, int-or-string and free-form objects marked,
defaults left to the operator (the typed model is the one place defaults live), cross-field rules attached as
CEL with the field they are about.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from longalign_operator.builders import RUN_NAME_MESSAGES, RUN_NAME_PATTERN, run_name_limit
from longalign_operator.spec import GROUP, KIND, PLURAL, RULES, SHORT_NAMES, VERSION, LongAlignRunSpec
from longalign_operator.status import LongAlignRunStatus

_KEEP = {
    "type",
    "properties",
    "items",
    "required",
    "description",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "multipleOf",
}

# Numbers people read come pre-rounded as strings (status.loss, status.score); status.results keeps full precision.
PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Stage", "type": "string", "jsonPath": ".status.currentStage"},
    {
        "name": "Attempt",
        "type": "integer",
        "jsonPath": ".status.attempt",
        "description": "attempt of the current stage (1 is the first try)",
    },
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
    {"name": "ETA", "type": "string", "jsonPath": ".status.eta"},
    {
        "name": "Loss",
        "type": "string",
        "jsonPath": ".status.loss",
        "description": "training loss, live while training, then the final one (4 significant digits)",
    },
    {
        "name": "Score",
        "type": "string",
        "jsonPath": ".status.score",
        "description": "LongBench-Chat mean score (1-10, 2 decimals)",
    },
    {
        "name": "Succeeded",
        "type": "string",
        "priority": 1,
        "jsonPath": '.status.conditions[?(@.type=="Succeeded")].status',
    },
    {"name": "Message", "type": "string", "priority": 1, "jsonPath": ".status.message"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Convert one pydantic JSON Schema node into a Kubernetes structural schema node."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        return structural({**target, **{k: v for k, v in schema.items() if k != "$ref"}}, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if sorted(o.get("type") for o in options) == ["integer", "string"]:
            return {**_keep(rest), "x-kubernetes-int-or-string": True}
        if sorted(o.get("type") for o in options) == ["integer", "number"]:
            return {**_keep(rest), "type": "number"}
        if len(options) != 1:
            raise ValueError(f"cannot express union {schema['anyOf']} in a structural schema")
        return structural({**options[0], **rest}, defs)
    out = _keep(schema)
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in schema:
            out[flag] = schema[bound]
            out[bound] = True
    if "const" in schema:
        out["enum"] = [schema["const"]]
    if out.get("type") == "object":
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props:
            out["properties"] = {k: structural(v, defs) for k, v in props.items()}
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = structural(extra, defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "array":
        out["items"] = structural(schema["items"], defs)
    return out


def _keep(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k in _KEEP and k not in ("properties", "items")}


def model_schema(model) -> dict[str, Any]:
    """The structural schema of a pydantic model (camelCase field names)."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return structural(schema, schema.get("$defs", {}))


def spec_schema() -> dict[str, Any]:
    """The spec's schema, with every cross-field rule attached as CEL naming its field."""
    schema = model_schema(LongAlignRunSpec)
    schema["x-kubernetes-validations"] = [
        {"rule": r.cel, "message": r.message, **({"fieldPath": "." + r.field} if r.field else {})} for r in RULES
    ]
    return schema


def name_rules() -> list[dict[str, str]]:
    """CEL rules on the run's name (the only metadata a CRD may check): its children's names must be valid."""
    limit, what, _ = run_name_limit()
    return [
        {
            "rule": f"size(self.metadata.name) <= {limit}",
            "fieldPath": ".metadata.name",
            "message": RUN_NAME_MESSAGES["length"].format(limit=limit, what=what),
        },
        {
            "rule": f"self.metadata.name.matches('{RUN_NAME_PATTERN}')",
            "fieldPath": ".metadata.name",
            "message": RUN_NAME_MESSAGES["pattern"],
        },
    ]


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": KIND.lower(),
                "listKind": f"{KIND}List",
                "shortNames": SHORT_NAMES,
                "categories": ["all", "longalign"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A LongAlign run: long instruction data generation, packed SFT, evaluation.",
                            "required": ["spec"],
                            "x-kubernetes-validations": name_rules(),
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
                                "spec": spec_schema(),
                                "status": model_schema(LongAlignRunStatus),
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    """The CRD as the YAML file shipped in manifests/crd/."""
    header = "# Generated by `python -m longalign_operator.crd` from the spec and status models. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)


def render_helm() -> str:
    """The CRD as the Helm chart's template: installed when ``crds.enabled``, never deleted by Helm (deleting
    the CRD deletes every run), labelled like the chart's other objects."""
    obj = crd()
    obj["metadata"]["annotations"] = {"helm.sh/resource-policy": "keep"}
    body = yaml.safe_dump(obj, sort_keys=False, width=120)
    if "{{" in body:
        raise ValueError("the CRD contains '{{', which Helm would read as a template action")
    labels = '  labels:\n    {{- include "longalign-operator.labels" . | nindent 4 }}\n'
    body = body.replace("\nspec:\n", f"\n{labels}spec:\n", 1)  # the end of metadata
    header = (
        "{{- /* Generated by `python -m longalign_operator.crd --helm` from the spec and status models."
        " Do not edit. */}}\n{{- if .Values.crds.enabled }}\n"
    )
    return header + body + "{{- end }}\n"


if __name__ == "__main__":
    sys.stdout.write(render_helm() if sys.argv[1:] == ["--helm"] else render())
