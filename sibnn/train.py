"""Train one model in one process: ``python -m sibnn.train --dataset digits --binarizer sibnn --rho 0.3 --epochs 30``.

Prints per-epoch metrics and a final line with test top-1 and sparsity. ``--arch`` defaults to the dataset's usual
model (digits → digits_cnn, mnist5k and fashion_mnist → mlp_small, mnist → mlp, cifar10 → vgg_small, imagenet →
resnet18). The arguments become a ``sibnn.trial.TrialConfig``; ``sibnn.trial.build_trial`` builds what runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sibnn import catalog
from sibnn.data import DatasetError
from sibnn.engine import resolve_device
from sibnn.models import model_info
from sibnn.recipe import RECIPES
from sibnn.summary import summarize
from sibnn.trial import WEIGHTS, TrialConfig, build_trial

CLI_EPOCHS = 30  # [choice] the CLI's default for the small datasets; ImageNet-format data: the recipe's 100


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m sibnn.train", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", choices=catalog.DATASET_KINDS)
    p.add_argument("--data-root", default=None,
                   help="folder with the dataset's standard files (not for digits, mnist5k, fashion_mnist)")
    p.add_argument("--format", default="folder", choices=catalog.DATA_FORMATS, help="ImageNet storage format")
    p.add_argument("--policy", default="paper", choices=catalog.POLICIES, help="ImageNet augmentation policy")
    p.add_argument("--image-size", type=int, default=None, help="ImageNet crop size (default: the arch's, 224/227)")
    p.add_argument("--train-size", type=int, default=None,
                   help="small datasets: train on a fixed, stratified subset of this many samples (default: all)")
    p.add_argument("--arch", default=None, help="model name (see --list-models); default: the dataset's usual one")
    p.add_argument("--binarizer", default="sibnn", choices=catalog.BINARIZER_NAMES,
                   help="; ".join(f"{b.name}: {b.description}" for b in catalog.BINARIZERS.values()))
    p.add_argument("--rho", type=float, default=catalog.RHO_DEFAULT)
    p.add_argument("--recipe", default="aaai", choices=sorted(RECIPES))
    p.add_argument("--weight-grad", default="authors", choices=catalog.WEIGHT_GRADS,
                   help="binary weights' gradient: the authors' rule (default) or the straight-through ablation")
    p.add_argument("--init", default="faithful", choices=catalog.INITS,
                   help="weight init: the authors' N(0, (1/fan_in)²) (default) or PyTorch's default (ablation)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--weights", default="binary", choices=WEIGHTS,
                   help="binary layers' weights: binary (default) or real (step 1 of two-step training: binary "
                        "activations, real-valued weights)")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start from this sibnn checkpoint's model weights (step 2 from step 1; weights only)")
    p.add_argument("--teacher", default=None, metavar="CKPT",
                   help="distil from this sibnn checkpoint's model: ReActNet's distribution loss")
    p.add_argument("--ce-weight", type=float, default=0.0,
                   help="with --teacher: weight of the hard-label cross-entropy added to the distribution loss")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="label smoothing of the training cross-entropy (default 0: the paper's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's, one per core); the digits depend on it: a "
                        "service trial pins one per whole CPU of its worker (0.35 CPU: 1)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--save", default=None, help="write the final checkpoint here")
    p.add_argument("--json", default=None, help="write the per-epoch history as JSON here")
    p.add_argument("--summary", action="store_true", help="print the model summary before training")
    p.add_argument("--list-models", action="store_true")
    return p.parse_args(argv)


def trial_config(args) -> TrialConfig:
    ds = catalog.DATASETS[args.dataset]
    return TrialConfig(
        dataset=args.dataset, arch=args.arch, binarizer=args.binarizer, rho=args.rho, recipe=args.recipe,
        epochs=args.epochs or (None if ds.imagenet_format else CLI_EPOCHS), batch_size=args.batch_size or ds.default_batch,
        lr=args.lr, weight_decay=args.weight_decay, weight_grad=args.weight_grad, init=args.init, seed=args.seed,
        data_root=args.data_root, data_format=args.format, policy=args.policy, image_size=args.image_size,
        train_size=args.train_size, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
        weights=args.weights, init_from=args.init_from, teacher=args.teacher, ce_weight=args.ce_weight,
        label_smoothing=args.label_smoothing)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_models:
        from sibnn.models import list_models
        for name in list_models():
            info = model_info(name)
            print(f"{name:<14}{info.dataset:<10}{info.input_size:>4}px  {info.description}")
        return 0
    if args.threads is not None:
        if args.threads < 1:
            print("error: --threads must be at least 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        cfg = trial_config(args)
        model_info(cfg.arch)
        trial = build_trial(cfg, device=resolve_device(args.device))
    except (DatasetError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.summary:
        print(summarize(trial.model, (2, *trial.input_shape)))
    recipe = trial.recipe
    print(f"{cfg.describe()} ({len(trial.train)} steps/epoch, {recipe.epochs} epochs, recipe {recipe.name}, "
          f"weight grad {cfg.weight_grad}, init {cfg.init}, {trial.device}, {torch.get_num_threads()} threads)")

    def on_epoch(epoch, m, state):
        extra = f"  θ̄ {m['theta_mean']:+.3f}  Δ̄ {m['delta_mean']:.3f}" if "theta_mean" in m else ""
        print(f"epoch {epoch:3d}  loss {m['train_loss']:.4f}  val loss {m['val_loss']:.4f}  top-1 "
              f"{m['val_top1']:6.2f}  top-5 {m['val_top5']:6.2f}  sparsity {m['sparsity_mean']:.3f}  "
              f"lr {m['lr']:.2e}  {m['images_per_s']:8.0f} img/s{extra}", flush=True)

    start = time.perf_counter()
    state = trial.fit(on_epoch=on_epoch)
    last = state.history[-1]
    print(f"final: test top-1 {last['val_top1']:.2f} % (best {state.best_top1:.2f} %), top-5 "
          f"{last['val_top5']:.2f} %, sparsity {last['sparsity_mean']:.3f}, {time.perf_counter() - start:.1f} s")
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        torch.save(trial.checkpoint(state), args.save)
    if args.json:
        Path(args.json).write_text(json.dumps(state.history, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
