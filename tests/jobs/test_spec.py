"""The experiment spec: validation names the field, expansion into trials, presets."""
import json

import pytest

from jobs.presets import PRESETS, preset
from jobs.spec import SpecError, parse_spec, trial_id
from sibnn.catalog import DATASETS

BASE = {"name": "t", "dataset": {"kind": "digits"},
        "grid": {"arch": ["digits_cnn"], "binarizer": ["sibnn", "sign", "fp"], "rho": [0.0, 0.3], "seed": [0, 1]}}


def _errors(data):
    with pytest.raises(SpecError) as e:
        parse_spec(data)
    return dict(e.value.errors)


def test_rho_only_varies_for_sibnn_binarizers():
    trials = parse_spec(BASE).trials()
    assert len(trials) == 2 * 2 + 1 * 2 + 1 * 2
    assert {t.rho for t in trials if t.binarizer == "sign"} == {None}
    assert sorted(t.trial_id for t in trials if t.binarizer == "sibnn") == [
        "digits_cnn-sibnn-rho0-s0", "digits_cnn-sibnn-rho0-s1", "digits_cnn-sibnn-rho0.3-s0",
        "digits_cnn-sibnn-rho0.3-s1"]
    assert len({t.trial_id for t in trials}) == len(trials)


def test_trial_ids_are_stable_across_parses():
    assert [t.trial_id for t in parse_spec(BASE).trials()] == [t.trial_id for t in parse_spec(BASE).trials()]
    assert trial_id("alexnet", "fp", None, 3) == "alexnet-fp-s3"


@pytest.mark.parametrize("patch,field,text", [
    ({"grid": {**BASE["grid"], "arch": ["resnet19"]}}, "grid.arch", "unknown arch 'resnet19'"),
    ({"grid": {**BASE["grid"], "rho": [1.5]}}, "grid.rho", "rho must be in [0, 1]"),
    ({"grid": {**BASE["grid"], "binarizer": ["xnor"]}}, "grid.binarizer.0", "Input should be"),
    ({"grid": {**BASE["grid"], "seed": [1, 1]}}, "grid.seed", "unique"),
    ({"dataset": {"kind": "imagenet"}}, "dataset.root", "required for dataset kind 'imagenet'"),
    ({"dataset": {"kind": "digits", "root": "/x"}}, "dataset.root", "must be empty"),
    ({"dataset": {"kind": "cifar10", "root": "/x", "format": "webdataset"}}, "dataset.format", "ImageNet-format"),
    ({"recipe": {"epochs": 0}}, "recipe.epochs", "greater than or equal to 1"),
    ({"recipe": {"milestones": [0.8, 0.4]}}, "recipe.milestones", "increasing"),
    ({"resources": {"gpus_per_worker": 1.5}}, "resources.gpus_per_worker", "whole number"),
    ({"recipe": {"batch_size": 2}, "resources": {"workers_per_trial": 4}}, "spec", "batch_size"),
    ({"surprise": 1}, "surprise", "Extra inputs are not permitted"),
    ({"name": "   "}, "name", "not blank"),
])
def test_invalid_values_are_rejected_with_the_field_named(patch, field, text):
    errors = _errors({**BASE, **patch})
    assert field in errors, errors
    assert text in errors[field]


def test_spec_parses_from_json_text_and_fingerprint_is_content_based():
    import json

    a = parse_spec(json.dumps(BASE))
    b = parse_spec(BASE)
    assert a == b and a.fingerprint() == b.fingerprint()
    c = parse_spec({**BASE, "recipe": {"epochs": 3}})
    assert c.fingerprint() != a.fingerprint()


def test_every_preset_validates_and_digits_compares_rho_sign_and_fp():
    for name in PRESETS:
        embedded = DATASETS[PRESETS[name]["dataset"]["kind"]].embedded  # these take no root
        spec = preset(name, root=None if embedded else "/data/x")
        assert spec.trials()
    digits = preset("digits")
    kinds = {(t.binarizer, t.rho) for t in digits.trials()}
    assert {("sibnn", 0.0), ("sibnn", 0.3), ("sibnn", 1.0), ("sign", None), ("fp", None)} == kinds
    ablation = preset("imagenet-alexnet-rho", root="/data/imagenet")
    assert sorted(t.rho for t in ablation.trials()) == [0.0, 0.1, 0.3, 0.5, 0.75, 1.0]


def test_preset_without_its_dataset_root_names_the_field():
    with pytest.raises(SpecError, match="dataset.root"):
        preset("imagenet-alexnet-rho")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("imagenet-everything")


@pytest.mark.parametrize("as_json", [False, True])
def test_types_are_strict_no_bool_for_int_no_string_for_a_number(as_json):
    import json

    def check(data):
        return _errors(json.dumps(data) if as_json else data)

    assert "recipe.epochs" in check({**BASE, "recipe": {"epochs": True}})
    assert "grid.seed.0" in check({**BASE, "grid": {**BASE["grid"], "seed": ["1"]}})
    assert "resources.workers_per_trial" in check({**BASE, "resources": {"workers_per_trial": 1.0}})
    # an int is a valid float (ρ = 0, 1)
    spec = parse_spec({**BASE, "grid": {**BASE["grid"], "rho": [0, 1]}})
    assert spec.grid.rho == [0.0, 1.0]


def test_rho_without_a_sibnn_binarizer_is_an_error_naming_grid_rho():
    errors = _errors({**BASE, "grid": {**BASE["grid"], "binarizer": ["sign"], "rho": [0.5]}})
    assert "sibnn" in errors["grid.rho"]
    # not given: the default ρ is not an error (sign trials simply have none)
    spec = parse_spec({**BASE, "grid": {"arch": ["digits_cnn"], "binarizer": ["sign", "fp"]}})
    assert {t.rho for t in spec.trials()} == {None}


def test_synthetic_requests_are_bounded():
    big = {"kind": "synthetic", "synthetic_classes": 1000, "synthetic_per_class": 10_000}
    assert "20000" in _errors({**BASE, "grid": {**BASE["grid"], "arch": ["resnet18"]},
                              "dataset": big})["dataset.synthetic_per_class"]


def test_mnist5k_demo_preset_compares_three_rhos_sign_and_fp_over_several_seeds_with_no_root():
    spec = preset("mnist5k")
    assert spec.dataset.kind == "mnist5k" and spec.dataset.root is None
    kinds = {(t.binarizer, t.rho) for t in spec.trials()}
    assert kinds == {("sibnn", 0.0), ("sibnn", 0.3), ("sibnn", 1.0), ("sign", None), ("fp", None)}
    assert len(spec.grid.seed) >= 2 and len(spec.trials()) == 5 * len(spec.grid.seed)
    with pytest.raises(SpecError, match="dataset.root"):
        parse_spec({**BASE, "dataset": {"kind": "mnist5k", "root": "/x"}})


def test_runner_tune_is_for_single_worker_cpu_trials_and_named_when_wrong():
    res = {"runner": "tune", "cpus_per_worker": 0.5}
    assert parse_spec({**BASE, "resources": res}).resources.runner == "tune"
    for bad in ({"workers_per_trial": 2}, {"gpus_per_worker": 1}):
        assert "workers_per_trial 1 and gpus_per_worker 0" in _errors({**BASE, "resources": {**res, **bad}})[
            "resources.runner"]
    assert "'train' or 'tune'" in _errors({**BASE, "resources": {"runner": "ray"}})["resources.runner"]
    # the same multi-worker or GPU trial is fine as a Ray Train run, the default
    train = parse_spec({**BASE, "resources": {"workers_per_trial": 2, "gpus_per_worker": 1}})
    assert train.resources.runner == "train"


def test_the_default_runner_leaves_the_spec_json_and_fingerprint_as_before_it_existed():
    spec = parse_spec(BASE)
    assert "runner" not in json.loads(spec.model_dump_json())["resources"]
    tuned = parse_spec({**BASE, "resources": {"runner": "tune"}})
    assert json.loads(tuned.model_dump_json())["resources"]["runner"] == "tune"
    assert parse_spec(tuned.model_dump_json()).resources.runner == "tune"  # round trip keeps it
    assert tuned.fingerprint() != spec.fingerprint()
    assert parse_spec({**BASE, "resources": {"runner": "train"}}).fingerprint() == spec.fingerprint()


def test_a_grid_without_sibnn_round_trips_through_its_json():
    # the service stores model_dump_json() and the jobs re-parse it: the default ρ must not come back as "given"
    spec = parse_spec({**BASE, "grid": {"arch": ["digits_cnn"], "binarizer": ["sign", "fp"]}})
    again = parse_spec(spec.model_dump_json())
    assert "rho" not in json.loads(spec.model_dump_json())["grid"]
    assert [t.trial_id for t in again.trials()] == [t.trial_id for t in spec.trials()]
    with_sibnn = parse_spec({**BASE, "grid": {"arch": ["digits_cnn"], "binarizer": ["sibnn", "fp"], "rho": [0.5]}})
    assert parse_spec(with_sibnn.model_dump_json()).grid.rho == [0.5]


def test_train_size_round_trips_and_is_only_for_the_small_datasets():
    spec = parse_spec({**BASE, "dataset": {"kind": "fashion_mnist", "train_size": 10_000},
                       "grid": {"arch": ["mlp_small"], "binarizer": ["sibnn"]}})
    assert spec.dataset.train_size == 10_000 and spec.dataset.root is None
    again = parse_spec(spec.model_dump_json())
    assert again == spec and again.dataset.train_size == 10_000 and again.fingerprint() == spec.fingerprint()
    assert spec.fingerprint() != parse_spec({**BASE, "dataset": {"kind": "fashion_mnist"},
                                             "grid": {"arch": ["mlp_small"], "binarizer": ["sibnn"]}}).fingerprint()
    resnet = {"arch": ["resnet18"], "binarizer": ["sibnn"]}
    for ds in ({"kind": "imagenet", "root": "/data/imagenet", "train_size": 100}, {"kind": "synthetic", "train_size": 100}):
        errors = _errors({**BASE, "dataset": ds, "grid": resnet})
        assert "ImageNet-format" in errors["dataset.train_size"], errors
    assert "4000 train samples" in _errors({**BASE, "dataset": {"kind": "mnist5k", "train_size": 4001}})[
        "dataset.train_size"]
    assert "greater than or equal to 10" in _errors({**BASE, "dataset": {"kind": "digits", "train_size": 9}})[
        "dataset.train_size"]
    assert parse_spec({**BASE, "dataset": {"kind": "mnist", "root": "/d", "train_size": 100_000}})  # size unknown


def test_no_train_size_leaves_the_spec_json_and_fingerprint_as_before_it_existed():
    # pinned with the code before dataset.train_size existed: stored specs keep their idempotency keys and run tags
    spec = parse_spec(BASE)
    assert "train_size" not in json.loads(spec.model_dump_json())["dataset"]
    assert spec.fingerprint() == "3572c5dc514d197954228b48c91f6d79b80c68faca0979691ca72283d0addac8"
    mnist = parse_spec({"name": "m", "dataset": {"kind": "mnist", "root": "/data/mnist"},
                        "grid": {"arch": ["mlp"], "binarizer": ["sibnn"]}})
    assert mnist.fingerprint() == "712c311cc4d6317b664266a0c912369eaac37a217a2a565da04a6a87df335540"
    assert parse_spec({**BASE, "dataset": {"kind": "digits", "train_size": None}}).fingerprint() == spec.fingerprint()
