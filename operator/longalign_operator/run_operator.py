"""Run the operator: watch LongAlignRuns and drive each to a finished, evaluated model.

    longalign operator                                   # every namespace
    longalign operator --namespace team-a --namespace b  # only these
    longalign operator --liveness http://0.0.0.0:8080/healthz --metrics-port 9090
    longalign operator --exclude-namespaces 'kube-*,prod-*'   # refuse runs there (default: kube-system,
                                                              # kube-public, kube-node-lease; '' for none)

Credentials come from the pod's ServiceAccount in a cluster, or from KUBECONFIG outside one.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    """Arguments of ``longalign operator``."""
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; globs allowed); default: all namespaces",
    )
    parser.add_argument(
        "--exclude-namespaces",
        metavar="NS,NS",
        default=None,
        help="refuse runs in these namespaces (comma-separated globs), with a status and an Event; "
        "default: kube-system,kube-public,kube-node-lease; '' refuses none",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug detail")
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics at :PORT/metrics (default: off)"
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=None,
        help="serve a liveness endpoint here, e.g. http://0.0.0.0:8080/healthz",
    )


def run(args) -> int:
    """``longalign operator``: run the Kopf operator in this process until it is stopped."""
    import kopf

    from longalign_operator import handlers  # registers the handlers

    if args.metrics_port:
        handlers.METRICS_PORT = args.metrics_port
    if args.exclude_namespaces is not None:
        handlers.EXCLUDED = [n.strip() for n in args.exclude_namespaces.split(",") if n.strip()]
    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=True, clusterwide=not args.namespace, namespaces=args.namespace, liveness_endpoint=args.liveness
    )
    return 0
