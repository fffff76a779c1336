"""The Facts as text (for a person) or JSON (for a program); neither reads anything."""
from __future__ import annotations

import json

from misfit.audit.facts import CHECKPOINT_KIND, Facts


def render_json(facts: Facts) -> str:
    return json.dumps(facts.to_json(), indent=2, allow_nan=False) + "\n"


def _fields(values: dict) -> str:
    return " ".join(f"{k}={'-' if v is None else v}" for k, v in values.items())


def _num(value, metric: str | None = None) -> str:
    """A recorded number exactly as stored; an accuracy also as the report prints it."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value!r} ({value * 100:.2f}%)" if metric == "accuracy" else repr(value)
    return str(value)


def _run_label(key: str) -> str:
    """"seed 3" for the main draw's run keyed "3"; a further draw's key says it all already."""
    return f"seed {key}" if key.isdigit() else key


def _stat(summary: dict | None) -> str:
    if not summary or not summary.get("n"):
        return "–"
    if summary.get("mean") is None:
        return f"no mean (n={summary['n']})"
    sd = summary.get("sd", summary.get("std"))
    spread = f" ± {sd:.6g}" if sd is not None else ""
    return f"{summary['mean']:.6g}{spread} (n={summary['n']})"


def _configuration(facts: Facts) -> list[str]:
    config = facts.configuration
    lines = ["configuration", f"  cell      {_fields(config['cell'])}", f"  protocol  {_fields(config['protocol'])}",
             f"  data      {_fields(config['data'])}", f"  seeds     {config['seeds']}",
             f"  experiment {config['experiment']}", f"  cell digest   {facts.digests['cell']}"]
    return lines + [f"  config digest (seed {s})  {d}" for s, d in facts.digests["config"].items()]


def _data(facts: Facts) -> list[str]:
    identity = facts.data_identity
    lines = ["data identity", f"  dataset sha256  {identity['dataset_sha256']}"]
    lines += [f"  {name:<5} split   sha256 {split.get('sha256')} (n={split.get('n')})"
              for name, split in identity["splits"].items()]
    for draw, other in identity.get("draws", {}).items():
        lines.append(f"  draw {draw} (data.subset_seed={draw}):")
        lines += [f"    {name:<5} split sha256 {split.get('sha256')} (n={split.get('n')})"
                  for name, split in (other.get("splits") or {}).items()]
    return lines


def _code(facts: Facts) -> list[str]:
    code = facts.code
    lines = ["code", f"  git commit {code['git_commit']} (dirty: {code['git_dirty']})",
             f"  device {code['device']}, {code['threads']} threads", "  versions  " + _fields(code["versions"])]
    pinned = code.get("dvc_lock_md5") or {}
    for path, md5 in code["dep_md5"].items():
        lock = ("pinned in dvc.lock" if pinned.get(path) == md5 else
                f"dvc.lock pins {pinned[path]}" if path in pinned else "not in dvc.lock")
        lines.append(f"  md5 {md5}  {path}  ({lock})" if pinned else f"  md5 {md5}  {path}")
    return lines


# the metrics table's checkpoint column: the file here against the record's SHA-256
_CHECKPOINT_CHECK = {"verified": "sha256 ok", "differs": "DIFFERS", "absent": "absent", "no hash recorded": "no hash"}


def _metrics(facts: Facts) -> list[str]:
    metrics = facts.metrics
    draws = any(r.subset_seed not in (None, metrics["main_draw"]) for r in metrics["seeds"])
    header = (f"  {'seed':>4}  {'draw' if draws else '':<4}  {'status':<7} {'valid best':<20} {'test':<20} "
              f"{'best epoch':>10} {'epochs':>6}  rescored  checkpoint  run id")
    lines = [f"metrics as recorded ({metrics['metric']}, {metrics['better']} is better)", header]
    for run in metrics["seeds"]:
        draw = "" if not draws else str(run.subset_seed)
        rescored = {True: "match", False: "DIFFER", None: "-"}[(run.rescored or {}).get("matches_record")]
        checkpoint = _CHECKPOINT_CHECK.get(run.checkpoint_check, "-")
        lines.append(f"  {run.seed:>4}  {draw:<4}  {run.status:<7} {_num(run.valid_best, metrics['metric']):<20} "
                     f"{_num(run.test, metrics['metric']):<20} "
                     f"{_num(run.best_epoch):>10} {_num(run.epochs_run):>6}  {rescored:<8}  {checkpoint:<10}  "
                     f"{run.run_id}")
        if run.error:
            lines.append(f"        error: {run.error}")
    summary = metrics["summary"]
    lines.append(f"  cell, main draw, all seeds: valid best {_stat(summary['valid_best'])}, test "
                 f"{_stat(summary['test'])}, best epoch {_stat(summary['best_epoch'])}")
    published, report = metrics.get("published"), metrics.get("report")
    if published:
        lines.append(f"  {published['file']}: test {_stat(published.get('test'))}, valid best "
                     f"{_stat(published.get('valid_best'))}")
    if report:
        # the report gives a mean only when every run of the main draw ended in one mode
        modes = ", ".join(report.get("modes") or []) or "-"
        lines.append(f"  {report['file']}: test {_stat(report.get('test'))}; outcome modes: {modes}")
    return lines


def _mlflow(facts: Facts) -> list[str]:
    mlflow = facts.mlflow
    lines = ["MLflow", f"  tracking uri  {mlflow['tracking_uri']}"
             + ("" if mlflow["store"] == "here" else f"  (not here: {mlflow['store']})"),
             f"  experiment    {mlflow['experiment']} (id {mlflow['experiment_id']})"]
    restored = mlflow.get("restored", {})

    def shown(run_id: str) -> str:
        return f"{run_id}  (restored as {restored[run_id]})" if run_id in restored else run_id

    lines.append(f"  parent run    {shown(mlflow['parent_run_id'])}")
    lines += [f"  {_run_label(s)} run    {shown(rid)}" for s, rid in mlflow["seed_run_ids"].items()]
    return lines + [f"  {url}" for url in mlflow.get("links", {}).values()]


def _reproduce(facts: Facts) -> list[str]:
    reproduce = facts.reproduce
    expect = ", ".join(f"{_run_label(s)} test {_num(v)}" for s, v in reproduce["expect"]["test"].items())
    lines = ["reproduce (from the project root)"] + [f"  {c}" for c in reproduce["commands"]]
    lines.append("  each `misfit reproduce` trains one run in a scratch directory (no MLflow run, no published "
                 "file touched) and prints the committed number beside the new one; it exits 0 only if all agree")
    lines.append("  or retrain the whole cell through DVC (new MLflow runs; rewrites its models, record and evaluation):")
    lines += [f"    {c}" for c in reproduce["whole_cell"]["commands"]]
    return lines + [f"    then {reproduce['expect']['file']} should hold {expect}"]


def _missing(facts: Facts) -> list[str]:
    lines = ["not in this checkout, and how to get it"]
    for item in facts.missing:
        lines += [f"  - {item.what}: {item.why}"] + [f"      {command}" for command in item.get]
    if facts.missing:
        return lines
    # "here" is not "intact": a checkpoint whose hash differs is a disagreement, said below
    differ = sum(d.kind == CHECKPOINT_KIND for d in facts.disagreements)
    return lines + ["  nothing: checkpoints, data and MLflow runs are all here"
                    + (f", but {differ} checkpoint(s) differ from the record (see the disagreements)" if differ else "")]


def render_text(facts: Facts) -> str:
    seed = f" seed {facts.seed}" if facts.seed is not None else ""
    if facts.seed is not None and facts.draw not in (None, facts.metrics["main_draw"]):
        seed += f" on data draw {facts.draw}"
    traced = ("yes: the configuration, digests, data identity, code and metrics below are in files "
              "committed to git"
              if facts.traced_from_git else "no (see the notes)")
    sections = [
        [f"audit of {facts.cell}{seed} (matched {facts.matched.by} {facts.matched.value}; from {facts.source})",
         f"traced from git: {traced}"],
        _configuration(facts), _data(facts), _code(facts), _metrics(facts), _mlflow(facts), _reproduce(facts),
        _missing(facts),
        ["disagreements between the records and the current tree"]
        + ([f"  ! [{d.kind}] {d.message}" for d in facts.disagreements] or ["  none"]),
    ]
    if facts.notes:
        sections.append(["notes"] + [f"  - {note}" for note in facts.notes])
    return "\n\n".join("\n".join(section) for section in sections) + "\n"
