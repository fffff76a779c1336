"""Concurrent stages log the same datasets into one tracking store (issue 24, item 4).

MLflow's store looks a dataset up by (experiment, name, digest) and inserts it when it is
missing, with no lock between the two: two stages logging the same split at once both
insert, and the second fails on the table's UNIQUE constraint. Here 4 processes log the
same three datasets at the same instant, each to its own run, against a real `mlflow
server` on SQLite, in a fresh experiment each round, 20 rounds: every call must succeed,
and each dataset must be in the store once.
"""
from __future__ import annotations

import multiprocessing
import uuid

import pytest

ROUNDS, PROCESSES = 20, 4


def _log_at_once(uri: str, experiment_ids: list[str], barrier, errors) -> None:
    """In each experiment: wait for the others, then log the three datasets to a run of its own."""
    import mlflow.data
    import numpy as np
    from mlflow import MlflowClient

    from misfit.track.runs import CellRuns

    client = MlflowClient(uri)
    datasets = [(mlflow.data.from_numpy(np.full((4, 2), i, np.uint8), name=f"mnist-{name}", digest=f"d{i}" * 8),
                 {"mlflow.data.context": name}) for i, name in enumerate(("train", "valid", "test"))]
    for experiment_id in experiment_ids:
        runs = CellRuns(client, experiment_id, "race", {0: ("race seed=0", {}, {})}, {}, {})
        barrier.wait(60)
        try:
            runs.log_inputs(0, datasets)
        except Exception as error:  # noqa: BLE001 - the test reports whatever failed
            errors.put(f"{type(error).__name__}: {error}"[:300])
        runs.close_all("FINISHED")


@pytest.mark.slow
def test_the_same_datasets_logged_at_once_from_four_processes_register_once(tracking_server):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_server)
    experiment_ids = [client.create_experiment(f"race-{uuid.uuid4().hex}") for _ in range(ROUNDS)]
    context = multiprocessing.get_context("spawn")
    errors, barrier = context.Queue(), context.Barrier(PROCESSES)
    workers = [context.Process(target=_log_at_once, args=(tracking_server, experiment_ids, barrier, errors))
               for _ in range(PROCESSES)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(180)
        assert worker.exitcode == 0, f"a logging process ended with {worker.exitcode}"
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, f"{len(failures)} of {ROUNDS * PROCESSES} calls failed, e.g. {failures[0]}"
    for experiment_id in experiment_ids:
        runs = client.search_runs([experiment_id])
        logged = [(d.dataset.name, d.dataset.digest) for r in runs for d in r.inputs.dataset_inputs]
        assert len(runs) == PROCESSES * 2 and len(logged) == PROCESSES * 3
        assert len(set(logged)) == 3  # one dataset row per (name, digest), shared by every run
