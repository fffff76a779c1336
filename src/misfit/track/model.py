"""Each kept checkpoint as an MLflow Model, and each cell's best run in the model registry.

`mlflow.pyfunc.load_model(f"runs:/{run_id}/model")` gives a model that takes raw MNIST
images (uint8, [n, 28, 28]) and returns the task's answer, one per image (a numpy array):
- regression: the stroke count, float64 (the float32 the net computes, exactly);
- probability, binary: 0 or 1; multiclass: the digit (int64, [n]);
- multilabel: the 4 bits (int64, [n, 4]).
Inside: the pre-processing of misfit.data.load.load_images (pixels / 255, then
(x - protocol.normalize_mean) / protocol.normalize_std), the reference CNN with the
checkpoint's weights, and the cell's reading of its outputs (misfit.train.targets.CellTargets,
with the train targets' mean and sd of a z-scored regression cell stored in the model).

The model is a pyfunc `PythonModel`: the checkpoint and a small JSON (`misfit_model.json`:
the cell, the normalisation, the target mean and sd, the batch size) are its artifacts; its
class is pickled by reference, so loading it needs the `misfit` package installed (the
commit in the run's `git_commit` tag), besides the pinned torch, numpy, mlflow and pydantic.

Each cell's best run (by the valid score evaluate@ re-computed, on the main draw: choosing
by test would fit the test set) is registered as `misfit-<cell>` with the alias `best`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow.pyfunc
import numpy as np

MODEL_NAME = "model"  # the model's name in its run: runs:/<run id>/model
BEST_ALIAS = "best"
MODEL_FORMAT = "1"  # bump when misfit_model.json or the answers change: a new model is logged
CONFIG_FILE = "misfit_model.json"
EXAMPLE_IMAGES = 4  # test images in each model's input example
CHECKPOINT_TAG, FORMAT_TAG = "misfit.checkpoint_sha256", "misfit.model_format"
# what loading the model imports; pinned so MLflow does not infer them (inference imports the
# model and everything it uses: seconds per run, 584 runs)
PINNED = ("torch", "numpy", "mlflow", "pydantic")
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def registered_name(cell_id: str) -> str:
    return f"misfit-{cell_id}"


def pip_requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in PINNED]


@dataclass
class Answerer:
    """Raw images in, the task's answers out: what the logged model's predict does."""
    net: object  # misfit.train.model.CNN, eval mode
    targets: object  # misfit.train.targets.CellTargets
    normalize_mean: float
    normalize_std: float
    batch_size: int
    regression: bool

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        x = normalised(images, self.normalize_mean, self.normalize_std)
        with torch.no_grad():  # in chunks of eval_batch_size, as evaluate@ scored the test split
            outputs = torch.cat([self.net(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)])
        answers = self.targets.predict(outputs)
        return answers.double().numpy() if self.regression else answers.long().numpy()


def normalised(images: np.ndarray, mean: float, std: float):
    """misfit.data.load.load_images's arithmetic, op for op (float32): the answers must
    reproduce the recorded test metric exactly."""
    import torch

    pixels = np.asarray(images)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[1:] != (28, 28):
        raise ValueError(f"expected uint8 images of shape [n, 28, 28], got {pixels.dtype} {list(pixels.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(255.0)
    return x.sub_(mean).div_(std).unsqueeze(1)


def model_config(cell: dict, protocol: dict, target_mean: float, target_std: float) -> dict:
    """misfit_model.json: all the model needs besides the weights. `protocol`: the resolved
    protocol params (as the train record holds them); target_mean/std: CellTargets' (0 and 1
    unless the cell z-scores its regression targets)."""
    return {"format": MODEL_FORMAT, "cell": cell, "normalize_mean": protocol["normalize_mean"],
            "normalize_std": protocol["normalize_std"], "batch_size": protocol["eval_batch_size"],
            "target_mean": target_mean, "target_std": target_std}


def answerer(config: dict, checkpoint: Path) -> Answerer:
    import torch

    from misfit.core.config import CellConfig
    from misfit.train.model import CNN
    from misfit.train.targets import CellTargets

    cell = CellConfig.model_validate(config["cell"])
    net = CNN(cell.n_outputs, cell.model_activation)
    net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    # CellTargets computes a z-scored cell's mean and sd from the draw's train targets, which
    # the model does not carry: built on a stand-in, then given the stored numbers
    targets = CellTargets(cell, torch.tensor([0.0, 1.0]))
    targets.mean, targets.std = config["target_mean"], config["target_std"]
    return Answerer(net.to(memory_format=torch.channels_last).eval(), targets, config["normalize_mean"],
                    config["normalize_std"], config["batch_size"], cell.task == "regression")


class MisfitModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: artifacts `checkpoint` (the state_dict) and `config` (misfit_model.json)."""

    # MLflow wraps a subclass's predict to validate input by its type hints, and warns (on
    # every import, past any warnings filter) when there are none. Ours has none on purpose:
    # the signature logged with the model says uint8 [n, 28, 28], which no type hint can; the
    # pyfunc checks input against that signature. This MLflow attribute skips the wrapping.
    _skip_type_hint_validation = True

    def load_context(self, context):
        config = json.loads(Path(context.artifacts["config"]).read_text())
        self.answer = answerer(config, Path(context.artifacts["checkpoint"]))

    def predict(self, context, model_input, params=None):
        """uint8 images [n, 28, 28] -> the task's answers (see the module's docstring)."""
        return self.answer(model_input)


def logged_model(client, run, checkpoint_sha256: str):
    """The run's model, if one of this format was logged from this checkpoint (evaluate@ ran
    before): logging it again would only add a copy."""
    for output in (run.outputs.model_outputs if run.outputs else []):
        found = client.get_logged_model(output.model_id)
        if (found.name == MODEL_NAME and found.tags.get(CHECKPOINT_TAG) == checkpoint_sha256
                and found.tags.get(FORMAT_TAG) == MODEL_FORMAT):
            return found
    return None


def log_model(uri: str, run_id: str, checkpoint: Path, checkpoint_sha256: str, config: dict,
              example_images: np.ndarray, tags: dict[str, str] | None = None) -> str:
    """Log the checkpoint as the run's MLflow Model (unless it already is); returns its model id.

    The run was created and closed by train@ (or restore-runs). The model is created in the
    run's experiment (left to itself, MLflow 3 puts it in the active experiment, "Default"
    here, where runs:/<id>/model does not look), and `Model.log` with `run_id` links it to
    the run without starting the run, so its status and end time stay as they were.
    """
    from mlflow import MlflowClient
    from mlflow.models import Model, infer_signature

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    existing = logged_model(client, run, checkpoint_sha256)
    if existing is not None:
        return existing.model_id
    with tempfile.TemporaryDirectory(prefix="misfit-model-") as scratch:
        config_path = Path(scratch) / CONFIG_FILE
        config_path.write_text(json.dumps(config, indent=1, sort_keys=True))
        example = np.ascontiguousarray(example_images[:EXAMPLE_IMAGES], dtype=np.uint8)
        signature = infer_signature(example, answerer(config, checkpoint)(example))
        created = client.create_logged_model(
            run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id, params=run.data.params,
            tags={CHECKPOINT_TAG: checkpoint_sha256, FORMAT_TAG: MODEL_FORMAT, **(tags or {})})
        with tracking_uri_set(uri), quiet_mlflow():  # Model.log resolves the store from the global URI
            Model.log(  # artifact_path: MLflow 3's deprecated positional; the model's name is `name`
                None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id, model_id=created.model_id,
                python_model=MisfitModel(), artifacts={"checkpoint": str(checkpoint), "config": str(config_path)},
                signature=signature, input_example=example, pip_requirements=pip_requirements())
    return created.model_id


@contextlib.contextmanager
def quiet_mlflow():
    """Without MLflow's per-model chatter: a progress bar for each artifact it reads back, and
    log lines on pickling and on validating the input example (584 runs: thousands of lines)."""
    logger = logging.getLogger("mlflow")
    level, bar = logger.level, os.environ.get(PROGRESS_BAR_ENV)
    logger.setLevel(logging.ERROR)
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = bar


class tracking_uri_set:
    """mlflow's global tracking URI set to `uri` for a block, then put back."""

    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self):
        self.before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        mlflow.set_tracking_uri(self.uri)

    def __exit__(self, *exc):
        mlflow.set_tracking_uri(self.before)


def best_run(runs: list, trained: dict, higher_is_better: bool, main_subset_seed: int):
    """The run to register: the best re-scored valid number among the main draw's runs that
    trained to the end (runs on further draws are scored on other valid images, so not
    comparable); ties go to the lowest seed. `runs`: EvaluatedRun; `trained`: (draw, seed) ->
    TrainedRun. None when no run qualifies (every run failed, say)."""
    eligible = [r for r in runs if r.subset_seed == main_subset_seed and math.isfinite(r.valid)
                and trained.get((r.subset_seed, r.seed)) is not None
                and trained[(r.subset_seed, r.seed)].status == "ok"]
    if not eligible:
        return None
    sign = -1.0 if higher_is_better else 1.0
    return min(eligible, key=lambda r: (sign * r.valid, r.seed))


def register_best(uri: str, cell_id: str, run_id: str, model_id: str) -> str:
    """`misfit-<cell>@best` -> the model of `run_id`; returns the version. A version already
    registered for this run's model is reused, so re-running evaluate@ adds none."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client, name = MlflowClient(uri), registered_name(cell_id)
    try:
        client.create_registered_model(name, description=f"cell {cell_id}: the run with the best valid score")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"models:/{model_id}"  # (a version read back from SQLite has no model_id; its source says it)
    same = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id and v.source == source]
    if same:
        version = same[0]
    else:
        with tracking_uri_set(uri):  # the registry finds models:/<id> through the global URI
            version = client.create_model_version(name, source=source, run_id=run_id,
                                                  model_id=model_id, await_creation_for=0)
    client.set_registered_model_alias(name, BEST_ALIAS, version.version)
    return str(version.version)

