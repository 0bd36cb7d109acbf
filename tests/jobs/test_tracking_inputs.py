"""Trial runs of one sweep start at the same moment and each logs the sweep's dataset as its MLflow input."""
import threading
import uuid

import pytest

from jobs import tracking
from jobs.spec import parse_spec


@pytest.mark.parametrize("sweep", range(3))  # the race, when there is one, is hit in some rounds, not all
def test_trials_starting_together_all_log_the_dataset_input(mlflow_uri, sweep):
    # MLflow's store inserts a dataset it has not seen in the experiment yet; two runs logging a new one at once
    # race on its unique key and one gets an IntegrityError. The sweep run logs it first, so trials only link it.
    spec = parse_spec({"name": "inputs", "dataset": {"kind": "digits"},
                       "grid": {"arch": ["digits_cnn"], "binarizer": ["fp"], "seed": list(range(8))}})
    c = tracking.client(mlflow_uri)
    exp_id = uuid.uuid4().hex[:12]
    parent = tracking.ensure_parent_run(c, exp_id, spec)
    start, errors, run_ids = threading.Barrier(8), [], []

    def start_trial(trial):
        start.wait()
        try:
            run_ids.append(tracking.ensure_trial_run(tracking.client(mlflow_uri), exp_id, parent, spec, trial))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=start_trial, args=(t,)) for t in spec.trials()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(run_ids) == 8
    for run_id in run_ids + [parent]:
        (inp,) = c.get_run(run_id).inputs.dataset_inputs
        assert inp.dataset.name == "digits"
