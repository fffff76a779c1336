"""The MLflow store, read-only: the runs a record names, found by their id or, in a store
that `misfit restore-runs` rebuilt from git, by the original id each restored run carries.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from misfit.audit.cell import AuditedCell, AuditedRun

ORIGINAL_RUN_ID = "misfit.original_run_id"  # tag on a restored run: the id the study logged
RESTORED = "misfit.restored"


@dataclass
class Store:
    uri: str
    client: object | None
    problem: str | None  # why there is no client
    _runs: dict = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.client is not None

    def run(self, run_id: str):
        """(run or None, state): state is "active", "deleted", "restored" (a copy made by
        misfit restore-runs, found by its original id), "missing" or "unavailable"."""
        if self.client is None:
            return None, "unavailable"
        if run_id not in self._runs:
            self._runs[run_id] = self._get(run_id) or self._restored_copy(run_id)
        found = self._runs[run_id]
        if found is None:
            return None, "missing"
        if found.info.lifecycle_stage == "deleted":
            return found, "deleted"
        return found, "restored" if found.info.run_id != run_id else "active"

    def _get(self, run_id: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            return None

    def _restored_copy(self, original: str):
        found = self.search(f"tags.`{ORIGINAL_RUN_ID}` = '{original}'")
        return found[0] if found else None

    def experiment_ids(self) -> list[str]:
        from mlflow.entities import ViewType

        return [e.experiment_id for e in self.client.search_experiments(view_type=ViewType.ALL)]

    def search(self, filter_string: str, experiment_ids: list[str] | None = None) -> list:
        if self.client is None:
            return []
        from mlflow.entities import ViewType

        ids = experiment_ids or self.experiment_ids()
        found = self.client.search_runs(ids, filter_string=filter_string, run_view_type=ViewType.ALL,
                                        max_results=5000, order_by=["attributes.start_time DESC"])
        return list(found)

    def experiment_name(self, experiment_id: str) -> str | None:
        found = self.client.get_experiment(experiment_id) if self.client is not None else None
        return found.name if found else None


def original_id(run) -> str:
    """The id the study logged this run under: its own, unless it is a restored copy."""
    return run.data.tags.get(ORIGINAL_RUN_ID, run.info.run_id)


def open_store(root: Path) -> Store:
    from misfit.track.store import tracking_uri

    uri = tracking_uri(root)
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            # MLflow would create an empty database here: an audit must not
            return Store(uri, None, f"no MLflow store at {path}")
    try:
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    except Exception as error:  # an unreachable server, an old schema: audit the files anyway
        return Store(uri, None, f"cannot read the MLflow store {uri}: {error}")
    return Store(uri, client, None)


# -- a record rebuilt from the store, for a cell whose records/<cell>.json is absent ------

def _literal(text: str):
    """An MLflow param (str(value) when logged) back as the value."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _int_or_none(value):
    return None if value is None else int(value)


def record_from_run(store: Store, parent) -> AuditedCell:
    """The cell as a cell's parent run and its seed runs in MLflow hold it."""
    from misfit.train.targets import TASKS

    params, tags = parent.data.params, parent.data.tags

    def section(name: str) -> dict:
        return {k[len(name) + 1:]: _literal(v) for k, v in params.items() if k.startswith(f"{name}.")}

    cell = section("cell")
    metric = TASKS[cell["task"]].metric
    children = store.search(f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", [parent.info.experiment_id])
    runs, splits = [], {}
    main = _literal(params.get("data.subset_seed", "None"))

    def member(run) -> tuple:  # the train stage's order: the main draw's seeds, then each further draw
        draw = _literal(run.data.params.get("data.subset_seed", "None"))
        return draw != main, draw if isinstance(draw, int) else -1, int(run.data.tags.get("seed", "-1"))

    for child in sorted(children, key=member):
        values, ctags = child.data.metrics, child.data.tags
        error = ctags.get("error", "-")
        runs.append(AuditedRun(
            seed=int(ctags["seed"]), run_id=original_id(child),
            subset_seed=_int_or_none(_literal(child.data.params.get("data.subset_seed", "None"))),
            config_digest=ctags.get("config_digest"), status=ctags.get("status", child.info.status),
            error=None if error == "-" else error, best_epoch=_int_or_none(values.get("best_epoch")),
            valid_best=values.get(f"best_valid_{metric}"), test=values.get(f"test_{metric}"),
            epochs_run=_int_or_none(values.get("epochs_run")),
        ))
        for dataset_input in child.inputs.dataset_inputs if child.inputs else []:
            input_tags = {t.key: t.value for t in dataset_input.tags}
            name = input_tags.get("mlflow.data.context")
            if name and "sha256" in input_tags:
                splits.setdefault(name, {"n": _int_or_none(input_tags.get("n")), "sha256": input_tags["sha256"]})
    return AuditedCell(
        cell=cell, protocol=section("protocol"), metric=metric,
        data={"dataset_sha256": tags.get("data_sha256"), "splits": splits, "config": section("data")},
        seeds=_literal(params.get("seeds", "[]")), experiment=store.experiment_name(parent.info.experiment_id),
        parent_run_id=original_id(parent), cell_digest=tags.get("cell_digest"),
        tags={k: v for k, v in tags.items() if not k.startswith("mlflow.")}, runs=runs,
    )
