"""The comparison presets of issue 22: every method on one recipe, each with its own authors' weight rule, and the
two-step distilled recipe past the paper — as specs that validate, expand and configure their trials as stated."""
import pytest

from jobs.presets import preset
from jobs.train_loop import trial_config

PAIRED = {"sibnn": "authors", "sign": "authors", "fp": "authors", "xnornet_nok": "xnornet", "bireal": "bireal",
          "rsign": "bireal", "irnet": "irnet"}


def test_the_comparison_trains_every_method_on_one_recipe_with_its_authors_weight_rule():
    spec = preset("imagenet-comparison", root="/data/imagenet")
    trials = spec.trials()
    assert {t.binarizer for t in trials} == set(PAIRED)
    assert {t.arch for t in trials} == {"resnet18", "resnet18_react"}
    assert len(trials) == 2 * 7 * 3 and {t.seed for t in trials} == {0, 1, 2}
    for t in trials:
        cfg = trial_config(spec, t)
        assert cfg.weight_grad == PAIRED[t.binarizer], t.trial_id
        assert (cfg.recipe, cfg.epochs, cfg.batch_size, cfg.policy) == ("aaai", 100, 256, "paper")
        assert cfg.teacher is None and cfg.init_from is None and cfg.weights == "binary"


def test_beyond_runs_a_resnet34_teacher_then_two_steps_of_si_bnn_and_reactnet_distilled_from_it(tmp_path):
    spec = preset("imagenet-beyond", root="/data/imagenet")
    waves = [[t.trial_id for t in w] for w in spec.waves()]
    assert waves[0] == ["teacher-resnet34-fp-s0"]
    assert sorted(waves[1]) == sorted(f"resnet18_react-{b}-s{s}-step1" for b in ("sibnn-rho0.3", "rsign")
                                      for s in range(3))
    assert sorted(waves[2]) == sorted(w.replace("step1", "step2") for w in waves[1])
    by_id = {t.trial_id: t for t in spec.trials()}
    teacher = trial_config(spec, by_id["teacher-resnet34-fp-s0"])
    assert (teacher.arch, teacher.binarizer, teacher.recipe, teacher.epochs) == ("resnet34", "fp", "tnnls", 100)
    files = {"teacher": str(tmp_path / "teacher.pt"), "init": str(tmp_path / "step1.pt")}
    for f in files.values():  # TrialConfig checks that the files exist; their content is read only when training
        open(f, "wb").close()
    step1 = by_id["resnet18_react-rsign-s0-step1"]
    step2 = by_id["resnet18_react-rsign-s0-step2"]
    assert step1.needs == {"teacher": "teacher-resnet34-fp-s0"}
    assert step2.needs == {"teacher": "teacher-resnet34-fp-s0", "init": step1.trial_id}
    c1 = trial_config(spec, step1, needs={"teacher": files["teacher"]}, data_root="/data/imagenet")
    c2 = trial_config(spec, step2, needs=files, data_root="/data/imagenet")
    assert (c1.recipe, c1.weights, c1.epochs, c1.batch_size) == ("react1", "real", 128, 512)
    assert (c2.recipe, c2.weights, c2.init_from, c2.teacher) == ("react2", "binary", files["init"], files["teacher"])
    assert c2.weight_grad == "bireal" and c2.policy == "rrc"  # ReActNet's HardBinaryConv, RandomResizedCrop
    assert (c2.label_smoothing, c2.ce_weight) == (0.0, 0.0)  # ReActNet trains on the distribution loss alone


@pytest.mark.parametrize("name", ["imagenet-comparison", "imagenet-beyond"])
def test_the_presets_round_trip_through_their_json_as_the_service_stores_them(name):
    from jobs.spec import parse_spec

    spec = preset(name, root="/data/imagenet")
    again = parse_spec(spec.model_dump_json())
    assert again == spec and again.fingerprint() == spec.fingerprint()


def test_the_evaluation_crop_is_named_for_every_dataset_and_model_the_tables_show():
    from sibnn.catalog import evaluation_protocol

    assert evaluation_protocol("imagenet", "resnet18") == "short side 256, centre 224×224 crop"
    assert evaluation_protocol("imagenet", "alexnet") == "short side 256, centre 227×227 crop"
    assert evaluation_protocol("imagenet", "resnet18", 160) == "short side 256, centre 160×160 crop"
    assert evaluation_protocol("digits", "digits_react") == "whole 8×8 test images"
    assert evaluation_protocol("mnist5k", "mlp_small") == "whole 28×28 test images"
    assert evaluation_protocol(None, "resnet18") is None


def test_a_table_row_carries_the_evaluation_crop_of_its_trials():
    from jobs.results import paper_comparison

    base = {"dataset": "imagenet", "arch": "resnet18", "recipe": "aaai", "rho": None, "state": "FINISHED",
            "final_top1": 50.0, "final_top5": 70.0, "best_top1": 51.0, "best_top5": 71.0, "sparsity": 0.0,
            "epochs": 100, "experiment_id": "e", "role": "grid", "stage": None, "weights": None,
            "teacher_trial": None, "init_trial": None, "evaluation": "short side 256, centre 224×224 crop"}
    rows = [{**base, "binarizer": b, "seed": s, "final_top1": 50.0 + s} for b in ("sign", "irnet") for s in (0, 1)]
    (sign, irnet) = sorted(paper_comparison(rows)["rows"], key=lambda r: r["binarizer"] != "sign")
    assert sign["evaluation"] == irnet["evaluation"] == "short side 256, centre 224×224 crop"
