"""A real multi-node Ray cluster: a head and two worker nodes on this machine (separate ``ray start`` process
groups, each with its own temp dir, CPUs, ports and loopback address; token auth; tests/jobs/multinode.py), a
two-worker DDP trial (gloo) spread over the two worker nodes, checkpoints on S3 (moto's server), a real MLflow.

The trial's workers land on the worker nodes by their CPUs: the head has 1 CPU, of which the trial's Tune driver
holds 0.01, so a worker asking for 1 CPU fits only on a worker node, one per node.

1. A worker node's raylet SIGKILLed mid-run: the surviving rank's collective fails, Ray Train's controller counts
   one worker-group failure (``FailureConfig(max_failures=2)``) and restarts the group, whose placement waits for
   capacity (a group that cannot be placed within 60 s is retried without limit); when a replacement node joins,
   the trial resumes from its last checkpoint on S3; every epoch is in MLflow once, the job SUCCEEDED.
2. The head restarted, empty, at the same address: the service's reconciler finds its job gone and resubmits the
   experiment as attempt 2; the old worker nodes cannot join the new cluster (they exit once they give up on the
   old head), new ones do; attempt 2 restores the Tune experiment from S3 and resumes the trial from its checkpoint
   there (the new head has a new temp dir: nothing local is left to resume from).

Every node's HOME is the test's own folder, so nothing the jobs keep locally outlives the test.
"""
from __future__ import annotations

import base64
import re
import shlex
import sys
import time

import pytest

from console import stack
from jobs import tracking
from jobs.spec import parse_spec
from tests.jobs import multinode as mn

pytestmark = pytest.mark.slow

BUCKET = "sibnn-multinode"
NODE_A, NODE_B, NODE_C, NODE_D = "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"
EPOCHS = 6


def ddp_spec(name: str, epochs: int = EPOCHS):
    """One trial, two DDP workers of one CPU each (gloo): it needs both worker nodes."""
    return parse_spec({"name": name, "dataset": {"kind": "digits"},
                       "grid": {"arch": ["mlp_small"], "binarizer": ["sibnn"], "rho": [0.3], "seed": [0]},
                       "recipe": {"epochs": epochs, "batch_size": 8},
                       "resources": {"workers_per_trial": 2, "cpus_per_worker": 1}})


@pytest.fixture
def s3(tmp_path):
    moto = mn.start_moto(tmp_path, BUCKET)
    yield moto
    moto.server.stop()


class Cluster:
    """The head and the worker nodes this test started; ``stop`` stops each by its own process group."""

    def __init__(self, state_dir, env: dict):
        self.state_dir, self.env = state_dir, env
        self.head: stack.RayHead | None = None
        self.workers: dict[str, mn.WorkerNode] = {}

    def start_head(self, **kw) -> stack.RayHead:
        self.head = mn.start_head(self.state_dir, num_cpus=1, env=self.env, **kw)
        return self.head

    def add_worker(self, ip: str) -> mn.WorkerNode:
        self.workers[ip] = mn.start_worker_node(self.head, ip, self.state_dir, num_cpus=1, env=self.env)
        return self.workers[ip]

    def wait(self, ips: set[str], timeout: float = 180, tries: int = 3) -> None:
        """Until the nodes at ``ips`` have joined; one whose start failed (a port taken on this busy machine, the
        head's GCS too slow to answer in ``ray start``'s 30 s) is started again, up to ``tries`` times."""
        for attempt in range(1, tries + 1):
            try:
                return mn.wait_nodes(self.head, {mn.HEAD_IP, *ips}, timeout, [self.workers[ip] for ip in ips])
            except mn.NodeExited:
                if attempt == tries:
                    raise
                for ip in ips:
                    if not self.workers[ip].server.alive():
                        self.workers[ip].stop()
                        self.add_worker(ip)

    def stop_workers(self) -> None:
        for node in self.workers.values():
            node.stop()
        self.workers.clear()

    def stop(self) -> None:
        self.stop_workers()
        if self.head is not None:
            mn.stop_head(self.head)
            self.head = None


@pytest.fixture
def cluster(tmp_path, s3):
    home = tmp_path / "home"  # the nodes' (and so the jobs') HOME: ~/sibnn-runs and the like land here
    home.mkdir()
    c = Cluster(tmp_path / "ray", {**s3.env, "HOME": str(home)})
    try:
        yield c
    finally:
        c.stop()


def _submit(head: stack.RayHead, spec, experiment_id: str, mlflow_uri: str) -> str:
    """The job the service would submit (jobs.run on the head), with the storage on S3."""
    from ray.job_submission import JobSubmissionClient

    b64 = base64.b64encode(spec.model_dump_json().encode()).decode()
    entry = (f"{shlex.quote(sys.executable)} -m jobs.run --spec-b64 {b64} --experiment-id {experiment_id} "
             f"--storage-path s3://{BUCKET}/runs --mlflow-uri {mlflow_uri}")
    client = JobSubmissionClient(head.dashboard_url, headers={"Authorization": f"Bearer {head.token}"})
    return client.submit_job(entrypoint=entry, submission_id=f"{experiment_id}-1",
                             runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}})


def _job(head: stack.RayHead, submission_id: str):
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.dashboard_url, headers={"Authorization": f"Bearer {head.token}"})
    return client.get_job_info(submission_id), client.get_job_logs(submission_id)


def _epochs(c, experiment_id: str) -> tuple[str | None, list[int]]:
    runs = tracking.trial_runs(c, experiment_id)
    if not runs:
        return None, []
    run_id = runs[0].info.run_id
    return run_id, sorted(m.step for m in c.get_metric_history(run_id, "val_top1"))


def _resumes(log: str, trial_id: str) -> set[tuple[str, int]]:
    """(node address, epoch) of each Train worker process that resumed the trial from a checkpoint (rank 0 says
    so once; Ray Train's print patch can show the line twice in the driver's log)."""
    found = re.findall(r"\(RayTrainWorker pid=(\d+), ip=([\d.]+)\)[^\n]*sibnn: " + re.escape(trial_id)
                       + r" resumes from its checkpoint after epoch (\d+)", log)
    return {(ip, int(epoch)) for _pid, ip, epoch in set(found)}


def test_a_killed_worker_node_resumes_the_ddp_trial_from_its_s3_checkpoint_on_a_replacement(cluster, s3,
                                                                                            mlflow_uri, tmp_path):
    spec = ddp_spec("multinode raylet kill")
    (trial,) = spec.trials()
    exp_id = f"mnkill{int(time.time())}"
    head = cluster.start_head()
    cluster.add_worker(NODE_A)
    cluster.add_worker(NODE_B)
    cluster.wait({NODE_A, NODE_B})
    sid = _submit(head, spec, exp_id, mlflow_uri)
    c = tracking.client(mlflow_uri)

    # the trial spans both worker nodes; wait until two epochs (and so their checkpoints) are reported
    spans: set[tuple[str, ...]] = set()
    deadline = time.monotonic() + 300
    while True:
        info, log = _job(head, sid)
        assert info.status.value in ("PENDING", "RUNNING") and time.monotonic() < deadline, (info, log[-3000:])
        spans.add(tuple(mn.train_worker_ips(head)))
        run_id, steps = _epochs(c, exp_id)
        if len(steps) >= 2:
            break
        time.sleep(0.5)
    # one DDP worker on each worker node (a group is seen while its workers start, one by one), none on the head
    assert (NODE_A, NODE_B) in spans and all(mn.HEAD_IP not in ips for ips in spans), spans

    killed_after = max(steps)
    cluster.workers[NODE_A].kill_raylet()
    # the worker group is gone and cannot be placed again on one worker node: the trial waits for capacity
    deadline = time.monotonic() + 120
    while NODE_A in {n["node_ip"] for n in mn.alive_nodes(head)} or len(mn.train_worker_ips(head)) == 2:
        assert time.monotonic() < deadline, ("the dead node is still listed", mn.alive_nodes(head))
        time.sleep(0.5)
    assert max(_epochs(c, exp_id)[1]) <= killed_after + 1  # nothing trains on half a cluster

    cluster.add_worker(NODE_C)  # capacity returns: a replacement node with the same resources
    cluster.wait({NODE_B, NODE_C})
    spans = set()
    deadline = time.monotonic() + 420
    while True:
        info, log = _job(head, sid)
        if info.status.value not in ("PENDING", "RUNNING"):
            break
        assert time.monotonic() < deadline, log[-3000:]
        spans.add(tuple(mn.train_worker_ips(head)))
        time.sleep(1)
    assert info.status.value == "SUCCEEDED", (info.message, log[-4000:])
    # the resumed group runs on the survivor and the replacement
    assert (NODE_B, NODE_C) in spans and all(mn.HEAD_IP not in ips and NODE_A not in ips for ips in spans), spans

    # resumed from the checkpoint, not from scratch: one restart, from a reported epoch
    (resumed,) = _resumes(log, trial.trial_id)  # one restart: a worker on the survivor or the replacement
    assert resumed[0] in (NODE_B, NODE_C) and 1 <= resumed[1] <= killed_after, (resumed, killed_after)
    run_id, steps = _epochs(c, exp_id)
    assert steps == list(range(1, EPOCHS + 1)), steps  # every epoch logged exactly once
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert tracking.parent_run(c, exp_id).info.status == "FINISHED"
    ckpts = [k for k in s3.keys(BUCKET, f"runs/{exp_id}-{trial.trial_id}/")
             if k.rsplit("/", 2)[-2].startswith("checkpoint_") and k.endswith("/checkpoint.pt")]
    assert ckpts, s3.keys(BUCKET, "runs/")
    best = run.data.tags[tracking.TAG_BEST_CHECKPOINT]
    assert best.startswith(f"s3://{BUCKET}/runs/{exp_id}-{trial.trial_id}/checkpoint_"), best
    assert not list((tmp_path / "home").rglob("checkpoint.pt")), "checkpoints must not land on a local disk"


def test_a_restarted_head_gets_the_next_attempt_which_resumes_the_trial_from_s3(cluster, s3, mlflow_uri, tmp_path):
    from service.settings import Settings
    from tests.service.conftest import API_TOKEN, AUTH, api_client, wait_status

    head = cluster.start_head()
    cluster.add_worker(NODE_A)
    cluster.add_worker(NODE_B)
    cluster.wait({NODE_A, NODE_B})
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'service.db'}",
                        ray_address=head.dashboard_url, ray_auth_token=head.token, mlflow_tracking_uri=mlflow_uri,
                        api_token=API_TOKEN, storage_path=f"s3://{BUCKET}/runs", reconcile_interval_s=1.0)
    epochs = 4
    spec = ddp_spec("multinode head restart", epochs=epochs)
    (trial,) = spec.trials()
    with api_client(settings) as api:
        r = api.post("/experiments", json=spec.model_dump(mode="json"), headers=AUTH)
        assert r.status_code == 202, r.text
        exp_id = r.json()["id"]
        deadline = time.monotonic() + 300
        while True:  # until the trial has checkpointed twice
            exp = api.get(f"/experiments/{exp_id}").json()
            if any((t["epoch"] or 0) >= 2 for t in exp["trials"] or []):
                break
            assert exp["status"] in ("PENDING", "RUNNING") and time.monotonic() < deadline, exp
            time.sleep(1)
        assert mn.train_worker_ips(head) == [NODE_A, NODE_B]
        c = tracking.client(mlflow_uri)
        checkpointed = max(_epochs(c, exp_id)[1])

        # the head goes and comes back at the same address, empty; its old worker nodes cannot rejoin a new
        # cluster (they exit once they give up on the old one), new ones join it
        mn.stop_head(cluster.head)
        head = cluster.start_head(token=head.token, ports=head.ports)
        cluster.add_worker(NODE_C)
        cluster.add_worker(NODE_D)
        cluster.wait({NODE_C, NODE_D})

        done = wait_status(lambda: api.get(f"/experiments/{exp_id}").json(), ("SUCCEEDED",), timeout=480)
        assert done["attempt"] == 2
        assert [a["ray_status"] for a in done["attempts"]] == ["LOST", "SUCCEEDED"]
        assert {t["state"] for t in done["trials"]} == {"FINISHED"}
        log = api.get(f"/experiments/{exp_id}/logs").text

    # attempt 2 restored the Tune experiment from S3 and resumed the trial from its checkpoint there: at most the
    # epoch in flight when the head went is trained again
    assert "Restoring the run from the latest experiment state file" in log, log[-4000:]
    (resumed,) = _resumes(log, trial.trial_id)  # one restart, on a new worker node
    assert resumed[0] in (NODE_C, NODE_D) and 1 <= resumed[1] <= checkpointed + 1, (resumed, checkpointed)
    runs = tracking.trial_runs(c, exp_id)
    assert len(runs) == 1  # the same MLflow run, resumed by tag
    steps = sorted(m.step for m in c.get_metric_history(runs[0].info.run_id, "val_top1"))
    assert steps == list(range(1, epochs + 1)), steps  # every epoch exactly once
    assert runs[0].info.status == "FINISHED"
    assert any(k.endswith("/checkpoint.pt") for k in s3.keys(BUCKET, f"runs/{exp_id}-{trial.trial_id}/checkpoint_"))
    assert not list((tmp_path / "home").rglob("checkpoint.pt")), "checkpoints must not land on a local disk"
