"""Train one model in one process: ``python -m sibnn.train --dataset digits --binarizer sibnn --rho 0.3 --epochs 30``.

Prints per-epoch metrics and a final line with test top-1 and sparsity. ``--arch`` defaults to the dataset's usual
model (digits → digits_cnn, mnist5k → mlp_small, mnist → mlp, cifar10 → vgg_small, imagenet → resnet18).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sibnn.data import DatasetError, load_small_dataset, small_loaders
from sibnn.engine import checkpoint_dict, fit, resolve_device, seed_everything
from sibnn.models import create_model, model_info
from sibnn.layers import INITS
from sibnn.quant import BINARIZERS, WEIGHT_GRADS
from sibnn.recipe import RECIPES, build_optimizer, build_scheduler, get_recipe
from sibnn.summary import summarize

DEFAULT_ARCH = {"digits": "digits_cnn", "mnist5k": "mlp_small", "mnist": "mlp", "cifar10": "vgg_small", "imagenet": "resnet18"}
DEFAULT_BATCH = {"digits": 64, "mnist5k": 100, "mnist": 100, "cifar10": 100, "imagenet": 256}


def build_loaders(dataset: str, data_root, batch_size: int, *, arch: str, device: torch.device, seed: int,
                  shard_id: int = 0, num_shards: int = 1, fmt: str = "folder", policy: str = "paper",
                  amp: bool = False, channels_last: bool = False, image_size: int | None = None):
    """Train and validation loaders for one rank; returns (train, val, num_classes, input_shape)."""
    if dataset == "imagenet":
        from sibnn.data import ImageNetLoader

        if data_root is None:
            raise DatasetError("dataset 'imagenet' needs a data root (--data-root DIR with train/ and val/)")
        size = image_size or model_info(arch).input_size
        common = dict(shard_id=shard_id, num_shards=num_shards, device=str(device), policy=policy,
                      image_size=size, fmt=fmt, seed=seed, channels_last=channels_last,
                      dtype=torch.bfloat16 if amp else torch.float32)
        if device.type == "cuda":
            common["device"] = f"cuda:{device.index or 0}"
        train = ImageNetLoader(data_root, "train", batch_size, **common)
        val = ImageNetLoader(data_root, "val", batch_size, **common)
        return train, val, train.num_classes, (3, size, size)
    ds = load_small_dataset(dataset, data_root)
    train, val = small_loaders(ds, batch_size, shard_id=shard_id, num_shards=num_shards, seed=seed, device=device)
    return train, val, ds.num_classes, ds.input_shape


def model_kwargs(arch: str, input_shape: tuple) -> dict:
    """Fit the architecture's input to the dataset's (channels; pixel count for the MLP)."""
    kw = {"in_channels": input_shape[0]}
    if arch.startswith("mlp"):
        kw["input_size"] = input_shape[1]
    return kw


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m sibnn.train", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", choices=sorted(DEFAULT_ARCH))
    p.add_argument("--data-root", default=None, help="folder with the dataset's standard files (not for digits, mnist5k)")
    p.add_argument("--format", default="folder", choices=["folder", "webdataset"], help="ImageNet storage format")
    p.add_argument("--policy", default="paper", choices=["paper", "rrc"], help="ImageNet augmentation policy")
    p.add_argument("--image-size", type=int, default=None, help="ImageNet crop size (default: the arch's, 224/227)")
    p.add_argument("--arch", default=None, help="model name (see --list-models); default: the dataset's usual one")
    p.add_argument("--binarizer", default="sibnn", choices=BINARIZERS)
    p.add_argument("--rho", type=float, default=0.3)
    p.add_argument("--recipe", default="aaai", choices=sorted(RECIPES))
    p.add_argument("--weight-grad", default="authors", choices=WEIGHT_GRADS,
                   help="binary weights' gradient: the authors' rule (default) or the straight-through ablation")
    p.add_argument("--init", default="faithful", choices=INITS,
                   help="weight init: the authors' N(0, (1/fan_in)²) (default) or PyTorch's default (ablation)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--save", default=None, help="write the final checkpoint here")
    p.add_argument("--json", default=None, help="write the per-epoch history as JSON here")
    p.add_argument("--summary", action="store_true", help="print the model summary before training")
    p.add_argument("--list-models", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_models:
        from sibnn.models import list_models
        for name in list_models():
            info = model_info(name)
            print(f"{name:<14}{info.dataset:<10}{info.input_size:>4}px  {info.description}")
        return 0
    arch = args.arch or DEFAULT_ARCH[args.dataset]
    try:
        model_info(arch)
        device = resolve_device(args.device)
        epochs = args.epochs or (None if args.dataset == "imagenet" else 30)  # ImageNet: the recipe's 100
        recipe = get_recipe(args.recipe, epochs=epochs, lr=args.lr, weight_decay=args.weight_decay,
                            batch_size=args.batch_size or DEFAULT_BATCH[args.dataset])
        seed_everything(args.seed)
        train, val, num_classes, input_shape = build_loaders(
            args.dataset, args.data_root, recipe.batch_size, arch=arch, device=device, seed=args.seed,
            fmt=args.format, policy=args.policy, amp=args.amp, channels_last=args.channels_last,
            image_size=args.image_size)
    except (DatasetError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = create_model(arch, args.binarizer, args.rho, num_classes, weight_grad=args.weight_grad, init=args.init,
                         **model_kwargs(arch, input_shape)).to(device)
    if args.summary:
        print(summarize(model, (2, *input_shape)))
    net = torch.compile(model) if args.compile else model
    print(f"{arch} / {args.binarizer}" + (f" ρ={args.rho}" if args.binarizer.startswith("sibnn") else "")
          + f" on {args.dataset} ({len(train)} steps/epoch, {recipe.epochs} epochs, recipe {recipe.name}, "
            f"weight grad {args.weight_grad}, init {args.init}, {device})")

    def on_epoch(epoch, m, state):
        extra = f"  θ̄ {m['theta_mean']:+.3f}  Δ̄ {m['delta_mean']:.3f}" if "theta_mean" in m else ""
        print(f"epoch {epoch:3d}  loss {m['train_loss']:.4f}  val loss {m['val_loss']:.4f}  top-1 "
              f"{m['val_top1']:6.2f}  top-5 {m['val_top5']:6.2f}  sparsity {m['sparsity_mean']:.3f}  "
              f"lr {m['lr']:.2e}  {m['images_per_s']:8.0f} img/s{extra}", flush=True)

    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe, len(train))
    start = time.perf_counter()
    state = fit(net, train, val, recipe, device=device, amp=args.amp, channels_last=args.channels_last,
                optimizer=optimizer, scheduler=scheduler, on_epoch=on_epoch)
    last = state.history[-1]
    print(f"final: test top-1 {last['val_top1']:.2f} % (best {state.best_top1:.2f} %), top-5 "
          f"{last['val_top5']:.2f} %, sparsity {last['sparsity_mean']:.3f}, {time.perf_counter() - start:.1f} s")
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint_dict(model, optimizer, scheduler, state,
                                   {"arch": arch, "binarizer": args.binarizer, "rho": args.rho,
                                    "weight_grad": args.weight_grad, "init": args.init,
                                    "num_classes": num_classes, **model_kwargs(arch, input_shape)}), args.save)
    if args.json:
        Path(args.json).write_text(json.dumps(state.history, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
