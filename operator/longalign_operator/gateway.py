"""The one place that talks to the Kubernetes API: create and delete a run's children, read its lead pod's
progress, write its status.

What exists is not read here: the handlers keep Kopf indexes of every run's Jobs, pods and the namespaces'
claims, fed by watches (`cache.py`). Creating is idempotent (an object that already exists is left as it is:
names are deterministic), deleting tolerates objects already gone and always cascades (a Job's pods go with
it), so a retried or restarted reconcile converges without duplicates. Every write is recorded for the
caches until the watches show it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from longalign_operator.cache import Expectations, GonePods, WrittenStatus
from longalign_operator.plan import JobView
from longalign_operator.spec import GROUP, PLURAL, VERSION
from longalign_trainer.contract import parse_progress

LOG_TAIL_LINES = 200
TIMEOUT_S = 30  # no API call may block a reconcile for longer (the client's default is to wait forever)


class Gateway:
    """Kubernetes I/O for one operator process (a thin layer over the official client)."""

    def __init__(
        self, api_client: client.ApiClient | None = None, progress_every_s: float = 5.0, connections: int = 16
    ) -> None:
        if api_client is None:
            config.load_config()  # in a pod: its ServiceAccount; elsewhere: KUBECONFIG
            configuration = client.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = connections  # one per reconcile worker (default 10)
            api_client = client.ApiClient(configuration)
        self.api = api_client
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.expectations = Expectations()
        self.written = WrittenStatus()
        self.gone = GonePods()
        self.progress_every_s = progress_every_s
        self._progress: dict[tuple[str, str], tuple[float, JobView]] = {}
        self._progress_lock = threading.Lock()

    # ---------------------------------------------------------------------------------------------- read
    def with_progress(self, job: JobView, ns: str) -> JobView:
        """The job with the newest progress line of its lead pod (rank 0 of a group), read from its log at most
        every ``progress_every_s`` per Job (reconciles triggered by events in between reuse the last read)."""
        lead = next((p for p in job.pods if p.phase == "Running"), None)
        if lead is None:
            return job
        key = (ns, job.name)
        with self._progress_lock:
            read_at, last = self._progress.get(key, (float("-inf"), job))
        if time.monotonic() - read_at < self.progress_every_s:
            return replace(job, progress=last.progress, progress_time=last.progress_time)
        seen = job
        try:
            log = self.core.read_namespaced_pod_log(
                lead.name, ns, tail_lines=LOG_TAIL_LINES, timestamps=True, _request_timeout=TIMEOUT_S
            )
        except ApiException:
            log = ""  # no log yet (or the node cannot serve it): progress stays as it was
        for text in reversed(log.splitlines()):
            stamp, _, rest = text.partition(" ")
            if (line := parse_progress(rest)) is not None:
                seen = replace(job, progress=line, progress_time=stamp[:19] + "Z")
                break
        else:
            seen = replace(job, progress=last.progress, progress_time=last.progress_time)
        with self._progress_lock:
            self._progress[key] = (time.monotonic(), seen)
        return seen

    # --------------------------------------------------------------------------------------------- write
    def create(self, obj: dict[str, Any]) -> bool:
        """Create an object; False when it already existed (left untouched)."""
        ns, kind = obj["metadata"]["namespace"], obj["kind"]
        create = {
            "ConfigMap": self.core.create_namespaced_config_map,
            "Service": self.core.create_namespaced_service,
            "Job": self.batch.create_namespaced_job,
            "StatefulSet": self.apps.create_namespaced_stateful_set,
        }[kind]
        created = unless(409, create, ns, obj)
        if kind == "Job":
            self.expectations.created(ns, obj["metadata"]["name"])
        return created

    def delete(self, kind: str, name: str, ns: str) -> bool:
        """Delete an object and its dependents in the background; False when it was already gone."""
        delete = {
            "ConfigMap": self.core.delete_namespaced_config_map,
            "Service": self.core.delete_namespaced_service,
            "Job": self.batch.delete_namespaced_job,
            "StatefulSet": self.apps.delete_namespaced_stateful_set,
        }[kind]
        deleted = unless(404, delete, name, ns, propagation_policy="Background")
        if kind == "Job":
            self.expectations.deleted(ns, name)
            with self._progress_lock:
                self._progress.pop((ns, name), None)
        return deleted

    def patch_status(self, meta: dict[str, Any], patch: dict[str, Any]) -> None:
        """Merge-patch the run's status subresource and remember the result until the watch delivers it."""
        result = cast(
            dict[str, Any],
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], {"status": patch}, _request_timeout=TIMEOUT_S
            ),
        )
        self.written.record(meta["uid"], result["metadata"]["resourceVersion"], result.get("status") or {})

    def forget(self, uid: str, name: str, ns: str) -> None:
        """Drop what is remembered of a deleted run."""
        self.written.forget(uid)
        self.gone.forget(ns, name)
        with self._progress_lock:
            for key in [k for k in self._progress if k[0] == ns and k[1].startswith(f"{name}-")]:
                del self._progress[key]

    def delete_run(self, name: str, ns: str) -> None:
        """Delete the run itself (its children follow through their owner references)."""
        unless(
            404,
            self.custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            ns,
            PLURAL,
            name,
            propagation_policy="Background",
        )


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
