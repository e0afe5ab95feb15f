"""A whole LongAlignRun on real pods, through the helm-installed operator, with a fault in every stage.

manifests/examples/tiny-cluster.yaml on the real nodes (hack/localcluster/tiny_run.py prepares its namespace):
the teacher StatefulSet serves the tiny Llama with vLLM's CPU build, the generator writes to the data volume,
training is an Indexed Job of 2 pods on the 2 real nodes (torchrun rendezvous through the headless Service,
DeepSpeed ZeRO-3 over gloo), evaluation serves the export with vLLM and asks the judge, a vLLM server behind
Service ``judge``. The tests below share that one run (one set of vLLM start-ups: the budget) and follow it in
order; each injects one fault into the stage running at that moment and checks that it ends in a named state with
nothing lost:

1. the generator's container SIGKILLed mid-generation: the next attempt loses and duplicates no sample;
2. a training pod deleted after a checkpoint: the next attempt resumes from it;
3. a node's kubelet stopped while a training pod runs there: NodeLost within the node controller's grace period,
   and training resumes once the node is back;
4. Kueue preempting training for a higher-priority Job: the pods checkpoint the step they are in on SIGTERM,
   the stage is Preempted (no failure), and it resumes from that step once Kueue admits it again;
5. the operator's container SIGKILLed mid-stage: it carries on, no duplicate Jobs or pods;
6. the judge unreachable: evaluation fails its attempt without a score, and scores once the judge is back;
7. the run succeeds with the results ``longalign run`` reports (tests/run_results.py), and its Events, rows and
   logs tell the story.

The run's stages are admitted by real Kueue (its Jobs carry the LocalQueue's name), from a ClusterQueue of the
real nodes' 2 stand-in GPUs.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from run_results import RESULT_FIELDS

from localcluster import LocalCluster, images, kueue, tiny_run, wait_for
from localcluster.realnode import RealNode

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

NAME = "tiny-cluster"
NAMESPACE = "real-run"
CHECKPOINT_EVERY = 8
EPOCHS = 22  # about 170 steps of about 1 s: the third attempt, after the kubelet's 50 s, trains until preempted
NODE_GRACE_S = 50  # kube-controller-manager's --node-monitor-grace-period (the default)
QUEUE = "real"  # the LocalQueue of the run's namespace, on ClusterQueue real-run: the real nodes' 2 GPUs


@dataclass
class RealRun:
    """The shared run and what was seen of it."""

    cluster: LocalCluster
    namespace: str
    rows: list[str] = field(default_factory=list)
    """Each new ``kubectl get lar`` row seen."""
    headlines: list[tuple] = field(default_factory=list)
    """(phase, progress, eta, loss) of the status at each poll."""
    t0: float = field(default_factory=time.monotonic)

    def get(self) -> dict:
        return self.cluster.get("lar", NAME, "-n", self.namespace)

    def stage(self, stage: str) -> dict:
        return self.get().get("status", {}).get("stages", {}).get(stage) or {}

    def until(self, what: str, predicate: Callable[[dict], object], timeout: float = 600):
        """Follow the run (recording its rows) until ``predicate(run)`` is truthy; return that value."""
        found: list[object] = []

        def check(run: dict) -> bool:
            st = run.get("status", {})
            self.headlines.append((st.get("phase"), st.get("progress"), st.get("eta"), st.get("loss")))
            value = predicate(run)
            if value:
                found.append(value)
            return bool(value)

        tiny_run.follow(self.cluster, self.namespace, NAME, until=check, timeout=timeout, show=self._row)
        print(f"[{time.monotonic() - self.t0:6.0f} s] {what}", flush=True)
        return found[-1]

    def _row(self, row: str) -> None:
        if not row.startswith("("):
            self.rows.append(row)
            print(f"  {row}", flush=True)

    def pods(self, stage: str, attempt: int) -> list[dict]:
        selector = f"longalign.dev/stage={stage},longalign.dev/attempt={attempt},longalign.dev/run={NAME}"
        return self.cluster.get("pods", "-n", self.namespace, "-l", selector)["items"]

    def volume(self, claim: str) -> Path:
        return self.cluster.volume_dir(self.namespace, claim)

    def node(self, name: str) -> RealNode:
        return next(n for n in self.cluster.real_nodes if n.name == name)

    def sigkill(self, pod: dict) -> None:
        """SIGKILL the pod's (first) container where it runs, as the kernel's OOM killer would."""
        container = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
        self.node(pod["spec"]["nodeName"]).ctr("tasks", "kill", "--signal", "SIGKILL", container)

    def events(self) -> list[tuple[str, str]]:
        """(reason, message) of the run's Events in the order they were made (their timestamps have whole seconds,
        the resourceVersion the store's order)."""
        items = self.cluster.get("events", "-n", self.namespace, "--field-selector", f"involvedObject.name={NAME}")
        ordered = sorted(items["items"], key=lambda e: int(e["metadata"]["resourceVersion"]))
        return [(e["reason"], e["message"]) for e in ordered]


def fault_run_resource() -> dict:
    """The shipped example, trained long enough to checkpoint several times between the faults."""
    resource = tiny_run.example()
    training = resource["spec"]["training"]
    training.update(
        {"epochs": EPOCHS, "globalBatchSize": 2, "checkpointEverySteps": CHECKPOINT_EVERY, "backoffLimit": 3}
    )
    # one document at a time, each committed at once: the generator is surely mid-way when it is killed
    resource["spec"]["dataGeneration"]["settings"]["engine"]["concurrency"] = 1
    resource["spec"]["dataGeneration"]["settings"]["flush_interval_s"] = 0.1
    # the judge is unreachable on purpose in test 6: a short retry budget fails that attempt in seconds, not the
    # default's ~30 s per request (5 retries, backoff 1 s doubling)
    resource["spec"]["evaluation"]["settings"]["engine"].update({"max_retries": 2, "backoff_max_s": 2})
    resource["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": QUEUE}
    resource["spec"]["workloadPriorityClass"] = "team-low"
    return resource


@pytest.fixture(scope="module")
def real_run(cluster: LocalCluster):
    t0 = time.monotonic()
    cluster.kubectl("create", "namespace", NAMESPACE)
    wait_for(
        lambda: cluster.kubectl("get", "sa", "default", "-n", NAMESPACE, check=False).returncode == 0,
        30,
        "the namespace's default ServiceAccount",
    )
    cluster.apply(*kueue.team_priorities())
    cluster.create_queues("real-run", kueue.real_node_quotas(2), {NAMESPACE: QUEUE})
    tiny_run.install_operator_chart(cluster, NAMESPACE)
    resource = fault_run_resource()
    tiny_run.prepare_namespace(cluster, NAMESPACE, resource)
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(resource))
    run = RealRun(cluster, NAMESPACE)
    yield run
    print(f"the real run's module took {time.monotonic() - t0:.0f} s", flush=True)
    keep_logs(cluster, cluster.dir / "real-run")
    cluster.helm("uninstall", "longalign", "-n", NAMESPACE, "--timeout", "120s", check=False)
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false")
    wait_for(
        lambda: cluster.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0,
        180,
        f"namespace {NAMESPACE} to be deleted",
    )


def keep_logs(cluster: LocalCluster, folder: Path) -> None:
    """The namespace's pods, events and every pod's log, into ``folder`` (the cluster's logs are kept there)."""
    folder.mkdir(parents=True, exist_ok=True)
    for what in ("pods", "events", "jobs"):
        text = cluster.kubectl("get", what, "-n", NAMESPACE, "-o", "wide", check=False).stdout
        (folder / f"{what}.txt").write_text(text)
    (folder / "run.json").write_text(cluster.kubectl("get", "lar", NAME, "-n", NAMESPACE, "-o", "json").stdout)
    for pod in cluster.get("pods", "-n", NAMESPACE)["items"]:
        name = pod["metadata"]["name"]
        for previous in ("", "--previous"):
            out = cluster.kubectl("logs", "-n", NAMESPACE, name, *([previous] if previous else []), check=False)
            if out.stdout:
                (folder / f"{name}{previous}.log").write_text(out.stdout)
    print(f"the real run's pods, events and logs: {folder}", flush=True)


def samples(data: Path) -> list[tuple[str, str]]:
    """(document, prompt) of every sample committed so far: in the shards its manifest lists."""
    manifest = data / NAME / "manifest.json"
    if not manifest.exists():
        return []
    out = []
    for shard in json.loads(manifest.read_text())["shards"]:
        for line in (data / NAME / "shards" / shard["file"]).read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                out.append((record["meta"]["doc_id"], record["messages"][0]["content"]))
    return out


def test_1_the_teacher_is_ready_by_its_probe_and_a_killed_generator_loses_and_duplicates_no_sample(real_run):
    data = real_run.volume("data")
    teacher = real_run.until(
        "the teacher Ready",
        lambda _: tiny_run.ready_pod(
            real_run.cluster, NAMESPACE, f"longalign.dev/run={NAME},longalign.dev/stage=teacher"
        ),
        timeout=600,
    )
    assert teacher["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health"
    before = real_run.until(
        "2 documents committed", lambda _: len({d for d, _ in samples(data)}) >= 2 and samples(data)
    )
    [generator] = real_run.pods("dataGeneration", 1)
    real_run.sigkill(generator)
    stage = real_run.until(
        "data generation succeeded",
        lambda run: run["status"]["stages"]["dataGeneration"]["state"] == "Succeeded" and run,
    )["status"]["stages"]["dataGeneration"]
    assert (stage["attempts"], stage["failures"]) == (2, 1)
    final = [json.loads(line) for line in (data / NAME / "data.jsonl").read_text().splitlines()]
    long = [(r["meta"]["doc_id"], r["messages"][0]["content"]) for r in final if "doc_id" in r.get("meta", {})]
    assert len(long) == len(set(long)), "a sample was written twice"
    assert set(before) <= set(long), "a sample committed before the kill was lost"
    assert stage["summary"]["samples"] == len(final)
    retry = [m for r, m in real_run.events() if r == "StageRetrying" and m.startswith("dataGeneration")]
    assert retry and "exited with code 137" in retry[0], retry


def checkpoint_step(checkpoints: Path) -> int:
    """The step of the newest complete checkpoint training wrote (0 before the first)."""
    latest = checkpoints / NAME / "checkpoints" / "latest"
    return int(latest.read_text().strip().rsplit("-", 1)[-1]) if latest.exists() else 0


def resumed_from(run: RealRun, attempt: int) -> int | None:
    """The step attempt ``attempt`` says it resumed from (its lead pod's log), None until it says so."""
    pods = [
        p
        for p in run.pods("training", attempt)
        if p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index") == "0"
    ]
    if not pods:
        return None
    log = run.cluster.kubectl("logs", "-n", NAMESPACE, pods[0]["metadata"]["name"], check=False).stdout
    marker = "resumed from step "
    return int(log[log.index(marker) + len(marker) :].split()[0]) if marker in log else None


def test_2_training_runs_on_both_real_nodes_and_resumes_from_its_checkpoint_after_a_deleted_pod(real_run):
    checkpoints = real_run.volume("checkpoints")
    pods = real_run.until(
        "training running on 2 nodes",
        lambda _: (p := real_run.pods("training", 1)) and all(x["status"].get("phase") == "Running" for x in p) and p,
    )
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["real-node-0", "real-node-1"]
    step = real_run.until("a checkpoint", lambda _: checkpoint_step(checkpoints))
    victim = next(p for p in pods if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1")
    real_run.cluster.kubectl("delete", "pod", "-n", NAMESPACE, victim["metadata"]["name"], "--wait=false")
    resumed = real_run.until("attempt 2 resumed", lambda _: resumed_from(real_run, 2))
    assert resumed >= step
    stage = real_run.stage("training")
    assert (stage["attempts"], stage["failures"]) == (2, 1)
    retry = [m for r, m in real_run.events() if r == "StageRetrying" and m.startswith("training")]
    assert "PodDeleted" in retry[0], retry


def test_3_a_node_whose_kubelet_stops_is_named_lost_and_training_resumes_once_it_is_back(real_run):
    checkpoints = real_run.volume("checkpoints")
    before = checkpoint_step(checkpoints)
    step = real_run.until("a newer checkpoint", lambda _: (s := checkpoint_step(checkpoints)) > before and s)
    pod = next(p for p in real_run.pods("training", 2) if p["spec"].get("nodeName"))
    node = pod["spec"]["nodeName"]
    real_run.cluster.stop_kubelet(node)
    t0 = time.monotonic()
    try:
        real_run.until(
            "the attempt failed", lambda run: run["status"]["stages"]["training"]["failures"] >= 2, timeout=180
        )
        noticed = time.monotonic() - t0
    finally:
        real_run.cluster.start_kubelet(node)
    print(f"node loss noticed {noticed:.0f} s after the kubelet stopped (grace period {NODE_GRACE_S} s)")
    assert noticed < NODE_GRACE_S + 30
    retry = [m for r, m in real_run.events() if r == "StageRetrying" and m.startswith("training")]
    assert f"NodeLost: node {node}" in retry[1], retry
    resumed = real_run.until("attempt 3 resumed", lambda _: resumed_from(real_run, 3), timeout=600)
    assert resumed >= step


def preempting_job(name: str, seconds: int) -> dict:
    """A Job of another team's, of higher priority, in the run's queue: one pod on a real node holding one of its
    GPUs for ``seconds``."""
    labels = {"kueue.x-k8s.io/queue-name": QUEUE, "kueue.x-k8s.io/priority-class": "team-high"}
    container = {
        "name": "main",
        "image": images.local_reference("busybox"),
        "imagePullPolicy": "Never",
        "command": ["sleep", str(seconds)],
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
    }
    pod = {"restartPolicy": "Never", "containers": [container], **tiny_run.ON_REAL_NODES}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {"suspend": True, "backoffLimit": 0, "template": {"spec": pod}},
    }


def test_4_kueue_preempts_training_which_checkpoints_its_step_on_sigterm_and_resumes_from_it(real_run):
    cluster, checkpoints = real_run.cluster, real_run.volume("checkpoints")
    real_run.until("training attempt 3 running", lambda _: resumed_from(real_run, 3))
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(preempting_job("urgent", 15)))
    periodic = checkpoint_step(checkpoints)
    stage = real_run.until(
        "training preempted, attempt 4 queued",
        lambda run: (st := run["status"]["stages"]["training"]).get("preemptions") == 1 and st["attempts"] == 4 and st,
        timeout=180,
    )
    assert (stage["state"], stage["reason"], stage["failures"]) == ("Preempted", "Preempted", 2), stage
    kept = int(re.search(r"(\d+) steps kept", stage["message"])[1])
    assert kept == checkpoint_step(checkpoints) >= periodic  # the checkpoint written on SIGTERM is the newest
    resumed = real_run.until("attempt 4 resumed", lambda _: resumed_from(real_run, 4), timeout=300)
    assert resumed == kept
    # The stop cost the preempted attempt measured (its slowest step and checkpoint, the one on SIGTERM included)
    # sets the next attempt's grace period, instead of the 300 s before anything was measured.
    stage = real_run.stage("training")
    grace_4 = real_run.pods("training", 4)[0]["spec"]["terminationGracePeriodSeconds"]
    print(f"stop cost measured: {stage['stopSeconds']} s; attempt 4's grace period {grace_4} s", flush=True)
    assert stage["stopSeconds"] > 0 and 60 <= grace_4 == stage["gracePeriodSeconds"] < 300, stage
    urgent = cluster.get("job", "urgent", "-n", NAMESPACE)
    assert urgent["status"].get("succeeded") == 1 and not urgent["spec"]["suspend"]  # Kueue admitted it
    story = [(r, m) for r, m in real_run.events() if m.startswith("training")]
    assert any(r == "StagePreempted" for r, _ in story), story
    assert any(r == "StageRequeued" and f"{kept} steps kept" in m for r, m in story), story


def test_5_a_sigkilled_operator_carries_on_without_duplicate_jobs_or_pods(real_run):
    real_run.until("training attempt 4 running", lambda _: resumed_from(real_run, 4))
    [operator] = real_run.cluster.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/instance=longalign")["items"]
    real_run.sigkill(operator)
    wait_for(
        lambda: (
            (p := tiny_run.ready_pod(real_run.cluster, NAMESPACE, "app.kubernetes.io/instance=longalign"))
            and p["status"]["containerStatuses"][0]["restartCount"] >= 1
        ),
        120,
        "the operator restarted and Ready",
        interval=1,
    )
    time.sleep(10)  # several reconcile rounds of the new process
    jobs = real_run.cluster.get("jobs", "-n", NAMESPACE, "-l", f"longalign.dev/run={NAME}")["items"]
    names = sorted(j["metadata"]["name"] for j in jobs)
    assert len(names) == len(set(names))
    stage = real_run.stage("training")
    if stage["state"] != "Succeeded":  # still the same attempt, with its 2 pods
        assert stage["attempts"] == 4
        assert len([p for p in real_run.pods("training", 4) if not p["metadata"].get("deletionTimestamp")]) == 2
    assert not real_run.pods("training", 5)


def test_6_an_unreachable_judge_fails_the_evaluation_attempt_without_a_score_and_it_scores_once_back(real_run):
    cluster = real_run.cluster
    cluster.kubectl(
        "patch", "service", "judge", "-n", NAMESPACE, "-p", json.dumps({"spec": {"selector": {"app": "away"}}})
    )
    try:
        run = real_run.until(
            "evaluation attempt 1 failed",
            lambda run: (run["status"]["stages"].get("evaluation") or {}).get("failures", 0) >= 1 and run,
            timeout=900,
        )
        assert run["status"]["results"].get("longBenchChatScore") is None
    finally:
        cluster.kubectl(
            "patch", "service", "judge", "-n", NAMESPACE, "-p", json.dumps({"spec": {"selector": {"app": "judge"}}})
        )
    retry = [m for r, m in real_run.events() if r == "StageRetrying" and m.startswith("evaluation")]
    assert "exited with code 1" in retry[0] and "judge" in retry[0], retry
    run = real_run.until("the run finished", lambda run: run["status"]["phase"] in ("Succeeded", "Failed") and run)
    assert run["status"]["phase"] == "Succeeded", run["status"]
    summary = run["status"]["stages"]["evaluation"]["summary"]
    assert summary["reused"] > 0  # the answers of attempt 1 were kept, only the judging was redone
    assert 1 <= run["status"]["results"]["longBenchChatScore"] <= 10


def test_7_the_run_reports_what_longalign_run_reports_and_its_story(real_run):
    status = real_run.get()["status"]
    assert status["phase"] == "Succeeded"
    assert set(status["results"]) == RESULT_FIELDS
    assert {s: (v["state"], v["attempts"], v["failures"]) for s, v in status["stages"].items()} == {
        "dataGeneration": ("Succeeded", 2, 1),
        "training": ("Succeeded", 4, 2),
        "evaluation": ("Succeeded", 2, 1),
    }
    assert status["stages"]["training"]["preemptions"] == 1
    training = status["stages"]["training"]["summary"]
    assert training["world_size"] == 2 and training["zero_stage"] == 3
    # what the trainer chose is in the status from its first progress line on, and told once in an Event
    setting = status["stages"]["training"]["setting"]
    assert setting["zero_stage"] == 3 and setting["description"] == training["description"]
    assert [m for r, m in real_run.events() if r == "StageSetting"] == [f"training: {training['description']}"]
    # the loss trajectory continues across the attempts: every step logged once, in order
    log = real_run.volume("checkpoints") / NAME / "train-log-rank0.jsonl"
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, training["total_steps"] + 1))
    assert status["results"]["finalLoss"] < training["first_loss"]
    assert status["results"]["lastCheckpointStep"] == training["total_steps"]

    # the Events tell each stage's story: its attempts started, the failed ones retried, then success, stage by
    # stage (within a stage a retry and the next start share a second, so only their counts are compared)
    story = [
        (m.split(":")[0], r) for r, m in real_run.events() if r in ("StageStarted", "StageRetrying", "StageSucceeded")
    ]
    stages = [stage for stage, _ in story]
    assert stages == sorted(stages, key=["dataGeneration", "training", "evaluation"].index), story
    for stage, (attempts, failures) in {"dataGeneration": (2, 1), "training": (4, 2), "evaluation": (2, 1)}.items():
        reasons = [r for s, r in story if s == stage]
        assert reasons[0] == "StageStarted" and reasons[-1] == "StageSucceeded", (stage, reasons)
        assert (reasons.count("StageStarted"), reasons.count("StageRetrying")) == (attempts, failures), reasons

    # `kubectl get lar` showed training moving: several progress values, an ETA and the live loss
    training = [h for h in real_run.headlines if h[0] == "Training"]
    assert len({progress for _, progress, _, _ in training}) >= 3
    assert any(eta for _, _, eta, _ in training) and any(loss for _, _, _, loss in training)
    assert any(" Training " in row for row in real_run.rows)
    # `kubectl logs` of each stage's lead pod shows its progress lines
    for stage, attempt in (("training", 4), ("evaluation", 2)):
        lead = next(
            p
            for p in real_run.pods(stage, attempt)
            if p["metadata"].get("annotations", {}).get("batch.kubernetes.io/job-completion-index", "0") == "0"
        )
        log = real_run.cluster.kubectl("logs", "-n", NAMESPACE, lead["metadata"]["name"]).stdout
        assert '{"longalign": "progress"' in log, (stage, log[-2000:])
