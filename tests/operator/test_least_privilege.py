"""The operator and the pods it makes hold no more rights than they use, checked on the real control plane."""

from __future__ import annotations

import pytest
from runs import apply_run, events, run_status
from test_lifecycle import BASE, OUTCOME, training

from localcluster import LocalCluster, wait_for

pytestmark = pytest.mark.cluster
OPERATOR = "system:serviceaccount:longalign-system:longalign-operator"


def can_i(cluster: LocalCluster, verb: str, resource: str, namespace: str) -> bool:
    out = cluster.kubectl("auth", "can-i", f"--as={OPERATOR}", verb, resource, "-n", namespace, check=False)
    return out.stdout.strip() == "yes"


@pytest.mark.parametrize(
    "verb, resource, allowed",
    [
        ("create", "jobs.batch", True),
        ("create", "statefulsets.apps", True),
        ("patch", "longalignruns.longalign.dev/status", True),
        ("get", "pods/log", True),
        ("watch", "nodes", True),
        ("create", "events", True),
        ("get", "secrets", False),
        ("list", "secrets", False),
        ("create", "pods", False),
        ("delete", "pods", False),
        ("create", "pods/exec", False),
        ("create", "serviceaccounts/token", False),
        ("patch", "nodes", False),
        ("update", "longalignruns.longalign.dev", False),
        ("create", "roles.rbac.authorization.k8s.io", False),
    ],
)
def test_the_operators_service_account_can_do_what_it_uses_and_nothing_else(cluster, operator, verb, resource, allowed):
    assert can_i(cluster, verb, resource, "team-a") is allowed


def test_stage_pods_get_no_service_account_token(cluster, operator, volumes):
    ns = volumes
    apply_run(cluster, ns, "tokenless", {**BASE, "training": training(labels={OUTCOME: "hang"})})
    pods = wait_for(
        lambda: cluster.get("pods", "-n", ns, "-l", "job-name=tokenless-train-1")["items"], 60, "the training pods"
    )
    # This control plane does mount tokens: a pod that does not opt out gets one.
    cluster.create(
        ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "control"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        },
    )
    control = cluster.get("pod", "control", "-n", ns)

    def token_volumes(pod: dict) -> list[str]:
        return [v["name"] for v in pod["spec"].get("volumes", []) if "projected" in v]

    assert token_volumes(control)
    for pod in pods:
        assert pod["spec"]["automountServiceAccountToken"] is False and not token_volumes(pod)


def test_a_run_in_an_excluded_namespace_is_refused_with_a_status_and_an_event(cluster, operator):
    ns = "kube-public"  # excluded by default (longalign operator --exclude-namespaces)
    apply_run(cluster, ns, "sneaky", {**BASE, "training": training()})
    try:
        status = wait_for(
            lambda: (s := run_status(cluster, ns, "sneaky")).get("phase") and s, 30, "the run to be refused"
        )
        assert (status["phase"], status["message"]) == (
            "Failed",
            (
                "runs in namespace kube-public are refused: this operator excludes 'kube-public' "
                "(longalign operator --exclude-namespaces; the chart's excludeNamespaces)"
            ),
        )
        assert wait_for(lambda: "NamespaceExcluded" in events(cluster, ns, "sneaky"), 30, "the Warning Event")
        assert not cluster.get("jobs,configmaps,services", "-n", ns, "-l", "longalign.dev/run=sneaky")["items"]
    finally:
        cluster.kubectl("delete", "lar", "sneaky", "-n", ns, "--timeout=60s")
