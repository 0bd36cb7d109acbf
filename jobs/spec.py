"""The experiment spec (DESIGN.md "Contracts"): what a user POSTs, what the Ray job runs, versioned.

A spec is a grid arch × binarizer × ρ × seed over one dataset with one recipe and per-trial resources. Unknown
fields and impossible values are rejected with the field named, before anything runs. ``trials()`` expands the
grid; ρ only varies for the Si-BNN binarizers (sign and FP have no ρ).

Two optional sections make trials depend on other trials of the same experiment (ReActNet's recipe, [code]
github liuzechun/ReActNet): ``teacher``, one full-precision trial that every binary trial distils from, and
``stages``, two-step training — each binary grid point becomes a chain of two trials, the second initialised from
the first's final weights. A trial names what it needs (``TrialSpec.needs``: role → trial id); ``waves()`` groups
the trials so that each wave needs only earlier ones, and the sweep runs one wave after the other. A spec without
these sections has one wave, and its JSON (so its fingerprint) is what it was before they existed.
"""
from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer,
                      model_validator)

from jobs.runners import DEFAULT_RUNNER, RUNNER_NAMES, RUNNERS
from sibnn.catalog import (BINARIZER_NAMES, DATA_FORMATS, DATASET_KINDS, DATASETS, POLICIES, RECIPE_NAMES,
                           RHO_BINARIZERS, RHO_DEFAULT, SPEC_WEIGHT_GRADS, WEIGHT_GRAD_DEFAULT,
                           check_rho)
from sibnn.catalog import model_names as list_models
from sibnn.catalog import binarizer_info, takes_rho  # binarizer_info: the service reads it through the spec

SPEC_VERSION = 1


MAX_SYNTHETIC_IMAGES = 20_000  # per synthetic dataset (train), so one request cannot fill a disk
FULL_PRECISION = "fp"  # the catalog's one binarizer that binarizes nothing: every other one makes a binary trial
STAGE_WEIGHTS = ("real", "binary")  # a stage's weights (sibnn.trial.TrialConfig.weights): "real" is two-step's step 1
NEED_ROLES = ("teacher", "init")  # what a trial needs another trial for: its distillation teacher, its initial weights


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


def _check_archs(archs: list[str]) -> None:
    unknown = [a for a in archs if a not in list_models()]
    if unknown:
        raise ValueError(f"unknown arch {', '.join(map(repr, unknown))}; available: {', '.join(list_models())}")


def _needs_a_binary_grid(grid, why: str) -> None:
    """A ValueError saying ``why`` when the grid (if it validated) has no binary binarizer."""
    if grid is not None and not any(is_binary(b) for b in grid.binarizer):
        raise ValueError(f"{why}: grid.binarizer has only {FULL_PRECISION!r}")


def is_binary(binarizer: str) -> bool:
    """A binarizer whose trials are binary networks: they distil from the teacher and train in the stages."""
    return binarizer != FULL_PRECISION


class GridSpec(_Strict):
    arch: list[str] = Field(min_length=1)
    binarizer: list[Literal[BINARIZER_NAMES]] = Field(min_length=1)
    rho: list[float] = Field([RHO_DEFAULT], min_length=1)
    seed: list[int] = Field([0], min_length=1)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v):
        _check_archs(v)
        return v

    @field_validator("rho")
    @classmethod
    def _rho_range(cls, v, info):
        errors = []
        for r in v:
            try:
                check_rho(r)
            except ValueError as e:
                errors.append(str(e))
        if errors:
            raise ValueError("; ".join(errors))
        binarizers = info.data.get("binarizer")
        if binarizers is not None and not any(takes_rho(b) for b in binarizers):
            # runs only when rho is given (defaults are not validated): a ρ that no trial would use is a mistake
            raise ValueError(f"rho is only used by the {', '.join(RHO_BINARIZERS)} binarizers and none is in "
                             f"grid.binarizer ({', '.join(binarizers)}); drop rho or add {RHO_BINARIZERS[0]!r}")
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
    name: Literal[RECIPE_NAMES] = "aaai"
    epochs: int = Field(100, ge=1, le=1000)
    batch_size: int = Field(256, ge=1, le=65_536, description="global batch, split over the trial's workers")
    lr: float | None = Field(None, gt=0, le=10)
    weight_decay: float | None = Field(None, ge=0, le=1)
    milestones: list[float] | None = Field(None, description="fractions of the epochs where the aaai lr ÷10")
    amp: bool = Field(False, description="bf16 autocast (GPU workers)")
    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile the model on GPU workers (fuses the binarizers)")
    weight_grad: Literal[SPEC_WEIGHT_GRADS] = Field(
        WEIGHT_GRAD_DEFAULT, description="binary weights' rule: the Si-BNN authors' (path through α, default), the "
                                         "masked straight-through ablation, a comparator's (xnornet, bireal, irnet), or "
                                         "'paired': each binarizer with its own authors' rule (docs/fidelity.md)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the training CE; 0, the "
                                   "default: none (ReActNet's scripts build a 0.1 one and never use it). Evaluation "
                                   "is plain CE")
    ce_weight: float = Field(0.0, ge=0, le=100, description="distilling from a teacher: the weight of the hard-label "
                             "CE added to the distribution loss (0, the default: that loss alone, as ReActNet)")

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v):
        if v is not None and (any(not 0 < m < 1 for m in v) or v != sorted(v)):
            raise ValueError("milestones must be increasing fractions in (0, 1)")
        return v

    @model_serializer(mode="wrap")
    def _without_default_loss(self, handler):
        """No label smoothing and no CE weight (the plain CE) are left out of the JSON, so the specs stored before
        they existed keep their fingerprints."""
        data = handler(self)
        for key in ("label_smoothing", "ce_weight"):
            if getattr(self, key) == 0.0:
                data.pop(key, None)
        return data


class ResourcesSpec(_Strict):
    workers_per_trial: int = Field(1, ge=1, le=512)
    gpus_per_worker: float = Field(0, ge=0, le=8)
    cpus_per_worker: float = Field(1, gt=0, le=256)
    runner: Literal[RUNNER_NAMES] = Field(
        DEFAULT_RUNNER, description="how a trial runs: 'train' (default) one Ray Train run, DDP over workers_per_trial "
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
    def _runner_takes_the_resources(cls, v, info):
        # runs only when runner is given (the default is not validated); the fields above are validated first
        problem = RUNNERS[v].resources_error(info.data.get("workers_per_trial"), info.data.get("gpus_per_worker"))
        if problem:
            raise ValueError(problem)
        return v

    @model_serializer(mode="wrap")
    def _without_default_runner(self, handler):
        """The default runner is left out of the JSON, so the specs stored before it existed keep their
        fingerprints (idempotency keys, run tags)."""
        data = handler(self)
        if self.runner == DEFAULT_RUNNER:
            data.pop("runner", None)
        return data


MLFLOW_TEACHER_PREFIXES = ("models:/", "runs:/")  # a teacher trained elsewhere: an MLflow model or a trial's run


def is_external(need: str) -> bool:
    """A need that is not a trial of this experiment but an MLflow URI (``TeacherSpec.model_uri``)."""
    return need.startswith(MLFLOW_TEACHER_PREFIXES)


class TeacherSpec(_Strict):
    """What every binary trial distils from (its best checkpoint): either one teacher trial of the experiment,
    trained in it first with its own recipe (``arch``...), or a model trained before (``model_uri``), so one teacher
    serves many experiments. [choice] full precision only, as ReActNet's real-valued ResNet-34."""

    arch: str | None = Field(None, description="the teacher trial's arch (or give model_uri instead)")
    binarizer: Literal[BINARIZER_NAMES] = FULL_PRECISION
    seed: int = Field(0, ge=0, le=2**31 - 1)
    recipe: RecipeSpec = RecipeSpec()
    model_uri: str | None = Field(
        None, validate_default=True, pattern=r"^(models:/[^/@\s]+(/[0-9]+|@[A-Za-z0-9_-]+)?|runs:/[0-9a-f]{32})$",
        description="instead of a teacher trial: a sibnn model trained before, on this service's MLflow — "
                    "'models:/sibnn-<arch>-fp/<version>' (or @alias: what a sweep registers), 'models:/<model id>' (a "
                    "results row's model_uri) or 'runs:/<trial run id>'; the trial run's checkpoint is downloaded by "
                    "each training process")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v):
        if v is not None:
            _check_archs([v])
        return v

    @field_validator("binarizer")
    @classmethod
    def _full_precision(cls, v):
        if is_binary(v):
            raise ValueError(f"the teacher is a full-precision model (ReActNet distils from a real-valued ResNet): "
                             f"{FULL_PRECISION!r}, not {v!r}")
        return v

    @field_validator("recipe")
    @classmethod
    def _no_teacher_of_its_own(cls, v):
        if v.ce_weight:
            raise ValueError("ce_weight weighs the CE next to a teacher's loss; the teacher itself has no teacher")
        return v

    @field_validator("model_uri", mode="after")
    @classmethod
    def _one_teacher(cls, v, info):
        trained_here = [k for k in ("arch",) if info.data.get(k) is not None]
        if v is None and not trained_here:
            raise ValueError("give the teacher trial's arch, or the model_uri of a teacher trained before")
        if v is not None and trained_here:
            raise ValueError("either a teacher trial (arch, binarizer, seed, recipe) or model_uri, not both")
        return v

    @model_validator(mode="after")
    def _nothing_to_train_for_a_given_model(self):
        given = {"seed", "recipe", "binarizer"} & self.model_fields_set
        if self.model_uri is not None and given:
            raise ValueError(f"teacher.{sorted(given)[0]}: a teacher given by model_uri is not trained here")
        return self

    @model_serializer(mode="wrap")
    def _only_what_is_given(self, handler):
        """A teacher trial is written without model_uri (as before it existed: same fingerprints); a given model
        as its model_uri alone."""
        data = handler(self)
        if self.model_uri is None:
            data.pop("model_uri", None)
            return data
        return {"model_uri": self.model_uri}


class StageSpec(_Strict):
    """One step of two-step training (ReActNet: step 1 binary activations with real weights, step 2 binary
    weights too, initialised from step 1's final model)."""

    name: str = Field(min_length=1, max_length=20, pattern=r"^[a-z][a-z0-9_]*$",
                      description="short, lower case: the stage's trials are <grid point's trial id>-<name>")
    weights: Literal[STAGE_WEIGHTS]
    recipe: RecipeSpec = RecipeSpec()


class TrialSpec(_Strict):
    trial_id: str
    arch: str
    binarizer: str
    rho: float | None
    seed: int
    role: Literal["grid", "teacher"] = "grid"  # a grid point, or the experiment's teacher
    stage: str | None = None  # the stage's name (two-step training); None: trained once
    weights: Literal[STAGE_WEIGHTS] | None = None  # the stage's weights; None: the binarizer's own
    recipe: RecipeSpec | None = None  # the teacher's or the stage's recipe; None: the spec's
    needs: dict[Literal[NEED_ROLES], str] = {}  # role ("teacher" | "init") → the trial id it needs (or a teacher's MLflow URI: is_external)

    def params(self) -> dict:
        """The trial's MLflow params: the grid point, and what makes it a teacher or a stage (only when it is)."""
        extra = {"role": self.role if self.role != "grid" else None, "stage": self.stage, "weights": self.weights,
                 "teacher_trial": self.needs.get("teacher"), "init_trial": self.needs.get("init")}
        return {"arch": self.arch, "binarizer": self.binarizer, "rho": self.rho, "seed": self.seed,
                **{k: v for k, v in extra.items() if v is not None}}

    @model_serializer(mode="wrap")
    def _without_defaults(self, handler):
        """A trial of a spec without dependencies dumps as before they existed (Tune's grid point, restores)."""
        data = handler(self)
        for key, default in (("role", "grid"), ("stage", None), ("weights", None), ("recipe", None), ("needs", {})):
            if getattr(self, key) == default:
                data.pop(key, None)
        return data


class ExperimentSpec(_Strict):
    spec_version: Literal[1] = SPEC_VERSION
    name: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=2000)
    dataset: DatasetSpec
    grid: GridSpec
    recipe: RecipeSpec = RecipeSpec()
    resources: ResourcesSpec = ResourcesSpec()
    teacher: TeacherSpec | None = Field(
        None, validate_default=True,
        description="a full-precision teacher trial, trained first in this experiment; every binary grid point "
                    "distils from its best checkpoint (absent: no distillation)")
    stages: list[StageSpec] | None = Field(
        None, min_length=2, max_length=2,
        description="two-step training (ReActNet): each binary grid point (of stage_binarizers) becomes a chain of "
                    "two trials <trial id>-<stage name>, the second initialised from the first's final checkpoint, "
                    "each with its stage's recipe; the last stage must have binary weights. The FP grid points (and "
                    "the binarizers not in stage_binarizers) run once, with the spec's recipe")
    stage_binarizers: list[Literal[BINARIZER_NAMES]] | None = Field(
        None, min_length=1, description="the binarizers whose grid points train in the stages (default: every "
                                        "binary one of grid.binarizer); the others train once")

    @field_validator("name")
    @classmethod
    def _name_chars(cls, v):
        if not v.strip() or not v.isprintable():
            raise ValueError("name must be printable text on one line, not blank")
        return v

    # Field validators (they see the fields before them: grid, recipe, then teacher, then stages), so that an error
    # names teacher / stages / stage_binarizers. A field that failed its own validation is absent from info.data.
    @field_validator("teacher", mode="after")
    @classmethod
    def _teacher_has_students(cls, v, info):
        grid, recipe = info.data.get("grid"), info.data.get("recipe")
        if v is None:
            if recipe is not None and recipe.ce_weight:
                raise ValueError("recipe.ce_weight weighs the hard-label CE next to a teacher's distribution loss, "
                                 "but there is no teacher: add one or drop ce_weight")
            return v
        _needs_a_binary_grid(grid, "no binary trial would distil from it")
        return v

    @field_validator("stages", mode="after")
    @classmethod
    def _stages_fit(cls, v, info):
        if v is None:  # given as null: no stages
            return v
        grid = info.data.get("grid")
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {', '.join(names)}")
        if v[-1].weights != "binary":
            raise ValueError(f"the last stage ({v[-1].name!r}) must train binary weights: it makes the final model")
        _needs_a_binary_grid(grid, "stages train the binary grid points in two steps")
        if "teacher" in info.data and info.data["teacher"] is None:
            distilling = [s.name for s in v if s.recipe.ce_weight]
            if distilling:
                raise ValueError(f"the recipe of stage {', '.join(distilling)} has a ce_weight, which weighs the CE "
                                 "next to a teacher's loss, but there is no teacher")
        return v

    @field_validator("stage_binarizers", mode="after")
    @classmethod
    def _staged_are_in_the_grid(cls, v, info):
        if v is None:  # given as null: the default
            return v
        if "stages" in info.data and info.data["stages"] is None:
            raise ValueError("only with stages: it says which binarizers train in them")
        grid = info.data.get("grid")
        if len(set(v)) != len(v):
            raise ValueError("values must be unique")
        if not all(is_binary(b) for b in v):
            raise ValueError(f"{FULL_PRECISION!r} trials train once: the stages binarize")
        missing = [b for b in v if grid is not None and b not in grid.binarizer]
        if missing:
            raise ValueError(f"{', '.join(map(repr, missing))} not in grid.binarizer")
        return v

    @model_validator(mode="after")
    def _batch_divides(self):
        recipes = [("recipe", self.recipe)]
        if self.teacher_trial() is not None:
            recipes.append(("teacher.recipe", self.teacher.recipe))
        recipes += [(f"stages.{i}.recipe", s.recipe) for i, s in enumerate(self.stages or [])]
        for where, recipe in recipes:
            if recipe.batch_size < self.resources.workers_per_trial:
                raise ValueError(f"{where}.batch_size must be at least resources.workers_per_trial (one sample per "
                                 "worker)")
        return self

    @model_serializer(mode="wrap")
    def _without_absent_sections(self, handler):
        """No teacher and no stages are left out of the JSON, so the specs stored before they existed keep their
        fingerprints (idempotency keys, run tags)."""
        data = handler(self)
        for key in ("teacher", "stages", "stage_binarizers"):
            if getattr(self, key) is None:
                data.pop(key, None)
        return data

    def staged(self, binarizer: str) -> bool:
        """Whether the grid points of ``binarizer`` train in the stages."""
        if self.stages is None or not is_binary(binarizer):
            return False
        return self.stage_binarizers is None or binarizer in self.stage_binarizers

    def teacher_trial(self) -> TrialSpec | None:
        """The teacher trial trained in this experiment (None: no teacher, or one given by its model_uri)."""
        t = self.teacher
        if t is None or t.model_uri is not None:
            return None
        return TrialSpec(trial_id=f"teacher-{trial_id(t.arch, t.binarizer, None, t.seed)}", arch=t.arch,
                         binarizer=t.binarizer, rho=None, seed=t.seed, role="teacher", recipe=t.recipe)

    def _expand(self) -> list[TrialSpec]:
        """Every trial, each after the trials it needs: the teacher, then the grid points (a chain per staged one)."""
        teacher = self.teacher_trial()
        out = [teacher] if teacher else []
        # what a binary trial distils from: the teacher trial, or the MLflow URI of a teacher trained before
        teacher_need = teacher.trial_id if teacher else (self.teacher.model_uri if self.teacher else None)
        for arch in self.grid.arch:
            for binarizer in self.grid.binarizer:
                rhos = self.grid.rho if takes_rho(binarizer) else [None]
                for rho in rhos:
                    for seed in self.grid.seed:
                        point = dict(arch=arch, binarizer=binarizer, rho=rho, seed=seed)
                        tid = trial_id(arch, binarizer, rho, seed)
                        needs = {"teacher": teacher_need} if teacher_need and is_binary(binarizer) else {}
                        if not self.staged(binarizer):
                            out.append(TrialSpec(trial_id=tid, **point, needs=needs))
                            continue
                        previous = None
                        for stage in self.stages:
                            out.append(TrialSpec(trial_id=f"{tid}-{stage.name}", **point, stage=stage.name,
                                                 weights=stage.weights, recipe=stage.recipe,
                                                 needs={**needs, **({"init": previous} if previous else {})}))
                            previous = out[-1].trial_id
        return out

    def waves(self) -> list[list[TrialSpec]]:
        """The trials in waves: each trial in the wave after the last one holding a trial it needs. Without a teacher
        or stages: one wave, every trial (in the grid's order)."""
        depth: dict[str, int] = {}
        trials = self._expand()
        for t in trials:
            depth[t.trial_id] = 1 + max((depth[n] for n in t.needs.values() if not is_external(n)), default=-1)
        return [[t for t in trials if depth[t.trial_id] == k] for k in range(max(depth.values(), default=0) + 1)]

    def trials(self) -> list[TrialSpec]:
        """Every trial, in a dependency order: wave by wave (``waves``)."""
        return [t for wave in self.waves() for t in wave]

    def recipe_of(self, trial: TrialSpec) -> RecipeSpec:
        """The recipe a trial trains with: its own (the teacher's, its stage's), else the spec's."""
        return trial.recipe or self.recipe

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
