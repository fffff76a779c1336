"""`misfit profile NAME`: run a named profile (profiles/NAME.yaml: params.yaml overrides, such
as the smoke profile) without touching the published study.

How, and why this way (DVC 3.67, checked in its source):
- `dvc exp run --temp -S key=value …` writes the overrides into a stash commit, resets the
  workspace to what it was, and reproduces the pipeline in a temporary copy under
  .dvc/tmp/exps/standalone/ (a git clone of HEAD with the workspace's uncommitted changes to
  tracked files applied; untracked files are not carried). Its outputs are committed to an
  experiment ref (refs/exps/…), shown by `dvc exp show`, never written to this checkout:
  `git status` and the published records, metrics, reports and dvc.lock stay as they are.
  Nothing has to be committed first. `dvc exp run` without --temp would write every output
  into the workspace: the problem of issue 22.
- the copy shares this checkout's DVC cache (cache.dir), so it checks out data/raw and every
  other cached output that dvc.lock pins, and the run-cache lets a stage whose inputs were
  already run (a second smoke run's split, say) skip its command.
- the copy is deleted at the end, so a relative MLflow store inside it would be lost: the
  stages get MLFLOW_TRACKING_URI = this checkout's store (unless one is set), and the
  profile's experiment `<tracking.experiment>-<profile>` is created here first, so that
  its artifacts (checkpoints) also land in this checkout's mlruns/artifacts.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

PROFILES_DIR = "profiles"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a file name, an experiment and a git ref
PROFILE_KEYS = {"description", "set", "drop"}
# `dvc exp show` lists every param and metric: 849 columns for the study. These columns say
# what a profile changed; add `--keep 'metrics/<cell>\.json:test\.mean$'` for a cell's number.
EXP_SHOW_KEEP = r"Experiment|Created|State|data\.|protocol\.max_epochs$|seeds$|draws\.|tracking\.experiment$"
EXP_SHOW_ARGS = ("exp", "show", "--drop", ".*", "--keep", EXP_SHOW_KEEP)


class ProfileError(ValueError):
    """A profile that cannot run; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    overrides: dict  # dotted params.yaml key -> value
    drop: tuple[str, ...]  # dotted params.yaml keys to leave out


def profile_path(root: Path, name: str) -> Path:
    return root / PROFILES_DIR / f"{name}.yaml"


def available(root: Path) -> list[str]:
    return sorted(path.stem for path in (root / PROFILES_DIR).glob("*.yaml"))


def load_profile(root: Path, name: str) -> Profile:
    if not NAME_PATTERN.fullmatch(name):
        raise ProfileError(f"{name!r}: a profile name is letters, digits, '-' and '_'")
    path = profile_path(root, name)
    if not path.is_file():
        raise ProfileError(f"{path}: no such profile; there are {available(root) or 'none'}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or set(raw) - PROFILE_KEYS:
        raise ProfileError(f"{path}: expected the keys {sorted(PROFILE_KEYS)}, got "
                           f"{sorted(raw) if isinstance(raw, dict) else type(raw).__name__}")
    overrides, drop = raw.get("set") or {}, raw.get("drop") or []
    if not isinstance(overrides, dict) or not isinstance(drop, list):
        raise ProfileError(f"{path}: `set` is a mapping of dotted keys to values, `drop` a list of keys")
    if any(key.startswith("tracking.experiment") for key in overrides):
        raise ProfileError(f"{path}: the MLflow experiment is <tracking.experiment>-{name}, not set by a profile")
    return Profile(name, str(raw.get("description", "")), overrides, tuple(drop))


def experiment_name(params: dict, profile: Profile) -> str:
    """The profile's own MLflow experiment: its runs never mix with the study's."""
    return f"{params['tracking']['experiment']}-{profile.name}"


def apply_overrides(params: dict, profile: Profile, experiment: str) -> dict:
    """params.yaml as the profile's run will see it (what `dvc exp run -S` writes)."""
    result = copy.deepcopy(params)
    for key, value in {**profile.overrides, "tracking.experiment": experiment}.items():
        *parents, leaf = key.split(".")
        section = result
        for part in parents:
            section = section.setdefault(part, {})
        section[leaf] = value
    for key in profile.drop:
        *parents, leaf = key.split(".")
        section = result
        for part in parents:
            section = section.get(part, {})
        if leaf not in section:
            raise ProfileError(f"drop: {key} is not in params.yaml")
        del section[leaf]
    return result


def check_params(root: Path, profile: Profile, experiment: str) -> None:
    """Validate the overridden params here, in a second, not in the first stage that reads them."""
    from misfit.core.config import ConfigError, parse_params

    params = yaml.safe_load((root / "params.yaml").read_text())
    try:
        parse_params(apply_overrides(params, profile, experiment), profile_path(root, profile.name))
    except ConfigError as error:
        raise ProfileError(f"{error}\n(params.yaml with the profile's overrides)") from None


def set_args(profile: Profile, experiment: str) -> list[str]:
    """`-S key=value` for each override: JSON is YAML flow, which `dvc exp run -S` parses."""
    args = []
    for key, value in {**profile.overrides, "tracking.experiment": experiment}.items():
        args += ["-S", f"{key}={json.dumps(value)}"]
    for key in profile.drop:
        args += ["-S", f"~{key}"]
    return args


def dvc_command() -> str:
    """The dvc beside this interpreter (the project's virtualenv), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def run_command(profile: Profile, experiment: str, exp_name: str) -> list[str]:
    return [dvc_command(), "exp", "run", "--temp", "--name", exp_name, *set_args(profile, experiment)]


def prepare_store(root: Path, experiment: str, env: dict) -> str:
    """Point the stages at this checkout's store and create the profile's experiment in it.

    The experiment is made here, with its artifacts under this checkout's mlruns/, because
    a stage in the temporary copy would otherwise put them inside the copy."""
    from misfit.track.store import open_experiment, tracking_uri

    uri = tracking_uri(root)  # MLFLOW_TRACKING_URI if set, else this checkout's sqlite store
    env["MLFLOW_TRACKING_URI"] = uri
    if uri.startswith("sqlite:"):
        (root / "mlruns").mkdir(exist_ok=True)
    open_experiment(root, experiment)
    return uri


def experiment_ref(root: Path, exp_name: str) -> str | None:
    """The commit DVC stored the experiment's outputs in (refs/exps/…/<exp_name>)."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps/"],
                          cwd=root, capture_output=True, text=True, check=True).stdout
    for line in refs.splitlines():
        commit, ref = line.split(" ", 1)
        if ref.endswith(f"/{exp_name}"):
            return commit
    return None


def modified_tracked_files(root: Path) -> list[str]:
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                            capture_output=True, text=True, check=True).stdout
    return [line[3:] for line in status.splitlines()]


def summary(profile: Profile, exp_name: str, commit: str | None, experiment: str, uri: str) -> str:
    where = f" (commit {commit[:10]})" if commit else ""
    show = " ".join(["dvc", *EXP_SHOW_ARGS[:-1], f"'{EXP_SHOW_KEEP}'"])
    return "\n".join([
        f"profile {profile.name}: DVC experiment '{exp_name}'{where}; this checkout's files are unchanged",
        f"  compare:   {show}",
        *([f"  its report: git show {commit[:10]}:reports/report.md"] if commit else []),
        f"  MLflow:    experiment '{experiment}' in {uri}",
        f"  remove it: dvc exp remove {exp_name}",
    ])


def run_profile(root: Path, name: str, dry_run: bool = False) -> int:
    profile = load_profile(root, name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    experiment = experiment_name(params, profile)
    check_params(root, profile, experiment)
    exp_name = f"{profile.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    command = run_command(profile, experiment, exp_name)
    if dry_run:
        print(shlex.join(command))
        return 0
    carried = modified_tracked_files(root)
    if carried:  # dvc exp run carries them into the copy; they stay here as they are
        print(f"note: the run includes uncommitted changes to {', '.join(carried)}")
    from misfit.track.runs import PROFILE_ENV

    env = {**os.environ, PROFILE_ENV: profile.name}  # train@ and evaluate@ tag their runs with it
    uri = prepare_store(root, experiment, env)
    print(f"profile {profile.name}: {profile.description}\n$ {shlex.join(command)}", flush=True)
    done = subprocess.run(command, cwd=root, env=env)
    if done.returncode != 0:
        print(f"profile {profile.name}: dvc exp run failed (exit {done.returncode}); this checkout's "
              f"files are unchanged; its MLflow runs are in experiment '{experiment}'", file=sys.stderr)
        return done.returncode
    print(summary(profile, exp_name, experiment_ref(root, exp_name), experiment, uri))
    return 0


def register(commands) -> None:
    parser = commands.add_parser(
        "profile", help="run a named profile (profiles/NAME.yaml) as a DVC experiment, leaving this checkout as it is",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="the profile: profiles/<name>.yaml (e.g. smoke)")
    parser.add_argument("--list", action="store_true", help="list the profiles")
    parser.add_argument("--dry-run", action="store_true", help="print the dvc exp run command, run nothing")
    parser.add_argument("-C", "--root", type=Path, default=Path("."), help="project root (default: .)")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    root = args.root.resolve()
    if args.list or not args.name:
        for name in available(root):
            print(f"{name}: {load_profile(root, name).description}")
        return 0
    try:
        return run_profile(root, args.name, args.dry_run)
    except ProfileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
