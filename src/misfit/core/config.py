"""params.yaml, validated: every stage loads its knobs through these models.

A bad file stops the stage before it writes anything, with an error that names the
file, the field and what was expected.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from misfit.core.tasks import TASKS

Task = Literal["regression", "probability", "binary", "multiclass", "multilabel"]
Activation = Literal["none", "relu", "sigmoid", "softmax"]
Loss = Literal["mse", "mae", "rmse", "bce", "bcelogits", "ce"]
Variant = Literal["zscore", "raw"]
LossInput = Literal["output", "logits"]

MNIST_TRAIN_SIZE = 60_000
MNIST_TEST_SIZE = 10_000


class Cap(NamedTuple):
    """An upper bound of params.yaml: a value past it would exhaust the machine or the store
    (issue 24: 10,000 seeds on one cell took 11 GB before the first epoch and left 6,533
    runs RUNNING). `why` is printed with the refusal."""
    value: int
    why: str


# The largest seed: torch accepts 0..2**64-1, but a seed is also an MLflow tag and param,
# a numpy seed and a run-name field; 2**64 passed validation and then failed after the
# runs were created ("Overflow when unpacking long long"). 2**31-1 fits a signed 32-bit
# int, so every consumer reads it exactly.
SEED_CAP = Cap(2**31 - 1, "a seed must fit a signed 32-bit integer (0..2**31-1), which torch, "
                          "numpy and the MLflow store all take exactly")
# Seeds of one cell: 24 is the largest today (the ReLU lottery cells); 100 gives a survival
# rate an interval of +-10 points, and each seed is an MLflow run, a checkpoint and its
# training state held in memory at once.
SEEDS_CAP = Cap(100, "each seed is an MLflow run, a checkpoint and training state held in memory "
                     "at once; 100 already gives a rate an interval of about +-10 points")
# Further data draws: 4 today; each is a 5,000-image split written by the data stages
# and a set of runs in every `draws: true` cell.
DRAWS_CAP = Cap(16, "each further draw is a data split on disk and runs in every `draws: true` cell")
# Runs of one train stage (a cell's seeds + draws.subset_seeds x draws.seeds): 32 today.
# They train side by side in one process and are created in the store before the first
# epoch, so this bounds the stage's memory and the runs a killed stage can leave behind.
RUNS_CAP = Cap(128, "a train stage creates all its runs before the first epoch and trains them "
                    "side by side in one process (memory, and the runs a killed stage leaves)")
# Epochs: 200 today is a safety net that early stopping (patience) ends long before; each
# epoch of each run is a row of metrics in the store and an entry in records/<cell>.json.
EPOCHS_CAP = Cap(1000, "every epoch of every run is logged to the store and kept in records/<cell>.json; "
                       "early stopping ends runs long before")
# torch intra-op threads: more than there are cores only adds contention, and a huge
# number makes torch start that many threads.
THREADS_CAP = Cap(256, "more threads than cores only adds contention; torch starts each one")
# Batch sizes: a batch larger than the data is the whole data; the cap keeps a typo from
# asking for a tensor of billions of images.
BATCH_CAP = Cap(MNIST_TRAIN_SIZE, "a batch cannot be larger than the 60,000 MNIST training images")

PositiveInt = Annotated[int, Field(gt=0)]
Seed = Annotated[int, Field(ge=0, le=SEED_CAP.value)]
Seeds = Annotated[list[Seed], Field(min_length=1, max_length=SEEDS_CAP.value)]
BatchSize = Annotated[int, Field(gt=0, le=BATCH_CAP.value)]
PositiveFloat = Annotated[float, Field(gt=0)]

# how a cap's refusal is recognised in pydantic's errors: (error type, the bound) -> why
_CAP_REASONS = {
    ("less_than_equal", SEED_CAP.value): SEED_CAP.why,
    ("too_long", SEEDS_CAP.value): SEEDS_CAP.why,
    ("too_long", DRAWS_CAP.value): DRAWS_CAP.why,
    ("less_than_equal", EPOCHS_CAP.value): EPOCHS_CAP.why,
    ("less_than_equal", THREADS_CAP.value): THREADS_CAP.why,
    ("less_than_equal", BATCH_CAP.value): BATCH_CAP.why,
}


class ConfigError(ValueError):
    """params.yaml is unusable; the message names the file and the field."""


class _Strict(BaseModel):
    # strict: "2000" is not an int and 1.0 is not an int; a typo'd key is an error
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class DataConfig(_Strict):
    subset_seed: Seed
    n_train: PositiveInt
    n_valid: PositiveInt
    n_test: Annotated[int, Field(gt=0, le=MNIST_TEST_SIZE)]

    @model_validator(mode="after")
    def _subset_fits(self) -> DataConfig:
        if self.n_train + self.n_valid > MNIST_TRAIN_SIZE:
            raise ValueError(
                f"n_train + n_valid = {self.n_train + self.n_valid} exceeds the "
                f"{MNIST_TRAIN_SIZE} MNIST training images they are drawn from"
            )
        return self


class ProtocolConfig(_Strict):
    lr: PositiveFloat
    weight_decay: Annotated[float, Field(ge=0)]
    batch_size: BatchSize
    patience: Annotated[int, Field(gt=0, le=EPOCHS_CAP.value)]
    max_epochs: Annotated[int, Field(gt=0, le=EPOCHS_CAP.value)]
    eval_batch_size: BatchSize
    normalize_mean: float
    normalize_std: PositiveFloat
    device: Literal["auto", "cpu", "cuda"]
    threads: Annotated[int, Field(ge=0, le=THREADS_CAP.value)]  # 0: torch's default


class CellConfig(_Strict):
    task: Task
    activation: Activation
    loss: Loss
    variant: Variant | None  # regression only: zscore or raw
    loss_input: LossInput  # what the loss consumes: the model's output, or raw logits
    outputs: PositiveInt | None = None  # optional; must equal the task's output count
    seeds: Seeds | None = None  # this cell's own seeds; None: the study's `seeds`
    draws: bool = False  # also train on the further data draws of `draws`

    @model_validator(mode="after")
    def _consistent(self) -> CellConfig:
        if self.task == "regression" and self.variant is None:
            raise ValueError("variant (zscore or raw) is required for regression cells")
        if self.task != "regression" and self.variant is not None:
            raise ValueError(
                f"variant is for regression cells only, not allowed for {self.task} cells (use null)"
            )
        if self.loss_input == "logits" and self.activation not in ("sigmoid", "softmax"):
            raise ValueError(
                "loss_input 'logits' needs the activation that turns logits into "
                f"predictions (sigmoid or softmax), got {self.activation!r}"
            )
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        expected = TASKS[self.task].n_outputs
        if self.outputs is not None and self.outputs != expected:
            raise ValueError(
                f"outputs={self.outputs} is impossible for task {self.task!r}, "
                f"which has {expected} output(s)"
            )
        return self

    @property
    def n_outputs(self) -> int:
        return TASKS[self.task].n_outputs

    @property
    def model_activation(self) -> str:
        """The activation inside the network: none when the loss eats logits."""
        return "none" if self.loss_input == "logits" else self.activation

    def cell_id(self) -> str:
        middle = "logits" if self.loss_input == "logits" else self.activation
        suffix = f"-{self.variant}" if self.variant else ""
        return f"{self.task}-{middle}-{self.loss}{suffix}"


class DrawsConfig(_Strict):
    """Further 5,000-image draws (data.subset_seed values) for the cells marked `draws: true`.

    They measure draw-to-draw variance: a published single run came from another draw.
    """
    subset_seeds: Annotated[list[Seed], Field(max_length=DRAWS_CAP.value)]  # [] : no further draws
    seeds: Seeds  # the seeds trained on each further draw (and compared on the main draw)

    @model_validator(mode="after")
    def _distinct(self) -> DrawsConfig:
        for name in ("subset_seeds", "seeds"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must be distinct, got {values}")
        return self


class TrackingConfig(_Strict):
    experiment: Annotated[str, Field(min_length=1)]
    ui_base_url: str | None = None


class MarginsConfig(_Strict):
    """Equivalence margins: two cells whose difference is shown to lie within ±margin are
    called equivalent (a two one-sided test), per metric."""
    accuracy: Annotated[float, Field(gt=0, lt=1)]  # a share: 0.005 = ±0.5 accuracy points
    mse_ratio: Annotated[float, Field(gt=0, lt=1)]  # relative: 0.10 = MSE within ±10 % of the other's


class ReportConfig(_Strict):
    """How the report decides. Only the report stage reads these: no cell retrains for them."""
    alpha: Annotated[float, Field(gt=0, lt=0.5)]  # family-wise error rate of each task's comparisons
    power: Annotated[float, Field(gt=0.5, lt=1)]  # what "the runs it would take to decide" aims at
    margins: MarginsConfig
    bootstrap_resamples: Annotated[int, Field(ge=100, le=100_000)]  # P(X > Y)'s interval
    bootstrap_seed: Seed


class Params(_Strict):
    data: DataConfig
    protocol: ProtocolConfig
    seeds: Seeds  # every cell's seeds, unless the cell carries its own
    draws: DrawsConfig
    tracking: TrackingConfig
    report: ReportConfig
    cells: Annotated[dict[str, CellConfig], Field(min_length=1)]

    @model_validator(mode="after")
    def _ids_and_seeds(self) -> Params:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        for key, cell in self.cells.items():
            if key != cell.cell_id():
                raise ValueError(
                    f"cells.{key}: the cell id disagrees with its fields, which "
                    f"make the id {cell.cell_id()!r}"
                )
        for key, cell in self.cells.items():
            seeds = cell.seeds if cell.seeds is not None else self.seeds
            further = cell.draws and self.draws.subset_seeds
            if further and not set(self.draws.seeds) <= set(seeds):
                raise ValueError(f"cells.{key}: draws.seeds {self.draws.seeds} must be among the "
                                 f"cell's seeds {seeds}, so that the main draw has the same runs "
                                 "as each further draw")
            runs = len(self.members_of(key))
            if runs > RUNS_CAP.value:
                raise ValueError(f"cells.{key}: {runs} runs in one train stage (its seeds + "
                                 "draws.subset_seeds x draws.seeds) exceed the cap of "
                                 f"{RUNS_CAP.value}: {RUNS_CAP.why}")
        if self.data.subset_seed in self.draws.subset_seeds:
            raise ValueError(f"draws.subset_seeds must not repeat data.subset_seed "
                             f"({self.data.subset_seed}), the main draw; got {self.draws.subset_seeds}")
        return self

    def seeds_of(self, cell_id: str) -> list[int]:
        cell = self.cell(cell_id)
        return list(cell.seeds) if cell.seeds is not None else list(self.seeds)

    def members_of(self, cell_id: str) -> list[tuple[int, int]]:
        """(data.subset_seed, seed) of every run of a cell: the main draw's seeds first."""
        main = [(self.data.subset_seed, seed) for seed in self.seeds_of(cell_id)]
        if not self.cell(cell_id).draws:
            return main
        return main + [(draw, seed) for draw in self.draws.subset_seeds for seed in self.draws.seeds]

    def subset_seeds(self) -> list[int]:
        """Every draw the data stages prepare: the main one first."""
        return [self.data.subset_seed, *self.draws.subset_seeds]

    def cell(self, cell_id: str) -> CellConfig:
        if cell_id not in self.cells:
            raise ConfigError(f"unknown cell {cell_id!r}; params.yaml defines {sorted(self.cells)}")
        return self.cells[cell_id]


# libyaml's parser where PyYAML was built with it: 10x faster than the pure-Python one,
# and each train stage parses params.yaml and dvc.yaml
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(SAFE_LOADER):
    """YAML that refuses a key given twice (PyYAML silently keeps the last one)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _hint(value: object) -> str:
    """YAML 1.1 reads 1e-3 (no dot) as a string: say so when a number was meant."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return "; YAML reads this as text: write a number without quotes, e.g. 1.0e-3 rather than 1e-3"
    return ""


def _shown(value: object) -> str:
    if isinstance(value, list) and len(value) > 10:  # 10,000 seeds: say how many, not which
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _cap_reason(item: dict) -> str:
    """Why a cap exists, when the error is one of ours (see Cap)."""
    bound = (item.get("ctx") or {}).get("le", (item.get("ctx") or {}).get("max_length"))
    why = _CAP_REASONS.get((item["type"], bound))
    return f"; the cap is {bound}: {why}" if why else ""


def _describe(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for item in error.errors():
        where = _field_path(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            lines.append(f"  {where}: missing (this field is required)")
        elif item["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key (not a field of this section)")
        elif not item["loc"]:
            lines.append(f"  {message}")
        else:
            lines.append(f"  {where}: {message} (got {_shown(item.get('input'))}){_hint(item.get('input'))}"
                         f"{_cap_reason(item)}")
    return "\n".join(lines)


def parse_params(raw: object, source: Path) -> Params:
    if raw is None:
        raise ConfigError(f"{source}: the file is empty; expected the sections data, protocol, seeds, "
                          "draws, tracking and cells")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(source, error)) from None


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the parameters file ({error.strerror})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_params(raw, path)
