"""`misfit reproduce`: train one run of a cell again and compare every number with its record.

The run is named by its MLflow run id (as the report and `misfit audit` print it; a unique
prefix of 8+ hex characters will do) or by its cell and seed (`--draw` for a further data
draw). It trains on the same code path as train@<cell> (misfit.train.loop.CellTrainer, with
this one run as the cell's only member: a run trained alone is bit-identical to the run
batched with the others, tests/test_determinism.py), from params.yaml and the run's data
draw, and its best state is scored with the reference model as evaluate@<cell> scores it.

Then, committed against new: the valid metric of every epoch, epochs run, best epoch, the
valid best, the re-scored valid and test numbers and the checkpoint's SHA-256, each compared
exactly (bit for bit). Exit 0 only if every one is equal; 1 if any differs (what differs is
named, and so are the params, code or data that differ from the run's); 2 if the run cannot
be trained here (no such run, no data).

Nothing published is touched: the checkpoint and a reproduce.json go to a scratch directory
(a fresh private one under the temp dir, or --out), and no MLflow store is opened.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from misfit.core.record import EvaluatedRun, TrainedRun, TrainRecord

EXIT_DIFFERS, EXIT_CANNOT = 1, 2
# what `misfit reproduce` may not write into: the published outputs
PUBLISHED = ("models", "records", "evaluations", "metrics", "predictions", "reports", "data")
# params that change no number of one run: the cell's seed list, the MLflow experiment
IRRELEVANT_PARAMS = ("seeds", "tracking.experiment")


class ReproduceError(RuntimeError):
    """The run cannot be trained here; the message says why and what to do."""


@dataclass
class Target:
    """The run to train again, as its committed records hold it."""
    cell: str
    record: TrainRecord  # records/<cell>.json
    run: TrainedRun  # the run in it
    evaluated: EvaluatedRun | None  # its entry in evaluations/<cell>.json; None: no checkpoint kept

    @property
    def main_draw(self) -> int:
        return main_draw(self.record)

    @property
    def draw(self) -> int:
        return self.run.subset_seed

    @property
    def label(self) -> str:
        on = "" if self.draw == self.main_draw else f" on data draw {self.draw}"
        return f"{self.cell} seed {self.run.seed}{on} (run {self.run.run_id})"


def main_draw(record: TrainRecord) -> int:
    """The record's main data draw: data.subset_seed of the params it trained with."""
    return record.data["config"]["subset_seed"]


@dataclass
class Row:
    """One number, committed and new."""
    name: str
    committed: object
    new: object

    @property
    def equal(self) -> bool:
        return same(self.committed, self.new)


def same(a, b) -> bool:
    """Bit for bit: floats compared exactly; two NaNs are the same outcome."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# -- which run --------------------------------------------------------------------------

def find_run(root: Path, query: str, seed: int | None, draw: int | None) -> Target:
    """The run a query names, from records/ alone (the audit's resolver, without a store)."""
    from misfit.audit.resolve import AuditError, resolve
    from misfit.audit.sources import Project, RecordError
    from misfit.audit.store import Store

    no_store = Store("(not opened)", None, "misfit reproduce opens no MLflow store")
    project = Project(root)
    try:
        subject = resolve(query.strip(), seed, project, no_store, draw)
    except (AuditError, RecordError) as error:
        raise ReproduceError(str(error)) from error
    # without a store, resolve answers only from records/: the cell's records are there, read
    record, evaluation = project.cell_records(subject.cell)
    main = main_draw(record)
    if subject.seed is None:
        choices = ", ".join(sorted({f"--seed {r.seed}" + ("" if r.subset_seed == main else f" --draw {r.subset_seed}")
                                    for r in record.runs}))
        raise ReproduceError(f"{query} names the whole cell {subject.cell}; name one run: its run id, or "
                             f"{subject.cell} with one of: {choices}")
    wanted = main if subject.subset_seed is None else subject.subset_seed
    run = record.run(wanted, subject.seed)
    return Target(subject.cell, record, run, evaluation.run(run.subset_seed, run.seed) if evaluation else None)


# -- what differs from the run before anything trains ---------------------------------------

def setup_differences(root: Path, target: Target, params) -> list[str]:
    """params.yaml, the train code and the draw's data, each against what the run recorded:
    if any differs the numbers may too, and the difference names why."""
    import yaml

    from misfit.audit.checks import prefixed
    from misfit.audit.history import listing, record_params_diff
    from misfit.core.provenance import md5_of_files, train_code_files

    found = []
    differing = [d for d in record_params_diff(target.record, target.cell, params)
                 if d["field"] not in IRRELEVANT_PARAMS]
    if differing:
        found.append("params.yaml differs from the run's: " + listing(differing))
    recorded = prefixed(target.record.tags, "dep.md5.")
    try:
        current = md5_of_files(root, train_code_files(root))
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as error:
        found.append(f"the train code could not be hashed ({error})")
    else:
        changed = sorted(p for p in set(current) | set(recorded) if current.get(p) != recorded.get(p))
        if changed:
            found.append(f"the train code differs from the run's: {', '.join(changed)} "
                         f"(the run's commit: {target.record.tags.get('git_commit', 'unknown')})")
    return found


def data_differences(root: Path, target: Target) -> list[str]:
    """The draw's train and valid splits here against the SHA-256s the record holds."""
    from misfit.core.layout import SPLIT_DIR
    from misfit.data.split import draw_dir, read_split_manifest

    identity = target.record.data if target.draw == target.main_draw else target.record.draws[str(target.draw)]
    here = read_split_manifest(draw_dir(root / SPLIT_DIR, target.draw, target.main_draw))["splits"]
    return [f"data: the {name} split here has SHA-256 {here.get(name, {}).get('sha256')}, the run's "
            f"{split.get('sha256')}" for name, split in identity["splits"].items()
            if here.get(name, {}).get("sha256") != split.get("sha256")]


# -- training and scoring ------------------------------------------------------------------

class Progress:
    """One line per epoch: the new valid metric beside the record's, and an ETA."""

    def __init__(self, target: Target, protocol, metric: str):
        run = target.run
        self.history = {epoch.epoch: epoch.valid_metric for epoch in [run.initial, *run.history]}
        self.committed_epochs = run.epochs_run
        self.protocol, self.metric = protocol, metric
        self.started = time.perf_counter()

    def __call__(self, epoch: int, outcomes: list) -> None:
        (outcome,) = outcomes
        if epoch > 0 and (not outcome.history or outcome.history[-1]["epoch"] != epoch):
            print(f"  epoch {epoch:3d}  the run failed: {outcome.error}", flush=True)  # no valid pass
            return
        value = outcome.initial["valid_metric"] if epoch == 0 else outcome.history[-1]["valid_metric"]
        committed = self.history.get(epoch)
        versus = ("= record" if epoch in self.history and same(value, committed) else
                  "(the record stopped before)" if epoch not in self.history else f"!= record {committed!r}")
        if epoch == 0:
            self.started = time.perf_counter()  # the epochs' clock starts after the first valid pass
            print(f"  epoch   0  valid {self.metric} {value!r} {versus}  (before any update)", flush=True)
            return
        print(f"  epoch {epoch:3d}  valid {self.metric} {value!r} {versus}  {self._eta(epoch, outcome)}", flush=True)

    def _eta(self, epoch: int, outcome) -> str:
        elapsed = time.perf_counter() - self.started
        per_epoch = elapsed / epoch
        since_best = epoch - outcome.best_epoch if outcome.best_epoch else epoch
        expected = max(self.committed_epochs - epoch, 0) * per_epoch
        # an improvement restarts the patience count, so only max_epochs bounds what is left
        bound = (self.protocol.max_epochs - epoch) * per_epoch
        return (f"| {since_best}/{self.protocol.patience} without improvement | {elapsed:.0f} s, "
                f"ETA {expected:.0f} s if it stops where the record did (epoch {self.committed_epochs}), "
                f"at most {bound:.0f} s (max_epochs {self.protocol.max_epochs})")


def train_and_score(root: Path, target: Target, params, out_dir: Path) -> tuple[list[Row], list[int]]:
    """Train the run, save and score its best state; the rows to compare and the epochs whose
    valid metric differs from the record's."""
    import torch

    from misfit.core.errors import DataError
    from misfit.core.files import sha256_file
    from misfit.data.load import load_cell_data, load_test
    from misfit.evaluate.score import load_reference, score_split
    from misfit.train.loop import CellTrainer, Member
    from misfit.train.runtime import configure
    from misfit.train.targets import CellTargets

    cell = params.cell(target.cell)
    device = configure(params.protocol)
    pin_threads(target, params)
    print(f"on {device}, {torch.get_num_threads()} thread(s); scratch directory {out_dir}", flush=True)
    try:
        data = load_cell_data(root, params, cell, device, target.draw)
        test = load_test(root, params, cell, device)
    except DataError as error:
        raise ReproduceError(f"{error}\nthe run's data is not here: `dvc pull data/split data/labels data/test "
                             "data/test_labels.npz` from the DVC remote, or `dvc repro label-derive` "
                             "(with MNIST_MIRROR set when offline)") from error
    for line in data_differences(root, target):
        print(f"  ! {line}", flush=True)
    metric = target.record.metric
    trainer = CellTrainer(cell, params.protocol, [Member(target.draw, target.run.seed)],
                          {target.draw: data}, device)
    (outcome,) = trainer.run(Progress(target, params.protocol, metric))

    new = {"valid": None, "test": None, "sha256": None}
    if outcome.best_state is not None:
        path = out_dir / (target.run.checkpoint or f"seed{target.run.seed}.pt")
        torch.save(outcome.best_state, path)  # as train@<cell> saves it: the same name, the same bytes
        model = load_reference(cell, path, device)
        targets = CellTargets(cell, data.train.y)
        chunk = params.protocol.eval_batch_size
        new = {"valid": score_split(model, targets, data.valid, chunk).score,
               "test": score_split(model, targets, test, chunk).score, "sha256": sha256_file(path)}
    run, scored = target.run, target.evaluated
    rows = [Row("status", run.status, outcome.status),
            Row("epochs run", run.epochs_run, len(outcome.history)),
            Row("best epoch", run.best_epoch, outcome.best_epoch),
            Row(f"valid {metric}, best (training)", run.valid_best, outcome.best_valid),
            Row(f"valid {metric}, re-scored", scored.valid if scored else None, new["valid"]),
            Row(f"test {metric}", scored.test if scored else None, new["test"]),
            Row("checkpoint sha256", run.checkpoint_sha256, new["sha256"])]
    return rows, differing_epochs(run, outcome)


def pin_threads(target: Target, params) -> None:
    """protocol.threads 0 means torch's default, the core count, and the thread count decides how
    reductions split, hence the rounding: train with the count the run had (its `threads` tag)."""
    import torch

    recorded = str(target.record.tags.get("threads", ""))
    if not params.protocol.threads and recorded.isdigit() and int(recorded) != torch.get_num_threads():
        print(f"torch threads {torch.get_num_threads()} -> {recorded}, the run's", flush=True)
        torch.set_num_threads(int(recorded))


def differing_epochs(run: TrainedRun, outcome) -> list[int]:
    """Epochs (0: before any update) whose valid metric differs, or that only one side ran."""
    committed = {e.epoch: e.valid_metric for e in [run.initial, *run.history]}
    new = {e["epoch"]: e["valid_metric"] for e in [outcome.initial, *outcome.history]}
    return [epoch for epoch in sorted(set(committed) | set(new))
            if epoch not in committed or epoch not in new or not same(committed[epoch], new[epoch])]


# -- the comparison ---------------------------------------------------------------------

def _shown(value) -> str:
    return "-" if value is None else repr(value) if isinstance(value, float) else str(value)


def comparison(rows: list[Row], epochs: list[int], history_length: int, metric: str) -> list[str]:
    width = max(len(_shown(v)) for row in rows for v in (row.committed, row.new, "committed"))
    lines = [f"  {'':<32} {'committed':<{width}}  {'new':<{width}}"]
    for row in rows:
        lines.append(f"  {row.name:<32} {_shown(row.committed):<{width}}  {_shown(row.new):<{width}}  "
                     f"{'same' if row.equal else 'DIFFERS'}")
    if epochs:
        lines.append(f"  valid {metric} by epoch: DIFFERS at epoch(s) {', '.join(map(str, epochs))}")
    else:
        lines.append(f"  valid {metric} by epoch: all {history_length} equal bit for bit (epoch 0 to "
                     f"{history_length - 1})")
    return lines


def reproduce(root: Path, query: str, seed: int | None, draw: int | None, out: Path | None) -> int:
    from misfit.core.config import ConfigError, load_params
    from misfit.core.files import write_json_atomic
    from misfit.core.layout import PARAMS_FILE

    started = time.perf_counter()
    target = find_run(root, query, seed, draw)
    try:
        params = load_params(root / PARAMS_FILE)
        params.cell(target.cell)
    except (ConfigError, KeyError, ValueError) as error:
        raise ReproduceError(f"params.yaml: {error}") from error
    out_dir = scratch_dir(root, target, out)
    print(f"reproducing {target.label}", flush=True)
    before = setup_differences(root, target, params)
    for line in before:
        print(f"  ! {line}", flush=True)
    rows, epochs = train_and_score(root, target, params, out_dir)
    metric = target.record.metric
    history_length = 1 + len(target.run.history)
    print("\n".join(comparison(rows, epochs, history_length, metric)))
    differing = [row.name for row in rows if not row.equal]
    if epochs:
        differing.append(f"valid {metric} at epoch(s) {', '.join(map(str, epochs))}")
    seconds = time.perf_counter() - started
    write_json_atomic(out_dir / "reproduce.json", {
        "cell": target.cell, "seed": target.run.seed, "subset_seed": target.draw, "run_id": target.run.run_id,
        "reproduced": not differing, "differing": differing, "setup_differences": before,
        "rows": [{"name": r.name, "committed": r.committed, "new": r.new, "equal": r.equal} for r in rows],
        "differing_epochs": epochs, "seconds": seconds})
    if not differing:
        print(f"reproduced: every number equals the record's, bit for bit ({seconds:.1f} s)")
        return 0
    because = f"; the run's setup differs: {'; '.join(before)}" if before else ""
    print(f"NOT reproduced: {', '.join(differing)} differ{because} ({seconds:.1f} s)")
    return EXIT_DIFFERS


def scratch_dir(root: Path, target: Target, out: Path | None) -> Path:
    """Where the new checkpoint goes: never into a published output."""
    if out is None:
        return Path(tempfile.mkdtemp(prefix=f"misfit-reproduce-{target.cell}-"))  # private: mode 0700
    resolved, project = out.resolve(), root.resolve()
    if any(resolved.is_relative_to(project / name) for name in PUBLISHED):
        raise ReproduceError(f"--out {out}: inside the project's published outputs ({', '.join(PUBLISHED)}); "
                             "choose a scratch directory")
    resolved.mkdir(parents=True, exist_ok=True)
    return resolved


def register(commands) -> None:
    parser = commands.add_parser(
        "reproduce", help="train one run again in a scratch directory and compare its numbers with the record",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query", help="a run id (or a unique prefix of 8+ hex characters), or a cell id with --seed")
    parser.add_argument("--seed", type=int, default=None, help="with a cell id: the run's seed")
    parser.add_argument("--draw", type=int, default=None,
                        help="with --seed: the run on this further data draw (its data.subset_seed)")
    parser.add_argument("--out", type=Path, default=None,
                        help="scratch directory for the checkpoint (default: a new one under the temp dir)")
    parser.add_argument("-C", "--root", type=Path, default=Path("."), help="project root (default: .)")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    try:
        return reproduce(args.root, args.query, args.seed, args.draw, args.out)
    except ReproduceError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CANNOT
