"""sibnn.trial: one TrialConfig, one way to build a trial and to checkpoint it; the CLI and the Ray worker both
translate into it."""
import pytest
import torch

from sibnn import catalog
from sibnn.recipe import get_recipe
from sibnn.train import parse_args, trial_config
from sibnn.trial import (CheckpointError, TrialConfig, build_trial, input_shape, load_checkpoint,
                         model_from_checkpoint, training_data)

CPU = torch.device("cpu")


def test_defaults_are_the_authors_rules_and_the_dataset_picks_the_model():
    cfg = TrialConfig()
    assert (cfg.binarizer, cfg.rho, cfg.recipe, cfg.weight_grad, cfg.init) == ("sibnn", 0.3, "aaai", "authors",
                                                                                "faithful")
    assert not (cfg.amp or cfg.channels_last or cfg.compile)
    for name, d in catalog.DATASETS.items():
        assert TrialConfig(dataset=name).arch == d.default_arch
    assert TrialConfig(dataset="mnist5k").arch == "mlp_small"


@pytest.mark.parametrize("field,value", [("binarizer", "xnor"), ("weight_grad", "sgd"), ("init", "zeros"),
                                         ("dataset", "svhn"), ("policy", "auto"), ("data_format", "zip"),
                                         ("rho", 1.5)])
def test_a_bad_value_is_refused_naming_it(field, value):
    with pytest.raises(ValueError, match=str(value) if field != "rho" else "rho"):
        TrialConfig(**{field: value})


def test_the_recipe_takes_the_overrides_and_splits_the_global_batch():
    cfg = TrialConfig(recipe="aaai", epochs=7, batch_size=100, lr=0.01, milestones=[0.5])
    r = cfg.recipe_for(world_size=3)
    assert (r.epochs, r.batch_size, r.lr, r.milestones) == (7, 33, 0.01, (0.5,))
    assert r.weight_decay == get_recipe("aaai").weight_decay
    assert TrialConfig(batch_size=None).recipe_for().batch_size == get_recipe("aaai").batch_size


def test_the_cli_arguments_become_a_trial_config():
    cfg = trial_config(parse_args(["--dataset", "mnist5k", "--binarizer", "sign", "--weight-grad", "ste"]))
    assert (cfg.arch, cfg.binarizer, cfg.weight_grad, cfg.epochs, cfg.batch_size) == ("mlp_small", "sign", "ste", 30,
                                                                                      100)
    imagenet = trial_config(parse_args(["--dataset", "imagenet", "--data-root", "/x"]))
    assert imagenet.epochs is None and imagenet.recipe_for().epochs == 100 and imagenet.batch_size == 256


def test_an_mlp_is_built_for_the_data_pixel_count_and_its_checkpoint_rebuilds_it(tmp_path):
    t = build_trial(TrialConfig(dataset="digits", arch="mlp_small", epochs=1, batch_size=64), device=CPU)
    first = t.model.net[1]
    assert isinstance(first, torch.nn.Linear) and first.in_features == 64  # 8×8 digits, not MNIST's 28×28
    state = t.fit()
    path = tmp_path / "m.pt"
    torch.save(t.checkpoint(state), path)
    cfg = load_checkpoint(path)["config"]
    assert cfg["input_shape"] == [1, 8, 8] and cfg["input_size"] == 8 and cfg["dataset"] == "digits"
    assert input_shape(cfg) == (1, 8, 8) and training_data(cfg).mean == (0.3,)
    model = model_from_checkpoint(path)
    assert not model.training
    x = next(iter(t.val))[0][:5]
    t.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), t.model(x))


def test_a_checkpoint_of_a_binarizer_without_rho_records_none_and_loads():
    t = build_trial(TrialConfig(dataset="digits", binarizer="sign", epochs=1), device=CPU)
    ckpt = t.checkpoint(t.fit())
    assert ckpt["config"]["rho"] is None and ckpt["config"]["weight_grad"] == "authors"
    assert model_from_checkpoint(ckpt)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_a_dict_that_is_not_a_checkpoint_is_refused():
    with pytest.raises(CheckpointError, match="not a sibnn checkpoint"):
        load_checkpoint({"weights": {}})
    with pytest.raises(CheckpointError, match="lacks arch"):
        load_checkpoint({"model": {}, "config": {"binarizer": "sibnn"}})


def test_old_checkpoints_without_the_input_shape_fall_back_to_the_model_facts():
    assert input_shape({"arch": "alexnet"}) == (3, 227, 227)
    assert input_shape({"arch": "mlp", "in_channels": 1, "input_size": 28}) == (1, 28, 28)
    assert training_data({"arch": "mlp_small"}).name == "mnist5k"


def test_command_line_pins_the_thread_count_it_is_given_and_says_it(capsys):
    from sibnn.train import main

    before = torch.get_num_threads()
    try:
        assert main(["--dataset", "digits", "--epochs", "1", "--threads", "1", "--batch-size", "256"]) == 0
        assert torch.get_num_threads() == 1 and ", 1 threads)" in capsys.readouterr().out
        assert main(["--dataset", "digits", "--epochs", "1", "--threads", "0"]) == 2
        assert "--threads must be at least 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
