"""Effect of the authors' rules vs their ablations on small tasks: weight gradient (authors vs ste) and
initialisation (faithful σ = 1/fan_in vs PyTorch's default), Si-BNN, mean ± std over seeds. Prints a markdown table.

    python bench/fidelity_ablation.py                      # digits + synthetic 32×32, 3 seeds (CPU, minutes)
    python bench/fidelity_ablation.py --tasks synthetic --configs default,ste --noise 3 --synth-train 1000

Tasks: the embedded digits (digits_cnn, 8×8) and a CIFAR-sized synthetic task generated here (no download):
10 classes, each a fixed random 3×32×32 pattern of low-frequency gratings; a sample is its class's pattern shifted
by up to ±4 px, at a random contrast in [0.5, 1.5], plus Gaussian noise (σ = ``--noise``). Model: vgg_small at
``--width``. Recipe: aaai (Adam 1e-3, ÷10 at 40 % and 80 % of the epochs, weight decay 1e-6), batch 64.
The reported number is the final test top-1 (%).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from sibnn.data import load_small_dataset, small_loaders
from sibnn.data.small import SmallDataset
from sibnn.engine import fit, seed_everything
from sibnn.models import create_model
from sibnn.recipe import build_optimizer, build_scheduler, get_recipe

CONFIGS = {  # short name → (column label, weight_grad, init); the first is the faithful default
    "default": ("authors grad, faithful init (default)", "authors", "faithful"),
    "ste": ("ste grad, faithful init", "ste", "faithful"),
    "torch": ("authors grad, torch init", "authors", "torch"),
}


def synthetic32(n_train: int, n_test: int, noise: float, seed: int = 1234) -> SmallDataset:
    """The CIFAR-sized synthetic task (fixed by ``seed``, independent of the training seed)."""
    g = torch.Generator().manual_seed(seed)
    classes = 10
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    templates = torch.zeros(classes, 3, 32, 32)
    for c in range(classes):
        for _ in range(4):
            fy, fx = (torch.rand(2, generator=g) * 0.5 - 0.25).tolist()
            phase = float(torch.rand(1, generator=g)) * 2 * math.pi
            colour = torch.randn(3, 1, 1, generator=g)
            templates[c] += colour * torch.cos(2 * math.pi * (fy * yy + fx * xx) + phase)
    templates /= templates.std(dim=(1, 2, 3), keepdim=True)

    def sample(n):
        y = torch.randint(0, classes, (n,), generator=g)
        x = templates[y]
        shifts = torch.randint(-4, 5, (n, 2), generator=g)
        x = torch.stack([torch.roll(xi, (int(s[0]), int(s[1])), dims=(1, 2)) for xi, s in zip(x, shifts)])
        x = x * (0.5 + torch.rand(n, 1, 1, 1, generator=g)) + noise * torch.randn(x.shape, generator=g)
        return x.float(), y

    xtr, ytr = sample(n_train)
    xte, yte = sample(n_test)
    return SmallDataset("synthetic32", xtr, ytr, xte, yte, classes)


def run(ds: SmallDataset, arch: str, model_kw: dict, epochs: int, seed: int, weight_grad: str, init: str) -> float:
    seed_everything(seed)
    device = torch.device("cpu")
    recipe = get_recipe("aaai", epochs=epochs, batch_size=64)
    train, val = small_loaders(ds, recipe.batch_size, seed=seed, device=device)
    model = create_model(arch, "sibnn", 0.3, ds.num_classes, weight_grad=weight_grad, init=init,
                         in_channels=ds.input_shape[0], **model_kw)
    opt = build_optimizer(model, recipe)
    state = fit(model, train, val, recipe, device=device, optimizer=opt,
                scheduler=build_scheduler(opt, recipe, len(train)))
    return state.history[-1]["val_top1"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--digits-epochs", type=int, default=15)
    p.add_argument("--synth-epochs", type=int, default=6)
    p.add_argument("--synth-train", type=int, default=2000)
    p.add_argument("--noise", type=float, default=1.5)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tasks", default="digits,synthetic")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    args = p.parse_args()
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        p.error(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    configs = {CONFIGS[c][0]: CONFIGS[c][1:] for c in args.configs.split(",")}
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = {}
    if "digits" in args.tasks.split(","):
        tasks[f"digits (digits_cnn, {args.digits_epochs} ep)"] = (load_small_dataset("digits"), "digits_cnn", {},
                                                          args.digits_epochs)
    if "synthetic" in args.tasks.split(","):
        tasks[f"synthetic 32×32 (noise {args.noise:g}, {args.synth_train} train, vgg_small w{args.width}, "
              f"{args.synth_epochs} ep)"] = (synthetic32(args.synth_train, 1000, args.noise), "vgg_small",
                                             {"width": args.width}, args.synth_epochs)
    start = time.perf_counter()
    results: dict[tuple[str, str], list[float]] = {}
    for task, (ds, arch, kw, epochs) in tasks.items():
        for cname, (wg, init) in configs.items():
            results[(task, cname)] = [run(ds, arch, kw, epochs, s, wg, init) for s in seeds]
            print(f"  {task} / {cname}: {results[(task, cname)]}", flush=True)
    print(f"\nSi-BNN ρ = 0.3, final test top-1 (%), mean ± std over seeds {seeds}, CPU, torch {torch.__version__}, "
          f"{time.perf_counter() - start:.0f} s\n")
    print("| task | " + " | ".join(configs) + " |")
    print("|---|" + "---:|" * len(configs))
    for task in tasks:
        cells = []
        for cname in configs:
            v = results[(task, cname)]
            cells.append(f"{statistics.fmean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.2f}")
        print(f"| {task} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
