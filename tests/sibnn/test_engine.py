"""The plain train/eval engine and ``python -m sibnn.train``: real training on the embedded digits data."""
import json

import pytest
import torch

from sibnn.data import load_small_dataset, small_loaders
from sibnn.engine import (TrainState, checkpoint_dict, evaluate, fit, restore_checkpoint, seed_everything)
from sibnn.layers import binary_layers
from sibnn.models import create_model
from sibnn.recipe import build_optimizer, build_scheduler, get_recipe
from sibnn.train import main as train_main

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_small_dataset("digits")


def _train(digits, binarizer, epochs, seed=0, rho=0.3):
    seed_everything(seed)
    train, test = small_loaders(digits, 64, seed=seed)
    model = create_model("digits_cnn", binarizer, rho=rho)
    state = fit(model, train, test, get_recipe("aaai", epochs=epochs), device=CPU)
    return model, state


@pytest.mark.slow
@pytest.mark.parametrize("binarizer,floor", [("fp", 95.0), ("sibnn", 90.0)])
def test_digits_reaches_paper_like_accuracy_on_cpu(digits, binarizer, floor):
    model, state = _train(digits, binarizer, epochs=15)
    final = state.history[-1]
    assert final["val_top1"] >= floor, state.history
    assert final["val_samples"] == len(digits.x_test)
    if binarizer == "sibnn":
        # Si-BNN's codes are sparse: a real fraction of the binary activations are exactly zero
        assert 0.05 < final["sparsity_mean"] < 0.95
        assert "theta_mean" in final and "delta_mean" in final
        for _, layer in binary_layers(model):
            assert layer.weight.abs().max() <= 1.0, "latent weights stay clamped to [−1, 1]"


def test_evaluate_reports_per_layer_sparsity_for_every_binary_layer(digits):
    model = create_model("digits_cnn", "sibnn")
    _, test = small_loaders(digits, 64)
    m = evaluate(model, test, device=CPU)
    assert set(m["sparsity"]) == {n for n, _ in binary_layers(model)}
    assert m["val_samples"] == len(digits.x_test)
    assert 0.0 <= m["val_top1"] <= m["val_top5"] <= 100.0


def test_evaluate_with_reduce_sums_over_ranks(digits):
    """Two ranks' unpadded shards, summed, give the same metrics as one pass over the whole test set."""
    torch.manual_seed(0)
    model = create_model("digits_cnn", "sibnn")
    _, whole = small_loaders(digits, 64)
    ref = evaluate(model, whole, device=CPU)
    shards = [small_loaders(digits, 64, shard_id=rank, num_shards=2)[1] for rank in range(2)]
    per_rank = []  # what each rank hands to its all-reduce, in call order (metric sums, then sparsity counts)
    for shard in shards:
        calls = []
        evaluate(model, shard, device=CPU, reduce=lambda t, calls=calls: (calls.append(t.clone()), t)[1])
        per_rank.append(calls)
    totals = iter([a + b for a, b in zip(*per_rank)])
    merged = evaluate(model, shards[0], device=CPU, reduce=lambda t: next(totals))  # an all-reduce's result
    assert merged["val_samples"] == ref["val_samples"] == len(digits.x_test)
    assert merged["val_top1"] == pytest.approx(ref["val_top1"])
    assert merged["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5)
    assert merged["sparsity_mean"] == pytest.approx(ref["sparsity_mean"])
    assert merged["sparsity"] == pytest.approx(ref["sparsity"])


def test_resume_from_checkpoint_continues_exactly(digits, tmp_path):
    recipe = get_recipe("tnnls", epochs=3)

    def run(stop_after=None, ckpt=None):
        seed_everything(7)
        train, test = small_loaders(digits, 64, seed=7)
        model = create_model("digits_cnn", "sibnn")
        opt = build_optimizer(model, recipe)
        sched = build_scheduler(opt, recipe, len(train))
        state = TrainState()
        if ckpt is not None:
            state = restore_checkpoint(torch.load(ckpt, weights_only=False), model, opt, sched)
        if stop_after is not None:
            def stop(epoch, m, st):
                if epoch == stop_after:
                    torch.save(checkpoint_dict(model, opt, sched, st), tmp_path / "ckpt.pt")
                    raise KeyboardInterrupt
            try:
                fit(model, train, test, recipe, device=CPU, optimizer=opt, scheduler=sched, state=state, on_epoch=stop)
            except KeyboardInterrupt:
                pass
            return model, state
        return model, fit(model, train, test, recipe, device=CPU, optimizer=opt, scheduler=sched, state=state)

    straight, s_state = run()
    run(stop_after=2)
    resumed, r_state = run(ckpt=tmp_path / "ckpt.pt")
    assert r_state.epoch == 3 and len(r_state.history) == 3
    assert [h["epoch"] for h in r_state.history] == [1, 2, 3]
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
    assert r_state.history[-1]["val_top1"] == s_state.history[-1]["val_top1"]


def test_train_cli_prints_epochs_and_final_line(capsys, tmp_path):
    rc = train_main(["--dataset", "digits", "--epochs", "2", "--binarizer", "sign", "--json",
                     str(tmp_path / "h.json"), "--save", str(tmp_path / "m.pt")])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("\nepoch ") + out.startswith("epoch ") == 2
    assert "final: test top-1" in out and "sparsity 0.000" in out  # sign codes are never zero
    hist = json.loads((tmp_path / "h.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    ckpt = torch.load(tmp_path / "m.pt", weights_only=False)
    assert ckpt["config"]["arch"] == "digits_cnn" and ckpt["state"]["epoch"] == 2


def test_train_cli_missing_dataset_files_give_a_clear_error(capsys, tmp_path):
    assert train_main(["--dataset", "mnist", "--data-root", str(tmp_path)]) == 2
    assert "train-images-idx3-ubyte[.gz] not found under" in capsys.readouterr().err
    assert train_main(["--dataset", "cifar10"]) == 2
    assert "needs a data root" in capsys.readouterr().err


def test_train_cli_rejects_unknown_arch_and_gpu_without_one(capsys):
    assert train_main(["--arch", "resnet19"]) == 2
    assert "unknown arch 'resnet19'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert train_main(["--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_train_cli_trains_mnist_from_idx_files(capsys, tmp_path):
    from tests.sibnn.test_small_data import make_mnist

    make_mnist(tmp_path, n_train=64, n_test=32)
    rc = train_main(["--dataset", "mnist", "--data-root", str(tmp_path), "--epochs", "1", "--batch-size", "32"])
    assert rc == 0 and "mlp / sibnn" in capsys.readouterr().out
