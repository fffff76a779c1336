"""`misfit audit`: where a number came from, how to make it again, and whether the
records and the current tree still agree about it.

A query names a cell (`binary-softmax-ce`, optionally `--seed N`), an MLflow run
(parent or seed run; a unique prefix of 8+ hex characters, as the report prints them,
is enough) or a digest (config digest of one seed run, cell digest of all of them; full
or a unique prefix of 8+ hex characters). The answer comes from models/<cell>/record.json,
metrics/<cell>.json, reports/results.json, dvc.lock, params.yaml and the MLflow store, and
lists every point where they disagree with each other or with the working tree.

Read-only: the store is opened only when it exists, and nothing is written to it.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from misfit.files import json_safe, read_json
from misfit.layout import METRICS_DIR, MODELS_DIR, PARAMS_FILE, REPORTS_DIR, SPLIT_DIR

MIN_PREFIX = 8
_HEX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX},64}}")
ABSENT = "<absent>"  # a field one side has and the other lacks
ENV_MIRROR, ENV_MANIFEST = "MNIST_MIRROR", "MNIST_MANIFEST"


class AuditError(RuntimeError):
    """The query names nothing, or more than one thing; the message says which."""


# -- the MLflow store, read-only ------------------------------------------------------

@dataclass
class Store:
    uri: str
    client: object | None
    problem: str | None  # why there is no client
    _runs: dict = field(default_factory=dict)

    def run(self, run_id: str):
        """(run or None, "active" | "deleted" | "missing" | "unavailable")."""
        if self.client is None:
            return None, "unavailable"
        if run_id not in self._runs:
            from mlflow.exceptions import MlflowException

            try:
                self._runs[run_id] = self.client.get_run(run_id)
            except MlflowException:
                self._runs[run_id] = None
        found = self._runs[run_id]
        if found is None:
            return None, "missing"
        return found, "deleted" if found.info.lifecycle_stage == "deleted" else "active"

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
        for run in found:
            self._runs.setdefault(run.info.run_id, run)
        return list(found)


def open_store(root: Path) -> Store:
    from misfit.tracking import tracking_uri

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


# -- what the project holds -----------------------------------------------------------

def load_records(root: Path) -> dict[str, dict]:
    records = {}
    for path in sorted((root / MODELS_DIR).glob("*/record.json")):
        try:
            records[path.parent.name] = read_json(path)
        except (OSError, ValueError):
            continue
    return records


def _read_json_or_none(path: Path):
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _literal(text: str):
    """An MLflow param (str(value) when logged) back as the value."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _metric_name(task: str) -> str:
    from misfit.tasks import TASKS

    return TASKS[task].metric


def record_from_run(store: Store, parent) -> dict:
    """A record.json-shaped view of a cell's parent run and its seed runs in MLflow."""
    params, tags = parent.data.params, parent.data.tags

    def section(name: str) -> dict:
        return {k[len(name) + 1:]: _literal(v) for k, v in params.items() if k.startswith(f"{name}.")}

    cell = section("cell")
    metric = _metric_name(cell["task"])
    children = store.search(f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                            [parent.info.experiment_id])
    runs, splits = [], {}
    for child in sorted(children, key=lambda r: int(r.data.tags.get("seed", "-1"))):
        values, ctags = child.data.metrics, child.data.tags
        error = ctags.get("error", "-")
        runs.append({
            "seed": int(ctags["seed"]), "run_id": child.info.run_id,
            "config_digest": ctags.get("config_digest"), "status": ctags.get("status", child.info.status),
            "error": None if error == "-" else error, "best_epoch": _int_or_none(values.get("best_epoch")),
            "valid_best": values.get(f"best_valid_{metric}"), "test": values.get(f"test_{metric}"),
            "epochs_run": _int_or_none(values.get("epochs_run")),
        })
        for dataset_input in child.inputs.dataset_inputs if child.inputs else []:
            input_tags = {t.key: t.value for t in dataset_input.tags}
            name = input_tags.get("mlflow.data.context")
            if name and "sha256" in input_tags:
                splits.setdefault(name, {"n": _int_or_none(input_tags.get("n")), "sha256": input_tags["sha256"]})
    return {
        "cell_id": tags.get("cell"), "cell": cell, "task": cell["task"], "metric": metric,
        "protocol": section("protocol"),
        "data": {"dataset_sha256": tags.get("data_sha256"), "splits": splits, "config": section("data")},
        "seeds": _literal(params.get("seeds", "[]")), "experiment": None,
        "parent_run_id": parent.info.run_id, "cell_digest": tags.get("cell_digest"),
        "tags": {k: v for k, v in tags.items() if not k.startswith("mlflow.")}, "runs": runs,
    }


def _int_or_none(value):
    return None if value is None else int(value)


# -- resolving the query --------------------------------------------------------------

@dataclass
class Subject:
    cell: str
    seed: int | None
    matched_by: str
    matched: str
    record: dict
    source: str  # "record" or "mlflow"


def _candidates(query: str, records: dict[str, dict], store: Store) -> dict[tuple[str, str], tuple]:
    """{(kind, full value): (cell, seed or None, parent run)} that the hex query could mean.

    The parent run is None for what models/*/record.json names: the record speaks for it.
    """
    found: dict[tuple[str, str], tuple] = {}
    for cell, record in records.items():
        if record["parent_run_id"].startswith(query):
            found[("run id", record["parent_run_id"])] = (cell, None, None)
        if record["cell_digest"].startswith(query):
            found[("cell digest", record["cell_digest"])] = (cell, None, None)
        for run in record["runs"]:
            if run["run_id"].startswith(query):
                found[("run id", run["run_id"])] = (cell, run["seed"], None)
            if (run.get("config_digest") or "").startswith(query):
                found[("config digest", run["config_digest"])] = (cell, run["seed"], None)
    if store.client is None:
        return found
    if len(query) == 32 and ("run id", query) not in found:
        run, _ = store.run(query)
        if run is not None and "cell" in run.data.tags:
            found[("run id", query)] = _placed(store, run)
    for tag, kind in (("cell_digest", "cell digest"), ("config_digest", "config digest")):
        for run in store.search(f"tags.{tag} LIKE '{query}%'"):
            key = (kind, run.data.tags[tag])
            if key in found:
                continue
            # a seed run carries its cell's digest too: the parent stands for the cell
            if kind == "cell digest" and run.data.tags.get("misfit.level") == "seed":
                continue
            found[key] = _placed(store, run)
    return found


def _placed(store: Store, run) -> tuple:
    tags = run.data.tags
    if tags.get("misfit.level") == "seed":
        parent, _ = store.run(tags.get("mlflow.parentRunId", ""))
        if parent is None:
            raise AuditError(f"run {run.info.run_id} ({tags['cell']} seed {tags['seed']}) has no parent "
                             f"run in the MLflow store {store.uri}")
        return tags["cell"], int(tags["seed"]), parent
    return tags["cell"], None, run


def resolve(query: str, seed: int | None, records: dict[str, dict], cell_ids: set[str],
            store: Store) -> Subject:
    if query in records or query in cell_ids:
        return _subject_for_cell(query, seed, "cell id", query, records, store)
    hex_query = query.lower()
    if not _HEX.fullmatch(hex_query):
        raise AuditError(
            f"{query!r} is not a cell of params.yaml or models/, nor a run id or digest "
            f"(at least {MIN_PREFIX} hex characters)")
    found = _candidates(hex_query, records, store)
    if not found:
        where = "models/*/record.json" + ("" if store.client is None else f" or the MLflow store {store.uri}")
        raise AuditError(f"no run id, config digest or cell digest in {where} starts with {hex_query!r}")
    if len(found) > 1:
        listing = "\n".join(f"  {kind} {value} ({cell}{'' if s is None else f' seed {s}'})"
                            for (kind, value), (cell, s, _) in sorted(found.items()))
        raise AuditError(f"{hex_query!r} is ambiguous; it starts:\n{listing}")
    (kind, value), (cell, found_seed, parent) = next(iter(found.items()))
    if seed is not None and found_seed is not None and seed != found_seed:
        raise AuditError(f"{kind} {value} is seed {found_seed} of {cell}, not seed {seed}")
    seed = found_seed if found_seed is not None else seed
    record = records.get(cell)
    if parent is None or (record and _names_run(record, parent.info.run_id)):
        return _subject_for_cell(cell, seed, kind, value, records, store)
    return _subject(cell, seed, kind, value, record_from_run(store, parent), "mlflow")


def _names_run(record: dict, run_id: str) -> bool:
    return run_id == record["parent_run_id"] or any(r["run_id"] == run_id for r in record["runs"])


def _subject_for_cell(cell: str, seed, kind: str, value: str, records: dict, store: Store) -> Subject:
    if cell in records:
        return _subject(cell, seed, kind, value, records[cell], "record")
    parents = store.search(f"tags.cell = '{cell}' and tags.`misfit.level` = 'cell'")
    if not parents:
        where = "" if store.client is None else f" and no run in the MLflow store {store.uri}"
        raise AuditError(f"{cell}: no {MODELS_DIR / cell}/record.json{where} "
                         f"(dvc repro train@{cell}, or dvc pull)")
    return _subject(cell, seed, kind, value, record_from_run(store, parents[0]), "mlflow")


def _subject(cell, seed, kind, value, record, source) -> Subject:
    seeds = [run["seed"] for run in record["runs"]]
    if seed is not None and seed not in seeds:
        raise AuditError(f"{cell} has no seed {seed}; its runs are seeds {seeds}")
    return Subject(cell, seed, kind, value, record, source)


# -- the audit ------------------------------------------------------------------------

def _git(root: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _flat_diff(prefix: str, recorded: dict, current: dict) -> list[dict]:
    differing = []
    for key in [*recorded, *(k for k in current if k not in recorded)]:
        was, now = recorded.get(key, ABSENT), current.get(key, ABSENT)
        if was != now:
            differing.append({"field": f"{prefix}.{key}", "recorded": was, "current": now})
    return differing


def _summary(values: list) -> dict:
    from misfit.evaluate import summarize

    return summarize([v for v in values if isinstance(v, (int, float))])


class Audit:
    def __init__(self, root: Path, query: str, subject: Subject, store: Store):
        self.root, self.query, self.subject, self.store = root, query, subject, store
        self.record = subject.record
        self.cell = subject.cell
        self.disagreements: list[dict] = []
        self.notes: list[str] = []
        self.referenced: dict[str, set[str]] = {}  # run id -> the files that name it
        self.ui_base_url: str | None = None
        self.experiment: str | None = None
        self.dataset_source: str | None = None

    def disagree(self, kind: str, message: str, **details) -> None:
        self.disagreements.append({"kind": kind, "message": message, **details})

    def seed_runs(self) -> list[dict]:
        return [r for r in self.record["runs"] if self.subject.seed in (None, r["seed"])]

    def build(self) -> dict:
        record, subject = self.record, self.subject
        parent_run, _ = self.store.run(record["parent_run_id"])
        # the store's own copy of the tags when it has the run; record.json otherwise
        tags = dict(parent_run.data.tags) if parent_run is not None else dict(record.get("tags", {}))
        experiment = record.get("experiment") or self._experiment_name(parent_run)
        source = (str(MODELS_DIR / self.cell / "record.json") if subject.source == "record"
                  else f"MLflow run {record['parent_run_id']}")
        if subject.source == "mlflow":
            on_disk = self.root / MODELS_DIR / self.cell / "record.json"
            self.disagree("record", f"{on_disk.relative_to(self.root)} does not name this run"
                          + (" (the file is absent)" if not on_disk.exists() else
                             ": the cell's outputs in models/ come from another train run")
                          + "; the values below come from the MLflow store")
        self.check_commit(tags)
        self.check_params(experiment)
        self.check_data()
        evaluated = self.check_evaluation()
        self.check_runs()
        self.check_lock_and_code(tags)
        metric = record["metric"]
        return json_safe({
            "query": self.query,
            "matched": {"by": subject.matched_by, "value": subject.matched},
            "cell": self.cell, "seed": subject.seed, "source": source,
            "configuration": {"cell": record["cell"], "protocol": record["protocol"],
                              "data": record["data"].get("config", {}), "seeds": record["seeds"],
                              "seed": subject.seed, "experiment": experiment},
            "digests": {"cell": record["cell_digest"],
                        "config": {str(r["seed"]): r.get("config_digest") for r in self.seed_runs()}},
            "data_identity": {"dataset_sha256": record["data"].get("dataset_sha256"),
                              "splits": record["data"].get("splits", {})},
            "code": {"git_commit": tags.get("git_commit"), "git_dirty": tags.get("git_dirty"),
                     "dep_md5": _prefixed(tags, "dep.md5."), "versions": _prefixed(tags, "version."),
                     "device": tags.get("device"), "threads": tags.get("threads")},
            "metrics": {
                "metric": metric, "better": "higher" if metric == "accuracy" else "lower",
                "seeds": [{key: run.get(key) for key in ("seed", "status", "error", "valid_best", "test",
                                                         "best_epoch", "epochs_run", "run_id", "config_digest")}
                          for run in self.seed_runs()],
                "summary": {key: _summary([r.get(key) for r in record["runs"] if r.get("status") == "ok"])
                            for key in ("valid_best", "test", "best_epoch")},
                "evaluate": evaluated,
            },
            "mlflow": self.mlflow_section(experiment, parent_run),
            "reproduce": self.reproduce(tags),
            "disagreements": self.disagreements,
            "notes": self.notes,
        })

    def _experiment_name(self, parent_run) -> str | None:
        if parent_run is None:
            return None
        found = self.store.client.get_experiment(parent_run.info.experiment_id)
        return found.name if found else None

    # each check adds what it finds to self.disagreements

    def check_commit(self, tags: dict) -> None:
        commit = tags.get("git_commit", "unknown")
        if commit == "unknown":
            self.disagree("commit", "the run recorded no git commit: the code version rests on the dep md5s alone")
        else:
            head = _git(self.root, "rev-parse", "HEAD")
            head = head.stdout.strip() if head is not None and head.returncode == 0 else None
            known = _git(self.root, "cat-file", "-e", f"{commit}^{{commit}}")
            if known is None or known.returncode != 0:
                self.disagree("commit", f"the run's commit {commit} is not in this repository "
                              "(fetch it from where the run was made)", recorded=commit, head=head)
            elif head != commit:
                changed = self.train_files_changed_since(commit)
                since = ("; of the files the train stage depends on, none changed between them"
                         if changed == [] else
                         f"; the train stage's files changed between them: {', '.join(changed)}"
                         if changed else "")
                self.disagree("commit", f"the run was made at commit {commit[:12]}, HEAD is "
                              f"{(head or 'unknown')[:12]}{since}", recorded=commit, head=head,
                              train_files_changed=changed)
        if tags.get("git_dirty") == "true":
            # a dvc.lock or metrics file that the running `dvc repro` rewrote counts as well
            self.disagree("dirty", "the run was made from a tree with uncommitted changes to tracked files "
                          "(dvc.lock rewritten by the same `dvc repro` counts too): the commit alone may not "
                          "hold its code; the dep md5s say what ran")

    def train_files_changed_since(self, commit: str) -> list[str] | None:
        """The train stage's file deps that differ between `commit` and HEAD (None: unknown)."""
        from misfit.provenance import stage_file_deps

        try:
            paths = stage_file_deps(self.root, "train")
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return None
        diff = _git(self.root, "diff", "--name-only", commit, "HEAD", "--", *paths)
        if diff is None or diff.returncode != 0:
            return None
        return diff.stdout.split()

    def check_params(self, experiment: str | None) -> None:
        from misfit.config import ConfigError, load_params

        self.experiment = experiment
        try:
            params = load_params(self.root / PARAMS_FILE)
        except ConfigError as error:
            self.disagree("params", f"params.yaml cannot be read as this project's parameters: {error}")
            return
        differing = self.params_diff(params)
        if differing:
            self.disagree("params", "params.yaml differs from what the run recorded: " + _listing(differing),
                          fields=differing)
        self.ui_base_url = params.tracking.ui_base_url

    def params_diff(self, params) -> list[dict]:
        """The fields of `params` (validated) that differ from what the run recorded."""
        record = self.record
        differing = []
        if self.cell not in params.cells:
            differing.append({"field": f"cells.{self.cell}", "recorded": record["cell"], "current": ABSENT})
        else:
            differing += _flat_diff(f"cells.{self.cell}", record["cell"], params.cells[self.cell].model_dump())
        differing += _flat_diff("protocol", record["protocol"], params.protocol.model_dump())
        differing += _flat_diff("data", record["data"].get("config", {}), params.data.model_dump())
        if record["seeds"] != params.seeds:
            differing.append({"field": "seeds", "recorded": record["seeds"], "current": params.seeds})
        if self.experiment and self.experiment != params.tracking.experiment:
            differing.append({"field": "tracking.experiment", "recorded": self.experiment,
                              "current": params.tracking.experiment})
        return differing

    def params_at_commit(self, commit: str) -> list[dict]:
        """What params.yaml at the run's commit would change: a dirty tree's run had other values."""
        from misfit.config import ConfigError, parse_params

        shown = _git(self.root, "show", f"{commit}:{PARAMS_FILE}")
        if shown is None or shown.returncode != 0:
            return []
        source = Path(f"{commit[:12]}:{PARAMS_FILE}")
        try:
            params = parse_params(yaml.safe_load(shown.stdout), source)
        except (ConfigError, yaml.YAMLError) as error:
            self.notes.append(f"{source} cannot be read as this project's parameters ({error}); "
                              "the commands below assume it holds the run's values")
            return []
        differing = self.params_diff(params)
        if differing:
            self.disagree("params_at_commit", f"{source} holds other values than the run used (its tree "
                          "was dirty): " + _listing(differing, "there") + "; the commands below set the run's values",
                          fields=differing)
        return differing

    def check_data(self) -> None:
        current = _read_json_or_none(self.root / SPLIT_DIR / "manifest.json")
        recorded = self.record["data"]
        if current is None:
            self.notes.append(f"{SPLIT_DIR}/manifest.json is absent: the data identity cannot be "
                              "checked against the tree (dvc repro label-derive, or dvc pull)")
            return
        self.dataset_source = current.get("dataset_source")
        differing = []
        if recorded.get("dataset_sha256") != current.get("dataset_sha256"):
            differing.append(f"dataset sha256 recorded {recorded.get('dataset_sha256')}, "
                             f"now {current.get('dataset_sha256')}")
        for name, split in recorded.get("splits", {}).items():
            now = current.get("splits", {}).get(name, {})
            if split.get("sha256") != now.get("sha256"):
                differing.append(f"{name} split sha256 recorded {split.get('sha256')}, now {now.get('sha256')}")
        if differing:
            self.disagree("data", f"{SPLIT_DIR} holds other data than the run used: " + "; ".join(differing))

    def check_evaluation(self) -> dict | None:
        """metrics/<cell>.json and reports/results.json: do they describe the same runs?"""
        record = self.record
        metrics_path = METRICS_DIR / f"{self.cell}.json"
        metrics = _read_json_or_none(self.root / metrics_path)
        self._refer(record["parent_run_id"], self._record_name())
        for run in record["runs"]:
            self._refer(run["run_id"], self._record_name())
        evaluated = None
        if metrics is None:
            self.notes.append(f"{metrics_path} is absent: evaluate@{self.cell} has not run here")
        else:
            self._refer(metrics.get("parent_run_id", ""), str(metrics_path))
            for entry in metrics.get("seeds", {}).values():
                self._refer(entry.get("run_id", ""), str(metrics_path))
            if metrics.get("parent_run_id") != record["parent_run_id"]:
                self.disagree("metrics", f"{metrics_path} comes from parent run {metrics.get('parent_run_id')}, "
                              f"not {record['parent_run_id']}: it is stale (dvc repro evaluate@{self.cell})")
            elif metrics.get("all_match_record") is False:
                self.disagree("metrics", f"{metrics_path}: re-scoring the checkpoints did not reproduce the "
                              "training record for every seed (see seeds.*.matches_record)")
            evaluated = {"file": str(metrics_path), "status": metrics.get("status"),
                         "valid_best": metrics.get("valid_best"), "test": metrics.get("test"),
                         "best_epoch": metrics.get("best_epoch"),
                         "all_match_record": metrics.get("all_match_record"),
                         "seeds": {s: {k: e.get(k) for k in ("valid_best", "test", "matches_record")}
                                   for s, e in metrics.get("seeds", {}).items()
                                   if self.subject.seed in (None, int(s))}}
        results_path = REPORTS_DIR / "results.json"
        results = _read_json_or_none(self.root / results_path)
        entry = (results or {}).get("cells", {}).get(self.cell)
        if entry is not None:
            self._refer(entry.get("parent_run", ""), str(results_path))
            for run_id in entry.get("runs", []):
                self._refer(run_id, str(results_path))
            if entry.get("parent_run") != record["parent_run_id"]:
                self.disagree("report", f"{results_path} shows parent run {entry.get('parent_run')} for "
                              f"{self.cell}, not {record['parent_run_id']}: the report is stale (dvc repro report)")
        elif results is not None:
            self.notes.append(f"{results_path} has no entry for {self.cell}")
        return evaluated

    def _record_name(self) -> str:
        return (str(MODELS_DIR / self.cell / "record.json") if self.subject.source == "record"
                else "the MLflow store")

    def _refer(self, run_id: str, where: str) -> None:
        if run_id:
            self.referenced.setdefault(run_id, set()).add(where)

    def check_runs(self) -> None:
        if self.store.client is None:
            self.disagree("mlflow", f"{self.store.problem}: none of the runs can be checked")
            return
        roles = {self.record["parent_run_id"]: "parent run"}
        roles.update({r["run_id"]: f"seed {r['seed']} run" for r in self.record["runs"]})
        expected = {r["run_id"]: r for r in self.record["runs"]}
        for run_id, where in self.referenced.items():
            run, state = self.store.run(run_id)
            named = f"{roles.get(run_id, 'run')} {run_id} (named in {', '.join(sorted(where))})"
            if state == "missing":
                self.disagree("missing_run", f"{named} is not in the MLflow store {self.store.uri}",
                              run_id=run_id, state=state)
            elif state == "deleted":
                self.disagree("missing_run", f"{named} is deleted in the MLflow store (lifecycle 'deleted'; "
                              f"`mlflow runs restore --run-id {run_id}` brings it back until `mlflow gc`)",
                              run_id=run_id, state=state)
            elif run_id in expected and self.subject.source == "record":
                self._compare_run(run, expected[run_id])

    def _compare_run(self, run, recorded: dict) -> None:
        tags, metric = run.data.tags, self.record["metric"]
        differing = []
        if tags.get("cell") != self.cell:
            differing.append(f"cell tag {tags.get('cell')!r}")
        if recorded.get("config_digest") and tags.get("config_digest") != recorded["config_digest"]:
            differing.append(f"config digest {tags.get('config_digest')}")
        stored = run.data.metrics.get(f"test_{metric}")
        if isinstance(recorded.get("test"), float) and stored is not None and stored != recorded["test"]:
            differing.append(f"test_{metric} {stored!r} (record {recorded['test']!r})")
        if differing:
            self.disagree("run_mismatch", f"MLflow run {run.info.run_id} (seed {recorded['seed']}) has "
                          + ", ".join(differing) + f" unlike {self._record_name()}", run_id=run.info.run_id)

    def check_lock_and_code(self, tags: dict) -> None:
        from misfit.provenance import md5_of_files, stage_file_deps

        recorded = _prefixed(tags, "dep.md5.")
        stage = f"train@{self.cell}"
        lock = _read_yaml_or_none(self.root / "dvc.lock")
        entry = ((lock or {}).get("stages") or {}).get(stage)
        if entry is None:
            self.notes.append(f"dvc.lock has no {stage} entry: DVC has not recorded this stage here")
        else:
            pinned = {dep["path"]: dep.get("md5") for dep in entry.get("deps", [])
                      if not str(dep.get("md5", "")).endswith(".dir")}
            differing = [{"path": path, "dvc_lock": pinned.get(path, ABSENT), "run": recorded.get(path, ABSENT)}
                         for path in sorted(set(pinned) | set(recorded)) if pinned.get(path) != recorded.get(path)]
            if differing:
                listing = "; ".join(f"{d['path']} (dvc.lock {d['dvc_lock']}, run {d['run']})" for d in differing)
                self.disagree("dvc_lock", f"dvc.lock's {stage} pins other code than the run recorded: {listing}",
                              files=differing)
        try:
            current = md5_of_files(self.root, stage_file_deps(self.root, "train"))
        except (OSError, KeyError, TypeError, yaml.YAMLError) as error:
            self.notes.append(f"cannot hash the train stage's code in the working tree: {error}")
            return
        changed = [{"path": path, "now": current.get(path, ABSENT), "run": recorded.get(path, ABSENT)}
                   for path in sorted(set(current) | set(recorded)) if current.get(path) != recorded.get(path)]
        if changed:
            listing = ", ".join(d["path"] for d in changed)
            self.disagree("code", f"the working tree's train code differs from the run's: {listing} "
                          f"(dvc repro would retrain {self.cell})", files=changed)

    def mlflow_section(self, experiment: str | None, parent_run) -> dict:
        experiment_id = parent_run.info.experiment_id if parent_run is not None else None
        if experiment_id is None and self.store.client is not None and experiment:
            found = self.store.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else None
        section = {"tracking_uri": self.store.uri, "experiment": experiment, "experiment_id": experiment_id,
                   "parent_run_id": self.record["parent_run_id"],
                   "seed_run_ids": {str(r["seed"]): r["run_id"] for r in self.seed_runs()}}
        base = self.ui_base_url
        if base and experiment_id is not None:
            ids = [self.record["parent_run_id"], *section["seed_run_ids"].values()]
            section["links"] = {rid: f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{rid}" for rid in ids}
        return section

    def reproduce(self, tags: dict) -> dict:
        env = {"PYTHONPATH": "src"}  # the checkout's own code, whichever copy of misfit is installed
        mirror = os.environ.get(ENV_MIRROR)
        env[ENV_MIRROR] = mirror or "<directory holding the four MNIST IDX files>"
        if not mirror:
            self.notes.append(f"{ENV_MIRROR} is not set here: without it the download stage fetches "
                              "MNIST with torchvision (internet needed)")
        source = self.dataset_source
        if source and source != "official MNIST":
            env[ENV_MANIFEST] = source
        elif os.environ.get(ENV_MANIFEST):
            env[ENV_MANIFEST] = os.environ[ENV_MANIFEST]
        if not self.record["protocol"].get("threads") and tags.get("threads", "").isdigit():
            # protocol.threads 0 takes torch's default, the core count: fix it to what the run had
            env["OMP_NUM_THREADS"] = tags["threads"]
        device = tags.get("device", "")
        if device.startswith("cuda"):
            self.notes.append(f"the run trained on {device}: elsewhere expect agreement within float "
                              "tolerance, not bit-identity")
        commit = tags.get("git_commit", "unknown")
        stages = f"train@{self.cell} evaluate@{self.cell}"
        commands = [
            f"git checkout {commit}" if commit != "unknown"
            else "# no commit recorded: check out the code whose md5s are listed above",
            "export " + " ".join(f"{k}={_quote(v)}" for k, v in env.items()),
        ]
        restore = self.params_at_commit(commit) if commit != "unknown" else []
        if restore:
            # dvc exp run -S writes the run's values into params.yaml before anything runs, so
            # split and labels follow them too; --force reruns what DVC would skip
            settings = " ".join("-S " + shlex.quote(_override(d)) for d in restore)
            commands.append(f"dvc exp run --force {settings} {stages}")
        else:
            commands += [
                "dvc repro label-derive",
                # --force: rerun even when DVC's run-cache or up-to-date outputs would skip training
                f"dvc repro --force --single-item {stages}",
            ]
        expect = {str(r["seed"]): r.get("test") for r in self.seed_runs()}
        return {"env": env, "commands": commands,
                "expect": {"file": str(METRICS_DIR / f"{self.cell}.json"), "field": "seeds.<seed>.test",
                           "test": expect}}


def _quote(value: str) -> str:
    return value if value.startswith("<") else shlex.quote(value)


def _override(differing: dict) -> str:
    """One `dvc exp run -S` override (Hydra's grammar) that puts the run's value back."""
    if differing["recorded"] == ABSENT:
        return f"~{differing['field']}"
    add = "+" if differing["current"] == ABSENT else ""  # Hydra adds a key only when told to
    return f"{add}{differing['field']}={_hydra(differing['recorded'])}"


def _hydra(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(map(_hydra, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{_hydra(item)}" for key, item in value.items()) + "}"
    return json.dumps(str(value))  # quoted: "none" and "null" stay strings


def _listing(differing: list[dict], where: str = "params.yaml") -> str:
    return "; ".join(f"{d['field']}: recorded {d['recorded']!r}, {where} {d['current']!r}" for d in differing)


def _prefixed(tags: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sorted(tags.items()) if k.startswith(prefix)}


def _read_yaml_or_none(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def audit(root: Path, query: str, seed: int | None = None) -> dict:
    root = Path(root)
    records = load_records(root)
    try:
        cell_ids = set((yaml.safe_load((root / PARAMS_FILE).read_text()) or {}).get("cells") or {})
    except (OSError, yaml.YAMLError, AttributeError):
        cell_ids = set()
    store = open_store(root)
    subject = resolve(query.strip(), seed, records, cell_ids, store)
    return Audit(root, query, subject, store).build()


# -- text -----------------------------------------------------------------------------

def _fields(values: dict) -> str:
    return " ".join(f"{k}={'-' if v is None else v}" for k, v in values.items())


def _stat(summary: dict) -> str:
    if not summary or not summary.get("n"):
        return "–"
    spread = f" ± {summary['std']:.6g}" if summary.get("std") is not None else ""
    return f"{summary['mean']:.6g}{spread} (n={summary['n']})"


def render_text(report: dict) -> str:
    config, code, metrics, mlflow = report["configuration"], report["code"], report["metrics"], report["mlflow"]
    seed = f" seed {report['seed']}" if report["seed"] is not None else ""
    lines = [f"audit of {report['cell']}{seed} (matched {report['matched']['by']} {report['matched']['value']}; "
             f"from {report['source']})", "", "configuration"]
    lines += [f"  cell      {_fields(config['cell'])}", f"  protocol  {_fields(config['protocol'])}",
              f"  data      {_fields(config['data'])}", f"  seeds     {config['seeds']}",
              f"  experiment {config['experiment']}", f"  cell digest   {report['digests']['cell']}"]
    lines += [f"  config digest (seed {s})  {d}" for s, d in report["digests"]["config"].items()]
    identity = report["data_identity"]
    lines += ["", "data identity", f"  dataset sha256  {identity['dataset_sha256']}"]
    lines += [f"  {name:<5} split   sha256 {split.get('sha256')} (n={split.get('n')})"
              for name, split in identity["splits"].items()]
    lines += ["", "code", f"  git commit {code['git_commit']} (dirty: {code['git_dirty']})",
              f"  device {code['device']}, {code['threads']} threads",
              "  versions  " + _fields(code["versions"])]
    lines += [f"  md5 {md5}  {path}" for path, md5 in code["dep_md5"].items()]
    unit = metrics["metric"]
    lines += ["", f"metrics as recorded ({unit}, {metrics['better']} is better)",
              f"  {'seed':>4}  {'status':<7} {'valid best':<20} {'test':<20} {'best epoch':>10} {'epochs':>6}  run id"]
    for run in metrics["seeds"]:
        lines.append(f"  {run['seed']:>4}  {run['status']:<7} {_num(run['valid_best']):<20} {_num(run['test']):<20} "
                     f"{_num(run['best_epoch']):>10} {_num(run['epochs_run']):>6}  {run['run_id']}")
        if run.get("error"):
            lines.append(f"        error: {run['error']}")
    summary = metrics["summary"]
    lines.append(f"  cell, all seeds: valid best {_stat(summary['valid_best'])}, test {_stat(summary['test'])}, "
                 f"best epoch {_stat(summary['best_epoch'])}")
    evaluated = metrics["evaluate"]
    if evaluated:
        agree = {True: "yes", False: "NO", None: "-"}[evaluated.get("all_match_record")]
        lines.append(f"  {evaluated['file']}: test {_stat(evaluated.get('test'))}, valid best "
                     f"{_stat(evaluated.get('valid_best'))}; re-scored checkpoints match the record: {agree}")
    lines += ["", "MLflow", f"  tracking uri  {mlflow['tracking_uri']}",
              f"  experiment    {mlflow['experiment']} (id {mlflow['experiment_id']})",
              f"  parent run    {mlflow['parent_run_id']}"]
    lines += [f"  seed {s} run    {rid}" for s, rid in mlflow["seed_run_ids"].items()]
    lines += [f"  {url}" for url in mlflow.get("links", {}).values()]
    reproduce = report["reproduce"]
    lines += ["", "reproduce (from the project root)"] + [f"  {c}" for c in reproduce["commands"]]
    expect = ", ".join(f"seed {s} test {_num(v)}" for s, v in reproduce["expect"]["test"].items())
    lines.append(f"  then {reproduce['expect']['file']} should hold {expect}")
    lines += ["", "disagreements between the records and the current tree"]
    lines += [f"  ! [{d['kind']}] {d['message']}" for d in report["disagreements"]] or ["  none"]
    if report["notes"]:
        lines += ["", "notes"] + [f"  - {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def _num(value) -> str:
    return "-" if value is None else repr(value) if isinstance(value, float) else str(value)


# -- command line ---------------------------------------------------------------------

def register(commands) -> None:
    parser = commands.add_parser(
        "audit", help="where a number came from and how to reproduce it",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query", help="cell id, MLflow run id, config digest or cell digest "
                        f"(full, or a unique prefix of at least {MIN_PREFIX} hex characters)")
    parser.add_argument("--seed", type=int, default=None, help="one seed of the cell")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("-C", "--root", type=Path, default=Path("."), help="project root (default: .)")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    try:
        report = audit(args.root, args.query, args.seed)
    except AuditError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    else:
        print(render_text(report), end="")
    return 0
