"""What `sibnn demo` hands a user: MLflow links that open the training view, progress a log can show, experiments
and runs that say what they are in MLflow."""
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from jobs import tracking
from jobs.presets import preset
from console.cli import trial_events
from service.results import experiment_link, run_link, ui_link


def _route_query(link: str) -> tuple[str, dict]:
    """MLflow's UI is a hash router: the route and its query live in the fragment."""
    frag = urlsplit(link).fragment
    route, _, query = frag.partition("?")
    return route, parse_qs(query)


def test_every_mlflow_link_opens_the_training_view():
    ui = "http://127.0.0.1:5000"
    for link, route in ((experiment_link(ui, "7"), "/experiments/7"),
                        (run_link(ui, "7", "abc"), "/experiments/7/runs/abc"),
                        (ui_link(ui + "/"), "/experiments")):
        assert link.startswith(ui + "/#/")
        assert _route_query(link) == (route, {"workflowType": ["machine_learning"]})
    assert experiment_link(ui, None) is None and run_link(ui, "7", None) is None


def _trial(state, epoch, top1=None, tid="t1"):
    return {"trial_id": tid, "state": state, "epoch": epoch, "epochs": 10,
            "metrics": {} if top1 is None else {"val_top1": top1}}


def test_trial_events_are_one_line_per_start_epoch_and_end():
    seen: dict = {}
    assert trial_events(seen, [_trial("PENDING", 0)]) == []
    assert trial_events(seen, [_trial("RUNNING", 0)]) == ["t1: started"]
    assert trial_events(seen, [_trial("RUNNING", 1, 91.25)]) == ["t1: epoch 1/10 top-1 91.25"]
    assert trial_events(seen, [_trial("RUNNING", 1, 91.25)]) == [], "nothing new, nothing printed"
    # a trial seen first when already past epoch 3 and finished: every event it went through, once
    assert trial_events(seen, [_trial("FINISHED", 10, 94.5), _trial("FINISHED", 10, 93.0, tid="t2")]) == [
        "t1: epoch 10/10 top-1 94.50", "t1: finished, top-1 94.50",
        "t2: started", "t2: epoch 10/10 top-1 93.00", "t2: finished, top-1 93.00"]
    assert trial_events(seen, [_trial("FINISHED", 10, 94.5)]) == []
    assert trial_events({}, [_trial("FAILED", 0)]) == ["t1: started", "t1: failed"]


def test_demo_preset_keeps_the_authors_recipe_and_runs_in_five_rounds_of_five_on_two_cpus():
    from jobs.sweep import driver_resources, max_concurrent_trials

    spec = preset("mnist5k")
    assert spec.recipe.name == "aaai" and spec.recipe.weight_grad == "authors"  # the training rules are the defaults
    assert len(spec.trials()) == 25 and len(spec.grid.seed) == 5  # five seeds: paired intervals with 4 df
    # 25 trials, five at a time on the embedded stack's 2 CPUs: five full rounds, none left alone in a sixth
    assert max_concurrent_trials(spec, {"CPU": 2.0}) == 5
    # each trial trains in its Tune trial's process, which holds the trial's CPU share (no Ray Train run)
    assert spec.resources.runner == "tune" and driver_resources({"CPU": 2.0}, spec) == {"CPU": 0.35}


def test_trial_run_names_are_readable():
    names = [tracking.run_name(t) for t in preset("mnist5k").trials()]
    assert "Si-BNN ρ=0.3 · seed 0 · mlp_small" in names and "sign-BNN · seed 1 · mlp_small" in names
    assert "FP · seed 0 · mlp_small" in names and len(set(names)) == len(names)


@pytest.mark.slow
def test_mlflow_experiment_says_what_it_is_and_runs_have_readable_names(servers):
    c = tracking.client(servers.mlflow.url)
    exp_id = uuid.uuid4().hex[:12]
    spec = preset("mnist5k", grid={"binarizer": ["sibnn"], "rho": [0.3], "seed": [0]})
    parent = tracking.ensure_parent_run(c, exp_id, spec)
    run = tracking.ensure_trial_run(c, exp_id, parent, spec, spec.trials()[0])
    exp = c.get_experiment_by_name(tracking.experiment_name(exp_id))
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.tags["mlflow.note.content"].startswith(spec.name) and spec.description in exp.tags["mlflow.note.content"]
    assert c.get_run(run).info.run_name == "Si-BNN ρ=0.3 · seed 0 · mlp_small"
    assert c.get_run(parent).info.run_name == spec.name
    # an experiment the service made before the spec was known gets its kind and description filled in
    other = uuid.uuid4().hex[:12]
    c.create_experiment(tracking.experiment_name(other), tags={tracking.TAG_EXPERIMENT: other})
    tracking.ensure_experiment(c, other, spec)
    tags = c.get_experiment_by_name(tracking.experiment_name(other)).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development" and spec.description in tags["mlflow.note.content"]
