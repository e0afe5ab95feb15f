"""Helpers for tests that apply LongAlignRuns and wait on their status."""

from __future__ import annotations

import json

from localcluster import LocalCluster, wait_for


def apply_run(cluster: LocalCluster, namespace: str, name: str, spec: dict, labels: dict | None = None) -> None:
    run = {
        "apiVersion": "longalign.dev/v1alpha1",
        "kind": "LongAlignRun",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }
    r = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(run), check=False)
    assert r.returncode == 0, r.stderr


def events(cluster: LocalCluster, namespace: str, name: str) -> list[str]:
    """The reasons of the Events posted about the run."""
    items = cluster.get("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
    return [e["reason"] for e in items]


def run_status(cluster: LocalCluster, namespace: str, name: str) -> dict:
    return cluster.get("lar", name, "-n", namespace).get("status") or {}


def wait_phase(cluster: LocalCluster, namespace: str, name: str, phase: str, timeout: float = 90) -> dict:
    """Wait until the run reaches ``phase``; return its status. Fails early on an unexpected final phase."""

    def reached():
        status = run_status(cluster, namespace, name)
        if status.get("phase") in ("Succeeded", "Failed") and status["phase"] != phase:
            raise AssertionError(f"run {name} ended {status['phase']}, not {phase}: {status.get('message')}")
        return status if status.get("phase") == phase else None

    try:
        return wait_for(reached, timeout, f"run {name} to reach {phase}", interval=0.5)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; last status: {json.dumps(run_status(cluster, namespace, name))}") from None
