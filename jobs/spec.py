"""The experiment spec (DESIGN.md "Contracts"): what a user POSTs, what the Ray job runs, versioned.

A spec is a grid arch × binarizer × ρ × seed over one dataset with one recipe and per-trial resources. Unknown
fields and impossible values are rejected with the field named, before anything runs. ``trials()`` expands the
grid; ρ only varies for the Si-BNN binarizers (sign and FP have no ρ).
"""
from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer,
                      model_validator)

from sibnn.catalog import BINARIZER_NAMES, DATA_FORMATS, DATASET_KINDS, DATASETS, POLICIES, RHO_DEFAULT, WEIGHT_GRADS
from sibnn.catalog import model_names as list_models
from sibnn.catalog import binarizer_info, takes_rho  # binarizer_info: the service reads it through the spec

SPEC_VERSION = 1


MAX_SYNTHETIC_IMAGES = 20_000  # per synthetic dataset (train), so one request cannot fill a disk


class _Strict(BaseModel):
    # strict: no coercion ("epochs": true is not 1, "seed": "3" is not 3); an int is still a valid float.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DatasetSpec(_Strict):
    kind: Literal[DATASET_KINDS]
    root: str | None = Field(None, validate_default=True,
                             description="folder with the dataset (not for the embedded digits, mnist5k, "
                                         "fashion_mnist; synthetic: made if absent)")
    format: Literal[DATA_FORMATS] = "folder"
    policy: Literal[POLICIES] = "paper"
    image_size: int | None = Field(None, ge=16, le=1024, description="crop size; default the arch's (224, 227)")
    # synthetic ImageNet-format JPEGs, generated once per root when the folder does not exist yet
    synthetic_classes: int = Field(4, ge=2, le=1000)
    synthetic_per_class: int = Field(8, ge=1, le=10_000)
    train_size: int | None = Field(None, ge=10, description="train on a fixed, stratified subset of this many "
                                   "samples (the same for every seed; the test set stays whole); None: the whole "
                                   "train set. Small in-memory datasets only")

    # Field validators (not a model validator) so that an error names dataset.root / dataset.format exactly.
    @field_validator("root", mode="after")
    @classmethod
    def _root_needed(cls, v, info):
        kind = info.data.get("kind")
        if kind in ("imagenet", "cifar10", "mnist") and not v:
            raise ValueError(f"required for dataset kind {kind!r}")
        if kind in DATASETS and DATASETS[kind].embedded and v:
            raise ValueError(f"must be empty for {kind!r} (it ships with {DATASETS[kind].embedded_in})")
        return v

    @field_validator("synthetic_per_class", mode="after")
    @classmethod
    def _synthetic_size(cls, v, info):
        classes = info.data.get("synthetic_classes")
        if classes is not None and classes * v > MAX_SYNTHETIC_IMAGES:
            raise ValueError(f"synthetic_classes × synthetic_per_class = {classes * v} images; at most "
                             f"{MAX_SYNTHETIC_IMAGES}")
        return v

    @field_validator("format", mode="after")
    @classmethod
    def _format_fits(cls, v, info):
        kind = info.data.get("kind")
        if v == "webdataset" and not (kind in DATASETS and DATASETS[kind].imagenet_format):
            raise ValueError("'webdataset' is only for ImageNet-format data (imagenet, synthetic)")
        return v

    @field_validator("train_size", mode="after")
    @classmethod
    def _train_size_fits(cls, v, info):
        kind = info.data.get("kind")
        if v is None or kind not in DATASETS:
            return v
        if DATASETS[kind].imagenet_format:
            raise ValueError(f"only for the small in-memory datasets, not for ImageNet-format {kind!r}")
        known = DATASETS[kind].train_size
        if known is not None and v > known:
            raise ValueError(f"{kind!r} has {known} train samples; train_size {v} is more")
        return v

    @model_serializer(mode="wrap")
    def _without_default_train_size(self, handler):
        """No train_size (the whole train set) is left out of the JSON, so the specs stored before it existed keep
        their fingerprints (idempotency keys, run tags)."""
        data = handler(self)
        if self.train_size is None:
            data.pop("train_size", None)
        return data

    @property
    def is_imagenet_format(self) -> bool:
        return DATASETS[self.kind].imagenet_format


class GridSpec(_Strict):
    arch: list[str] = Field(min_length=1)
    binarizer: list[Literal[BINARIZER_NAMES]] = Field(min_length=1)
    rho: list[float] = Field([RHO_DEFAULT], min_length=1)
    seed: list[int] = Field([0], min_length=1)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v):
        unknown = [a for a in v if a not in list_models()]
        if unknown:
            raise ValueError(f"unknown arch {', '.join(map(repr, unknown))}; available: {', '.join(list_models())}")
        return v

    @field_validator("rho")
    @classmethod
    def _rho_range(cls, v, info):
        bad = [r for r in v if not 0.0 <= r <= 1.0]
        if bad:
            raise ValueError(f"rho must be in [0, 1], got {bad}")
        binarizers = info.data.get("binarizer")
        if binarizers is not None and not any(takes_rho(b) for b in binarizers):
            # runs only when rho is given (defaults are not validated): a ρ that no trial would use is a mistake
            raise ValueError(f"rho is only used by the sibnn binarizers and none is in grid.binarizer "
                             f"({', '.join(binarizers)}); drop rho or add 'sibnn'")
        return v

    @model_serializer(mode="wrap")
    def _without_unused_rho(self, handler):
        """A grid without a sibnn binarizer is written without its (default) ρ, so that the spec's JSON, which the
        service stores and the jobs re-parse, passes the rule above on every round trip."""
        data = handler(self)
        if not any(takes_rho(b) for b in self.binarizer):
            data.pop("rho", None)
        return data

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v):
        if any(s < 0 or s > 2**31 - 1 for s in v):
            raise ValueError("seed must be in [0, 2^31 - 1]")
        return v

    @field_validator("arch", "binarizer", "rho", "seed")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("values must be unique")
        return v


class RecipeSpec(_Strict):
    name: Literal["aaai", "tnnls"] = "aaai"
    epochs: int = Field(100, ge=1, le=1000)
    batch_size: int = Field(256, ge=1, le=65_536, description="global batch, split over the trial's workers")
    lr: float | None = Field(None, gt=0, le=10)
    weight_decay: float | None = Field(None, ge=0, le=1)
    milestones: list[float] | None = Field(None, description="fractions of the epochs where the aaai lr ÷10")
    amp: bool = Field(False, description="bf16 autocast (GPU workers)")
    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile the model on GPU workers (fuses the binarizers)")
    weight_grad: Literal[WEIGHT_GRADS] = Field(
        "authors", description="binary weights' gradient: the authors' rule (path through α, default) or the "
                               "masked straight-through ablation (docs/fidelity.md)")

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v):
        if v is not None and (any(not 0 < m < 1 for m in v) or v != sorted(v)):
            raise ValueError("milestones must be increasing fractions in (0, 1)")
        return v


RUNNERS = ("train", "tune")


class ResourcesSpec(_Strict):
    workers_per_trial: int = Field(1, ge=1, le=512)
    gpus_per_worker: float = Field(0, ge=0, le=8)
    cpus_per_worker: float = Field(1, gt=0, le=256)
    runner: Literal[RUNNERS] = Field(
        "train", description="how a trial runs: 'train' (default) one Ray Train run, DDP over workers_per_trial "
                             "workers; 'tune' one process, inside its Ray Tune trial (single-worker CPU trials: no "
                             "Ray Train actors to start, for small models where their start-up outweighs training)")

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_or_fraction(cls, v):
        if v > 1 and v != int(v):
            raise ValueError("gpus_per_worker above 1 must be a whole number")
        return v

    @field_validator("runner")
    @classmethod
    def _tune_runner_is_one_cpu_process(cls, v, info):
        # runs only when runner is given (the default is not validated); the fields above are validated first
        if v == "tune" and (info.data.get("workers_per_trial") != 1 or info.data.get("gpus_per_worker") != 0):
            raise ValueError("runner 'tune' trains each trial in one CPU process: it needs workers_per_trial 1 "
                             "and gpus_per_worker 0 (use runner 'train' for DDP or GPU trials)")
        return v

    @model_serializer(mode="wrap")
    def _without_default_runner(self, handler):
        """The default runner is left out of the JSON, so the specs stored before it existed keep their
        fingerprints (idempotency keys, run tags)."""
        data = handler(self)
        if self.runner == "train":
            data.pop("runner", None)
        return data


class TrialSpec(_Strict):
    trial_id: str
    arch: str
    binarizer: str
    rho: float | None
    seed: int

    def params(self) -> dict:
        return {"arch": self.arch, "binarizer": self.binarizer, "rho": self.rho, "seed": self.seed}


class ExperimentSpec(_Strict):
    spec_version: Literal[1] = SPEC_VERSION
    name: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=2000)
    dataset: DatasetSpec
    grid: GridSpec
    recipe: RecipeSpec = RecipeSpec()
    resources: ResourcesSpec = ResourcesSpec()

    @field_validator("name")
    @classmethod
    def _name_chars(cls, v):
        if not v.strip() or not v.isprintable():
            raise ValueError("name must be printable text on one line, not blank")
        return v

    @model_validator(mode="after")
    def _batch_divides(self):
        if self.recipe.batch_size < self.resources.workers_per_trial:
            raise ValueError("recipe.batch_size must be at least resources.workers_per_trial (one sample per worker)")
        return self

    def trials(self) -> list[TrialSpec]:
        out = []
        for arch in self.grid.arch:
            for binarizer in self.grid.binarizer:
                rhos = self.grid.rho if takes_rho(binarizer) else [None]
                for rho in rhos:
                    for seed in self.grid.seed:
                        out.append(TrialSpec(trial_id=trial_id(arch, binarizer, rho, seed), arch=arch,
                                             binarizer=binarizer, rho=rho, seed=seed))
        return out

    def fingerprint(self) -> str:
        """A stable hash of the spec's content (idempotency, run manifests)."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def trial_id(arch: str, binarizer: str, rho: float | None, seed: int) -> str:
    """Stable and readable: the same grid point always gets the same id (restarts resume, never duplicate)."""
    r = "" if rho is None else f"-rho{rho:g}"
    return f"{arch}-{binarizer}{r}-s{seed}"


class SpecError(ValueError):
    """A spec that does not validate; ``errors`` lists (field path, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg in errors))


def parse_spec(data: dict | str) -> ExperimentSpec:
    """Validate a spec given as a dict or JSON text; raise SpecError naming each offending field."""
    try:
        if isinstance(data, str):
            return ExperimentSpec.model_validate_json(data)
        return ExperimentSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError([(".".join(str(p) for p in err["loc"]) or "spec", err["msg"].removeprefix("Value error, "))
                         for err in e.errors()]) from None
