"""A teacher trained before (``teacher.model_uri``): one FP model distils into many experiments without being
trained again; the spec validates it, the sweep resolves it on MLflow and each training process downloads it."""
import pytest

from jobs import tracking
from jobs.spec import SpecError, is_external, parse_spec

BASE = {"name": "kd", "dataset": {"kind": "digits"},
        "grid": {"arch": ["digits_cnn"], "binarizer": ["sibnn", "fp"], "rho": [0.3], "seed": [0]},
        "recipe": {"epochs": 1, "batch_size": 64}, "resources": {"runner": "tune", "cpus_per_worker": 0.5}}


def test_a_given_teacher_is_no_trial_of_the_experiment_and_the_binary_trials_need_its_uri():
    spec = parse_spec({**BASE, "teacher": {"model_uri": "models:/sibnn-digits_cnn-fp/3"}})
    (wave,) = spec.waves()  # nothing to wait for: the teacher exists
    assert [(t.trial_id, t.needs) for t in wave] == [
        ("digits_cnn-sibnn-rho0.3-s0", {"teacher": "models:/sibnn-digits_cnn-fp/3"}), ("digits_cnn-fp-s0", {})]
    assert spec.teacher_trial() is None and is_external(wave[0].needs["teacher"])
    assert spec.model_dump()["teacher"] == {"model_uri": "models:/sibnn-digits_cnn-fp/3"}
    assert parse_spec(spec.model_dump_json()) == spec
    for uri in ("models:/m-0123abcd", "models:/sibnn-digits_cnn-fp@champion", "runs:/" + "a" * 32):
        assert parse_spec({**BASE, "teacher": {"model_uri": uri}}).teacher.model_uri == uri


@pytest.mark.parametrize("teacher, field, words", [
    ({}, "teacher.model_uri", "give the teacher trial's arch, or the model_uri"),
    ({"model_uri": "models:/x/1", "arch": "digits_cnn"}, "teacher.model_uri", "not both"),
    ({"model_uri": "models:/x/1", "recipe": {"epochs": 3}}, "teacher", "not trained here"),
    ({"model_uri": "https://example.com/teacher.pt"}, "teacher.model_uri", "pattern"),
    ({"model_uri": "runs:/not-a-run-id"}, "teacher.model_uri", "pattern"),
])
def test_a_teacher_is_either_trained_here_or_given_and_a_bad_one_is_refused_naming_the_field(teacher, field, words):
    with pytest.raises(SpecError) as e:
        parse_spec({**BASE, "teacher": teacher})
    errors = dict(e.value.errors)
    assert field in errors and words in errors[field], errors


@pytest.mark.slow
def test_a_model_trained_in_one_experiment_teaches_the_next_and_a_missing_one_fails_its_students(
        local_ray, mlflow_uri, tmp_path):
    from jobs.sweep import run_sweep

    c = tracking.client(mlflow_uri)
    first = parse_spec({**BASE, "name": "teacher source", "grid": {"arch": ["digits_cnn"], "binarizer": ["fp"],
                                                                  "seed": [0]}})
    out = run_sweep(first, "teachersrc", storage_path=str(tmp_path / "a"), mlflow_uri=mlflow_uri, data_root=None,
                    data_fingerprint="test")
    assert out.failed == []
    (row,) = out.rows
    teacher_run = row["run_id"]
    for uri in (row["model_uri"], f"runs:/{teacher_run}"):  # a logged model's id, and the trial run itself
        eid = "student" + str(len(uri) % 97)
        spec = parse_spec({**BASE, "grid": {**BASE["grid"], "binarizer": ["sibnn"]}, "teacher": {"model_uri": uri}})
        res = run_sweep(spec, eid, storage_path=str(tmp_path / eid), mlflow_uri=mlflow_uri, data_root=None,
                        data_fingerprint="test")
        assert res.failed == [], uri
        (student,) = tracking.trial_runs(c, eid)
        assert student.data.tags[f"{tracking.TAG_NEEDS}.teacher"] == uri
        assert res.rows[0]["label"].endswith("KD") and res.rows[0]["final_top1"] is not None
        assert len(tracking.trial_runs(c, "teachersrc")) == 1, "the teacher was not trained again"
    missing = parse_spec({**BASE, "grid": {**BASE["grid"], "binarizer": ["sibnn"]},
                          "teacher": {"model_uri": "models:/sibnn-no-such-model/1"}})
    bad = run_sweep(missing, "orphan", storage_path=str(tmp_path / "orphan"), mlflow_uri=mlflow_uri, data_root=None,
                    data_fingerprint="test")
    assert bad.failed == ["digits_cnn-sibnn-rho0.3-s0"]
    (orphan,) = tracking.trial_runs(c, "orphan")
    assert "models:/sibnn-no-such-model/1" in orphan.data.tags[tracking.TAG_ERROR]
