"""Training is a pure function of (cell, protocol, seed, data, thread count).

Tolerance everywhere in this file: zero. Histories are compared with ==, checkpoints with
torch.equal. Only the wall-clock field `seconds` of each epoch is left out.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import (
    REPO,
    base_env,
    digit_images,
    make_project,
    run,
    small_params,
    synthetic_mnist,
)

from misfit.core.config import CellConfig, ProtocolConfig, load_params
from misfit.data.labels import derive_targets
from misfit.data.load import CellData, Split
from misfit.train.loop import CellTrainer, Member
from misfit.train.runtime import configure

CPU = torch.device("cpu")
CELLS = {
    "regression-none-mse-zscore": dict(task="regression", activation="none", loss="mse",
                                       variant="zscore", loss_input="output"),
    "multiclass-softmax-ce": dict(task="multiclass", activation="softmax", loss="ce",
                                  variant=None, loss_input="output"),
    "binary-softmax-ce": dict(task="binary", activation="softmax", loss="ce",
                              variant=None, loss_input="output"),
    "regression-sigmoid-mse-raw": dict(task="regression", activation="sigmoid", loss="mse",
                                       variant="raw", loss_input="output"),
}


def cell_config(cell_id: str) -> CellConfig:
    return CellConfig(**CELLS[cell_id])


def protocol(**overrides) -> ProtocolConfig:
    values = dict(lr=0.001, weight_decay=0.01, batch_size=32, patience=2, max_epochs=12,
                  eval_batch_size=50, normalize_mean=0.5, normalize_std=0.5, device="cpu", threads=1)
    values.update(overrides)
    return ProtocolConfig(**values)


def synthetic_cell_data(task: str, sizes=(96, 64), seed: int = 0) -> CellData:
    """Tiny train/valid splits of the synthetic bar images, normalised like load_images."""
    rng = np.random.default_rng(seed)
    splits = []
    for n in sizes:
        labels = rng.integers(0, 10, n)
        x = torch.from_numpy(digit_images(labels, rng)).float().div(255).sub(0.5).div(0.5).unsqueeze(1)
        splits.append(Split(x, torch.from_numpy(derive_targets(labels)[task])))
    return CellData(*splits)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in history]


def same_values(a, b) -> bool:
    """Exact equality that counts nan == nan (a diverged seed records nan)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def assert_same_outcome(got, expected, label: str) -> None:
    assert got.seed == expected.seed
    assert (got.status, got.error) == (expected.status, expected.error), label
    assert same_values(without_time(got.history), without_time(expected.history)), label
    assert got.best_epoch == expected.best_epoch, label
    assert same_values(got.best_valid, expected.best_valid), label
    assert (got.best_state is None) == (expected.best_state is None), label
    if expected.best_state is not None:
        assert got.best_state.keys() == expected.best_state.keys()
        for name, tensor in expected.best_state.items():
            assert torch.equal(got.best_state[name], tensor), f"{label}: {name}"


def train(cell_id: str, seeds: list[int], **protocol_overrides):
    cell = cell_config(cell_id)
    trainer = CellTrainer.one_draw(cell, protocol(**protocol_overrides), seeds, synthetic_cell_data(cell.task), CPU)
    return trainer.run()


def test_training_twice_gives_identical_histories_and_checkpoints():
    """Same cell, seeds and data, trained twice in one process: zero difference."""
    first = train("regression-none-mse-zscore", [0, 1], max_epochs=5, patience=5)
    second = train("regression-none-mse-zscore", [0, 1], max_epochs=5, patience=5)
    for a, b in zip(first, second):
        assert a.status == "ok" and len(a.history) == 5
        assert_same_outcome(b, a, f"seed {a.seed}")


@pytest.mark.parametrize("cell_id", ["multiclass-softmax-ce", "binary-softmax-ce"])
def test_seeds_batched_equal_seeds_alone(cell_id):
    """Seeds [0, 1, 2] trained as one batched model vs each seed alone ([s]): every epoch's
    record, the best epoch, the best valid metric and every tensor of the best checkpoint
    are identical (tolerance zero). One seed stops early while the others go on, so the
    seeds that remain after it stops must not notice its absence from the fused step.
    """
    batched = train(cell_id, [0, 1, 2])
    epochs_run = [len(outcome.history) for outcome in batched]
    assert min(epochs_run) < max(epochs_run), f"no seed stopped before another: {epochs_run}"
    assert all(o.status == "ok" for o in batched)
    for outcome in batched:
        (alone,) = train(cell_id, [outcome.seed])
        assert_same_outcome(outcome, alone, f"{cell_id} seed {outcome.seed}")


def on_device(data: CellData, device: torch.device) -> CellData:
    return CellData(*(Split(s.x.to(device), s.y.to(device)) for s in (data.train, data.valid)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA path needs a GPU")
def test_training_on_cuda_twice_gives_identical_outcomes_for_every_cell():
    """protocol.device 'auto' trains on a GPU where there is one. There too, the same cell,
    seeds and data give the same numbers (misfit.train.runtime.make_cuda_repeatable), for every
    cell of params.yaml: each loss and activation runs under torch's deterministic mode."""
    cuda = configure(protocol(device="cuda"))
    try:
        for cell_id, cell in load_params(REPO / "params.yaml").cells.items():
            data = on_device(synthetic_cell_data(cell.task), cuda)
            first, second = (CellTrainer.one_draw(cell, protocol(device="cuda", max_epochs=3, patience=3), [0, 1],
                                                  data, cuda).run() for _ in range(2))
            for a, b in zip(first, second):
                assert_same_outcome(b, a, f"{cell_id} seed {a.seed} on CUDA")
    finally:
        torch.use_deterministic_algorithms(False)  # process-wide: the CPU tests after this one run as before


def test_runs_on_different_draws_batched_equal_each_run_alone():
    """A cell's runs on two data draws (different train, valid and z-score statistics)
    trained as one batched model: each (draw, seed) run equals that run trained alone."""
    cell = cell_config("regression-none-mse-zscore")
    draws = {0: synthetic_cell_data(cell.task, seed=0), 7: synthetic_cell_data(cell.task, seed=7)}
    members = [Member(0, 0), Member(0, 1), Member(7, 0)]
    batched = CellTrainer(cell, protocol(max_epochs=4, patience=4), members, draws, CPU).run()
    assert batched[0].history[-1]["valid_metric"] != batched[2].history[-1]["valid_metric"]
    for member, outcome in zip(members, batched):
        (alone,) = CellTrainer(cell, protocol(max_epochs=4, patience=4), [member],
                               {member.subset_seed: draws[member.subset_seed]}, CPU).run()
        assert outcome.subset_seed == alone.subset_seed == member.subset_seed
        assert outcome.initial == alone.initial
        assert_same_outcome(outcome, alone, f"draw {member.subset_seed} seed {member.seed}")


@pytest.mark.slow
def test_train_stage_twice_gives_identical_records(tmp_path):
    """`dvc repro -f train@<cell>` twice in a real project: the records differ only in run ids
    and wall-clock times; every epoch of every seed and every checkpoint tensor is equal."""
    cell = "multiclass-softmax-ce"
    manifest = synthetic_mnist(tmp_path / "mirror")
    env = base_env(MNIST_MIRROR=str(tmp_path / "mirror"), MNIST_MANIFEST=str(manifest), OMP_NUM_THREADS="1")
    params = small_params([cell], protocol__max_epochs=6, protocol__patience=2, protocol__threads=1)
    project = make_project(tmp_path / "project", params)

    def train_stage() -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
        run(["dvc", "repro", "-f", f"train@{cell}"], project, env)
        directory = project / "models" / cell
        record = json.loads((project / "records" / f"{cell}.json").read_text())
        states = {p.name: torch.load(p, weights_only=True) for p in sorted(directory.glob("*.pt"))}
        return record, states

    first, first_states = train_stage()
    second, second_states = train_stage()
    assert first["parent_run_id"] != second["parent_run_id"]  # really trained twice
    assert len(first["runs"]) == 3 and all(r["status"] == "ok" for r in first["runs"])  # 2 seeds + 1 on a further draw
    for a, b in zip(first["runs"], second["runs"]):
        assert a["run_id"] != b["run_id"]
        for key in ("seed", "subset_seed", "config_digest", "status", "error", "best_epoch", "valid_best",
                    "epochs_run", "checkpoint", "checkpoint_sha256", "initial"):
            assert a[key] == b[key], key
        assert without_time(a["history"]) == without_time(b["history"])
    assert first["cell_digest"] == second["cell_digest"]
    assert first_states.keys() == second_states.keys() and first_states
    for name, state in first_states.items():
        for key, tensor in state.items():
            assert torch.equal(second_states[name][key], tensor), f"{name}: {key}"
