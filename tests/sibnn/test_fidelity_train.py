"""The authors' weight gradient in real training set-ups: under DDP (2 gloo processes) it gives the same latent
weight gradient as one process on the whole batch; the command line selects the rule and the init."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sibnn.layers import BinaryConv2d, BinaryLinear
from sibnn.train import main as train_main


def _net():
    torch.manual_seed(0)
    return nn.Sequential(BinaryConv2d(3, 8, 3, padding=1), nn.Flatten(), BinaryLinear(8 * 6 * 6, 5))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = nn.parallel.DistributedDataParallel(_net())
        x, y = _data()
        shard = slice(rank * 4, rank * 4 + 4)
        nn.functional.cross_entropy(model(x[shard]), y[shard]).backward()
        if rank == 0:
            torch.save([p.grad for p in model.module.parameters()], out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_authors_weight_gradient_under_ddp_equals_the_single_process_gradient(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(2, port, str(out)), nprocs=2, join=True)
    ddp = torch.load(out)
    model = _net()
    x, y = _data()
    # DDP averages the two shards' mean losses = the mean loss over the whole batch (equal shards)
    nn.functional.cross_entropy(model(x), y).backward()
    params = list(model.parameters())
    assert len(params) == len(ddp) == 6  # 2 × (θ, s, weight)
    for p, g in zip(params, ddp):
        assert p.grad.abs().sum() > 0
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


def test_train_cli_selects_weight_grad_and_init_and_records_them(tmp_path, capsys):
    rc = train_main(["--dataset", "digits", "--epochs", "1", "--weight-grad", "ste", "--init", "torch",
                     "--save", str(tmp_path / "m.pt")])
    assert rc == 0
    assert "weight grad ste, init torch" in capsys.readouterr().out
    cfg = torch.load(tmp_path / "m.pt", weights_only=False)["config"]
    assert (cfg["weight_grad"], cfg["init"]) == ("ste", "torch")
    assert train_main(["--dataset", "digits", "--epochs", "1"]) == 0
    assert "weight grad authors, init faithful" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train_main(["--dataset", "digits", "--weight-grad", "xnor"])
    assert "--weight-grad" in capsys.readouterr().err
