"""Upper bounds of params.yaml (issue 24, item 5): a value that would exhaust the machine or
the tracking store is refused by load_params, naming the file, the field, the cap and why,
before any stage creates anything."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, base_env, make_project

from misfit.core.config import EPOCHS_CAP, RUNS_CAP, SEED_CAP, SEEDS_CAP, ConfigError, load_params

BASE = yaml.safe_load((REPO / "params.yaml").read_text())
RELU_CELL = "regression-relu-mse-raw"


def write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def refusal(tmp_path: Path, change) -> str:
    params = copy.deepcopy(BASE)
    change(params)
    path = write(tmp_path, params)
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:"), message
    return message


def test_todays_params_fit_every_cap():
    params = load_params(REPO / "params.yaml")
    assert max(len(params.members_of(cell)) for cell in params.cells) == 32  # 24 seeds + 4 draws x 2
    assert 32 <= RUNS_CAP.value


def test_every_cell_with_draws_still_validates(tmp_path):
    params = copy.deepcopy(BASE)
    for cell in params["cells"].values():
        cell["draws"] = True
    load_params(write(tmp_path, params))


def test_ten_thousand_seeds_on_one_cell_are_refused(tmp_path):
    message = refusal(tmp_path, lambda p: p["cells"][RELU_CELL].update(seeds=list(range(10_000))))
    assert f"cells.{RELU_CELL}.seeds" in message
    assert f"the cap is {SEEDS_CAP.value}" in message and "MLflow run" in message
    assert "a list of 10000" in message and len(message) < 1000  # not 10,000 numbers


@pytest.mark.parametrize("where", ["seeds", "cell", "draws", "subset"])
def test_a_seed_past_2_31_is_refused(tmp_path, where):
    big = 2**64

    def change(p):
        if where == "seeds":
            p["seeds"] = [0, 1, 2, 3, big]
        elif where == "cell":
            p["cells"][RELU_CELL]["seeds"] = [0, 1, big]
        elif where == "draws":
            p["draws"]["subset_seeds"] = [1, big]
        else:
            p["data"]["subset_seed"] = big

    message = refusal(tmp_path, change)
    assert str(big) in message and f"the cap is {SEED_CAP.value}" in message and "32-bit" in message


def test_the_largest_seed_is_accepted(tmp_path):
    params = copy.deepcopy(BASE)
    params["seeds"] = [0, 1, SEED_CAP.value]
    params["draws"]["seeds"] = [0, 1]
    load_params(write(tmp_path, params))


def test_a_billion_epochs_are_refused(tmp_path):
    message = refusal(tmp_path, lambda p: p["protocol"].update(max_epochs=1_000_000_000))
    assert "protocol.max_epochs" in message and f"the cap is {EPOCHS_CAP.value}" in message


@pytest.mark.parametrize("field, value", [("threads", 10**6), ("batch_size", 10**9),
                                          ("eval_batch_size", 10**9), ("patience", 10**9)])
def test_other_protocol_bounds(tmp_path, field, value):
    message = refusal(tmp_path, lambda p: p["protocol"].update({field: value}))
    assert f"protocol.{field}" in message and "the cap is" in message


def test_too_many_draws_are_refused(tmp_path):
    message = refusal(tmp_path, lambda p: p["draws"].update(subset_seeds=list(range(1, 100))))
    assert "draws.subset_seeds" in message and "the cap is 16" in message


def test_runs_per_stage_are_capped(tmp_path):
    # each list within its own cap, but seeds + draws x draw seeds is too many for one stage
    def change(p):
        p["cells"][RELU_CELL]["seeds"] = list(range(100))
        p["draws"]["subset_seeds"] = list(range(1, 9))
        p["seeds"] = p["draws"]["seeds"] = list(range(10))
    message = refusal(tmp_path, change)
    assert f"cells.{RELU_CELL}: 180 runs in one train stage" in message
    assert f"the cap of {RUNS_CAP.value}" in message


def test_an_over_cap_params_stops_the_split_stage_before_it_writes(tmp_path):
    params = copy.deepcopy(BASE)
    params["cells"][RELU_CELL]["seeds"] = list(range(10_000))
    project = make_project(tmp_path / "project", params)
    done = subprocess.run([sys.executable, "stages/split.py"], cwd=project,
                          env=base_env(PYTHONPATH=str(project / "src")),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: params.yaml: invalid configuration"), done.stderr
    assert f"the cap is {SEEDS_CAP.value}" in done.stderr and "Traceback" not in done.stderr
    assert not (project / "data").exists() or not any((project / "data").iterdir())
    assert not (project / "mlruns").exists()
