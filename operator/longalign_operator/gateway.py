"""The one place that talks to the Kubernetes API: observe a run's children, create and delete them.

Creating is idempotent (an object that already exists is left as it is: names are deterministic), deleting
tolerates objects already gone and always cascades (a Job's pods go with it), so a retried or restarted
reconcile converges without duplicates.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from longalign_operator.builders import LABEL_RUN, Run
from longalign_operator.plan import JobView, Observed, PodView
from longalign_operator.spec import GROUP, PLURAL, VERSION, LongAlignRunSpec
from longalign_trainer.contract import parse_progress

LOG_TAIL_LINES = 200
TIMEOUT_S = 30  # no API call may block a reconcile for longer (the client's default is to wait forever)

WAITING_REASONS_OK = {"ContainerCreating", "PodInitializing"}


class Gateway:
    """Kubernetes I/O for one operator process (a thin layer over the official client)."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        if api_client is None:
            config.load_config()  # in a pod: its ServiceAccount; elsewhere: KUBECONFIG
            api_client = client.ApiClient()
        self.api = api_client
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    # ---------------------------------------------------------------------------------------------- read
    def observe(self, body: dict[str, Any], spec: LongAlignRunSpec) -> Observed:
        """A snapshot of the run, its Jobs and their pods, and the volume claims the spec names but that do not
        exist. (Secrets are not read: the operator has no right to; a missing one shows as the pod's
        CreateContainerConfigError.)"""
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        run = Run(name=name, namespace=ns, uid=meta["uid"], labels=dict(meta.get("labels") or {}), spec=spec)
        selector = f"{LABEL_RUN}={name}"
        pods_by_job: dict[str, list[PodView]] = {}
        for pod in self.core.list_namespaced_pod(ns, label_selector=selector, _request_timeout=TIMEOUT_S).items:
            job = (pod.metadata.labels or {}).get("batch.kubernetes.io/job-name")
            if job:
                pods_by_job.setdefault(job, []).append(pod_view(pod))
        jobs = {}
        for j in self.batch.list_namespaced_job(ns, label_selector=selector, _request_timeout=TIMEOUT_S).items:
            view = job_view(j, pods_by_job.get(j.metadata.name, []))
            if view.state == "Active":
                view = self._with_progress(view, ns)
            jobs[view.name] = view
        return Observed(
            run=run, status=dict(body.get("status") or {}), generation=meta.get("generation", 0),
            now=datetime.now(timezone.utc),
            jobs=jobs, missing=tuple(self._missing(ns, spec)),
        )

    def _with_progress(self, job: JobView, ns: str) -> JobView:
        """The job with the newest progress line of its lead pod (rank 0 of a group), read from its log."""
        lead = next((p for p in job.pods if p.phase == "Running"), None)
        if lead is None:
            return job
        try:
            log = self.core.read_namespaced_pod_log(lead.name, ns, tail_lines=LOG_TAIL_LINES, timestamps=True,
                                                    _request_timeout=TIMEOUT_S)
        except ApiException:
            return job  # no log yet (or the node cannot serve it): progress stays as it was
        for text in reversed(log.splitlines()):
            stamp, _, rest = text.partition(" ")
            if (line := parse_progress(rest)) is not None:
                return replace(job, progress=line, progress_time=stamp[:19] + "Z")
        return job

    def _missing(self, ns: str, spec: LongAlignRunSpec):
        """Describe each PersistentVolumeClaim the spec names that does not exist."""
        storage = spec.storage
        claims = {"spec.storage.models": storage.models, "spec.storage.data": storage.data,
                  "spec.storage.checkpoints": storage.checkpoints, "spec.storage.results": storage.results,
                  "spec.storage.documents": storage.documents}
        for field, source in claims.items():
            if source is not None and not unless(404, self.core.read_namespaced_persistent_volume_claim,
                                                 source.claim_name, ns):
                yield f"PersistentVolumeClaim {source.claim_name!r} ({field}.claimName)"

    # --------------------------------------------------------------------------------------------- write
    def create(self, obj: dict[str, Any]) -> bool:
        """Create an object; False when it already existed (left untouched)."""
        ns = obj["metadata"]["namespace"]
        create = {
            "ConfigMap": self.core.create_namespaced_config_map, "Service": self.core.create_namespaced_service,
            "Job": self.batch.create_namespaced_job, "StatefulSet": self.apps.create_namespaced_stateful_set,
        }[obj["kind"]]
        return unless(409, create, ns, obj)

    def delete(self, kind: str, name: str, ns: str) -> bool:
        """Delete an object and its dependents in the background; False when it was already gone."""
        delete = {
            "ConfigMap": self.core.delete_namespaced_config_map, "Service": self.core.delete_namespaced_service,
            "Job": self.batch.delete_namespaced_job, "StatefulSet": self.apps.delete_namespaced_stateful_set,
        }[kind]
        return unless(404, delete, name, ns, propagation_policy="Background")

    def delete_run(self, name: str, ns: str) -> None:
        """Delete the run itself (its children follow through their owner references)."""
        unless(404, self.custom.delete_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name,
               propagation_policy="Background")


def unless(status: int, call, *args: Any, **kwargs: Any) -> bool:
    """Make an API call (with the gateway's timeout); False when it fails with ``status`` (404: already gone,
    409: already exists), True when it succeeds; any other error is raised."""
    try:
        call(*args, **kwargs, _request_timeout=TIMEOUT_S)
        return True
    except ApiException as e:
        if e.status == status:
            return False
        raise


def job_view(job, pods: list[PodView]) -> JobView:
    """Reduce a Job to what the planner needs."""
    state, reason, message = "Active", None, None
    for c in job.status.conditions or []:
        if c.status == "True" and c.type in ("Complete", "Failed"):
            state, reason, message = c.type, c.reason, c.message
    if state == "Active" and job.spec.suspend:
        state = "Suspended"
    return JobView(name=job.metadata.name, state=state, reason=reason, message=message,
                   pods=tuple(sorted(pods, key=lambda p: p.name)))


def pod_view(pod) -> PodView:
    """Reduce a pod to its phase, why it is not running, and how its container ended."""
    reason = message = termination = exit_code = None
    for c in pod.status.conditions or []:
        if c.type == "PodScheduled" and c.status == "False":
            reason, message = c.reason, c.message
    for cs in pod.status.container_statuses or []:
        waiting, terminated = cs.state.waiting, cs.state.terminated
        if waiting and waiting.reason and waiting.reason not in WAITING_REASONS_OK:
            reason, message = waiting.reason, waiting.message
        if terminated:
            termination, exit_code = terminated.message, terminated.exit_code
    return PodView(name=pod.metadata.name, phase=pod.status.phase or "Pending", reason=reason, message=message,
                   termination_message=termination, exit_code=exit_code)

