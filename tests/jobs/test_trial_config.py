"""jobs.train_loop only translates a spec's trial into the library's TrialConfig: the same rules as the CLI."""
from jobs.presets import preset
from jobs.spec import parse_spec
from jobs.train_loop import trial_config
from sibnn.train import parse_args
from sibnn.train import trial_config as cli_config


def test_a_spec_trial_and_the_same_cli_run_give_the_same_trial():
    spec = preset("digits", recipe={"epochs": 3, "batch_size": 64})
    trial = next(t for t in spec.trials() if t.binarizer == "sibnn" and t.rho == 0.3)
    worker = trial_config(spec, trial)
    cli = cli_config(parse_args(["--dataset", "digits", "--epochs", "3", "--batch-size", "64", "--seed",
                                 str(trial.seed)]))
    assert worker == cli
    assert worker.recipe_for(2).batch_size == 32


def test_synthetic_data_stays_synthetic_and_gpu_options_are_off_on_cpu():
    spec = parse_spec({"name": "s", "dataset": {"kind": "synthetic", "root": "/tmp/x"},
                       "grid": {"arch": ["resnet18"], "binarizer": ["sign"]},
                       "recipe": {"amp": True, "channels_last": True, "compile": True, "weight_grad": "ste"}})
    (trial,) = spec.trials()
    cpu = trial_config(spec, trial, data_root="/data/y")
    assert (cpu.dataset, cpu.data_root, cpu.rho, cpu.weight_grad) == ("synthetic", "/data/y", 0.3, "ste")
    assert not (cpu.amp or cpu.channels_last or cpu.compile)
    gpu = trial_config(spec, trial, use_cuda=True)
    assert gpu.amp and gpu.channels_last and gpu.compile and gpu.data_root == "/tmp/x"
