"""Before the operator goes away for good: stop it, then take its finalizer off every run.

    longalign uninstall --stop-deployment longalign-system/longalign-operator     # runs in all namespaces
    longalign uninstall --stop-deployment ns/name -n team-a -n team-b            # runs in these only

The operator keeps the finalizer ``longalign.dev/finalizer`` on every run it reconciles, and only the operator
removes it. Once the operator is uninstalled, deleting a run (or its namespace) would hang forever. The Helm
chart runs this command as a pre-delete hook. The operator is scaled to zero and its pods awaited first: while it
runs it would put the finalizer straight back. Runs and their children are left as they are.
"""

from __future__ import annotations

import time

from longalign_operator.spec import GROUP, PLURAL, VERSION

FINALIZER = f"{GROUP}/finalizer"
TIMEOUT_S = 30  # per API call


def add_arguments(parser) -> None:
    """Arguments of ``longalign uninstall``."""
    parser.add_argument(
        "--stop-deployment",
        metavar="NAMESPACE/NAME",
        default=None,
        help="scale this operator Deployment to zero and wait for its pods to be gone first",
    )
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="only runs in this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the operator's pods to be gone (default: 120)"
    )


def run(args) -> int:
    """``longalign uninstall``: stop the operator, then remove its finalizer from the runs."""
    from kubernetes import client, config

    config.load_config()  # in a pod: its ServiceAccount; elsewhere: KUBECONFIG
    api = client.ApiClient()
    if args.stop_deployment:
        namespace, _, name = args.stop_deployment.partition("/")
        stop_deployment(client.AppsV1Api(api), client.CoreV1Api(api), namespace, name, args.timeout)
    released = release_runs(client.CustomObjectsApi(api), args.namespace)
    print(f"removed {FINALIZER} from {len(released)} run(s): {', '.join(released) or '-'}")
    return 0


def stop_deployment(apps, core, namespace: str, name: str, timeout: float) -> None:
    """Scale the Deployment to zero and wait until none of its pods is left (a missing one is already stopped)."""
    from kubernetes.client.exceptions import ApiException

    try:
        apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": 0}}, _request_timeout=TIMEOUT_S)
        selector = apps.read_namespaced_deployment(name, namespace, _request_timeout=TIMEOUT_S).spec.selector
    except ApiException as e:
        if e.status == 404:
            return
        raise
    labels = ",".join(f"{k}={v}" for k, v in selector.match_labels.items())
    deadline = time.monotonic() + timeout
    while core.list_namespaced_pod(namespace, label_selector=labels, _request_timeout=TIMEOUT_S).items:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the pods of deployment {namespace}/{name} still exist after {timeout:.0f} s")
        time.sleep(1)


def release_runs(custom, namespaces: list[str]) -> list[str]:
    """Remove the operator's finalizer from every run in ``namespaces`` (all if empty); the runs released."""
    from kubernetes.client.exceptions import ApiException

    runs = []
    scopes: list[str | None] = [*namespaces] or [None]  # None: every namespace
    for ns in scopes:
        listed = (
            custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _request_timeout=TIMEOUT_S)
            if ns
            else custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=TIMEOUT_S)
        )
        runs += listed["items"]
    released = []
    for item in runs:
        meta = item["metadata"]
        if FINALIZER not in meta.get("finalizers", []):
            continue
        # The resourceVersion makes the patch conditional: a run changed since it was listed is refused (409).
        patch = {
            "metadata": {
                "resourceVersion": meta["resourceVersion"],
                "finalizers": [f for f in meta["finalizers"] if f != FINALIZER],
            }
        }
        try:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], patch, _request_timeout=TIMEOUT_S
            )
        except ApiException as e:
            if e.status != 404:  # deleted meanwhile: nothing to release; a 409 fails the Job, which retries
                raise
            continue
        released.append(f"{meta['namespace']}/{meta['name']}")
    return released
