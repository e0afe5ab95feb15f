"""The run as one table row, with the CRD's own printer columns: what ``kubectl get lar -o wide`` shows.

The columns come from ``crd.PRINTER_COLUMNS`` (one source); their JSONPaths are evaluated here for the few
forms they use: ``.a.b.c`` and ``.a[?(@.k=="v")].b``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from longalign_operator.crd import PRINTER_COLUMNS
from longalign_operator.plan import format_duration, parse_time

_STEP = re.compile(r'\.(\w+)(?:\[\?\(@\.(\w+)=="([^"]*)"\)\])?')


def json_path(obj: Any, path: str) -> Any:
    """The value at a printer column's JSONPath, or None when absent.

    >>> json_path({"status": {"conditions": [{"type": "Succeeded", "status": "True"}]}},
    ...           '.status.conditions[?(@.type=="Succeeded")].status')
    'True'
    """
    for name, key, value in _STEP.findall(path):
        obj = obj.get(name) if isinstance(obj, dict) else None
        if key and obj is not None:
            obj = next((i for i in obj if isinstance(i, dict) and str(i.get(key)) == value), None)
    return obj


def render(resource: dict, wide: bool = True, now: datetime | None = None) -> str:
    """The header and row of one resource, aligned as kubectl aligns them (``<none>`` for empty cells)."""
    columns = [c for c in PRINTER_COLUMNS if wide or not c.get("priority")]
    header = ["NAME"] + [c["name"].upper() for c in columns]
    row = [resource["metadata"]["name"]] + [_cell(json_path(resource, c["jsonPath"]), c["type"], now) for c in columns]
    widths = [max(len(h), len(v)) for h, v in zip(header, row, strict=True)]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in (header, row)
    )


def _cell(value: Any, kind: str, now: datetime | None) -> str:
    if value is None or value == "":
        return "<none>"
    if kind == "date":
        return format_duration(((now or datetime.now(UTC)) - parse_time(value)).total_seconds())
    return str(value)
