"""The MLflow UI, for real: `misfit ui` serves a real pipeline's store and headless
Chromium renders the run table, a filtered table and a run page the report links to."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import PUBLISHED_CELLS, copy_of, free_port, wait_for_health

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

CELLS = PUBLISHED_CELLS
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--hide-scrollbars"]
# the React app renders after its API calls; virtual time lets Chromium wait for them
VIRTUAL_TIME_MS = 15000


@pytest.fixture(scope="session")
def chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and this session cannot apt-get install it (not root, or no apt)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "chromium"], env=env, capture_output=True, text=True)
    if done.returncode != 0:  # a stale package list: refresh it once
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, check=True)
        subprocess.run(["apt-get", "install", "-y", "chromium"], env=env, capture_output=True, text=True,
                       check=True)
    assert Path(CHROMIUM).exists()
    return CHROMIUM


@pytest.fixture(scope="module")
def project(published, tmp_path_factory):
    return copy_of(published, tmp_path_factory.mktemp("browser") / "project")


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(process: subprocess.Popen, server_groups: list[int]) -> None:
    """`misfit ui` by its process group; then the server's own group, should it outlive it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # misfit ui stops its server on SIGTERM
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)
    for group in server_groups:
        if alive(group):
            os.killpg(group, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    root, env = project
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(["misfit", "ui", "--port", str(port)], cwd=root, env=env, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server_groups: list[int] = []  # misfit ui starts the server in a process group of its own
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(base, process, log)
        server_groups += children(process.pid)
        assert server_groups, "misfit ui answers, so it has a server child"
        yield SimpleNamespace(base=base, log=log, process=process, groups=server_groups)
    finally:
        stop(process, server_groups)


def browse(chromium: str, url: str, profile: Path, *action: str) -> subprocess.CompletedProcess:
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
               f"--virtual-time-budget={VIRTUAL_TIME_MS}", *action, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "\n", dom))


def experiment_id(root: Path) -> str:
    from mlflow import MlflowClient

    from misfit.track.store import tracking_uri

    return MlflowClient(tracking_uri(root)).get_experiment_by_name("misfit").experiment_id


def test_ui_prints_its_url(server, project):
    base, log = server.base, server.log
    root, _ = project
    assert f"{base}/#/experiments/{experiment_id(root)}/runs" in log.read_text()


def test_run_table_shows_every_cell_and_a_screenshot_is_kept(server, project, chromium, tmp_path):
    base = server.base
    root, _ = project
    url = f"{base}/#/experiments/{experiment_id(root)}/runs"
    done = browse(chromium, url, tmp_path / "profile", "--dump-dom")
    assert done.returncode == 0, done.stderr[-3000:]
    text = visible_text(done.stdout)
    for cell in CELLS:  # the parent runs are named after their cells
        assert re.search(rf"^\s*{re.escape(cell)}\s*$", text, re.M), f"{cell} not in the rendered table"
    screenshot = tmp_path / "runs.png"
    done = browse(chromium, url, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1400,900")
    assert done.returncode == 0, done.stderr[-3000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000  # a rendered table, not a blank page


def test_filter_by_task_tag(server, project, chromium, tmp_path):
    from misfit.track.ui import runs_url, task_filter

    base = server.base
    root, _ = project
    url = runs_url(base, experiment_id(root), task_filter("binary"))  # what `misfit ui --task binary` prints
    done = browse(chromium, url, tmp_path / "profile", "--dump-dom")
    assert done.returncode == 0, done.stderr[-3000:]
    text = visible_text(done.stdout)
    assert re.search(r"^\s*binary-logits-ce\s*$", text, re.M)
    assert "regression-none-mse-zscore" not in text


def test_report_link_opens_the_run(server, project, chromium, tmp_path):
    from misfit.core.config import load_params
    from misfit.core.files import read_json
    from misfit.report.cells import load_cells
    from misfit.report.tables import run_ids

    base = server.base
    root, _ = project
    label_summary = read_json(root / "data" / "label_summary.json")
    cell = load_cells(root, load_params(root / "params.yaml"), label_summary)["binary-logits-ce"]
    links = re.findall(r"\]\(([^)]+)\)", run_ids(cell, (base + "/", experiment_id(root))))
    assert len(links) == len(cell.runs) == 2  # the main draw's runs, as the report links them
    done = browse(chromium, links[0], tmp_path / "profile", "--dump-dom")
    assert done.returncode == 0, done.stderr[-3000:]
    text = visible_text(done.stdout)
    run_id = links[0].rsplit("/", 1)[1]
    (seed,) = [r.seed for r in cell.runs if r.run_id == run_id]
    assert f"Run {run_id}" in text  # the page title
    assert f"binary-logits-ce seed={seed}" in text  # the run's name


def test_stopping_misfit_ui_stops_the_server(server):
    stop(server.process, [])  # SIGTERM to misfit ui alone; the server must follow
    deadline = time.monotonic() + 30
    while any(alive(group) for group in server.groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(group) for group in server.groups)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.base}/health", timeout=5)


# -- a clone's restored store --------------------------------------------------------

@pytest.fixture(scope="module")
def restored_server(published, tmp_path_factory):
    """`misfit ui --restore` in a fresh clone of the published study: no store until it rebuilds one."""
    from conftest import base_env, fresh_clone

    root, _ = published
    clone = fresh_clone(root, tmp_path_factory.mktemp("restored") / "clone", base_env())
    port = free_port()
    log = clone.parent / "ui.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(["misfit", "ui", "--restore", "--port", str(port)], cwd=clone, env=base_env(),
                                   stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    server_groups: list[int] = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(base, process, log, timeout=240)
        server_groups += children(process.pid)
        yield SimpleNamespace(base=base, log=log, clone=clone)
    finally:
        stop(process, server_groups)


def test_restored_store_shows_a_report_run_id(restored_server, chromium, tmp_path):
    from misfit.track.ui import runs_url

    clone = restored_server.clone
    records = list(clone.glob("records/*.json"))
    n_runs = sum(1 + len(json.loads(path.read_text())["runs"]) for path in records)
    assert f"restored {n_runs} runs of {len(records)} cells" in restored_server.log.read_text()
    entry = json.loads((clone / "reports" / "results.json").read_text())["cells"]["binary-logits-ce"]
    record = json.loads((clone / "records" / "binary-logits-ce.json").read_text())
    seed_run = record["runs"][0]
    assert seed_run["run_id"] in json.dumps(entry)  # a run id the report names
    # the run table, searched by the original parent id the report prints, shows the cell's restored run
    parent_search = f"tags.`misfit.original_run_id` = '{record['parent_run_id']}'"
    assert record["parent_run_id"] in json.dumps(entry)
    done = browse(chromium, runs_url(restored_server.base, experiment_id(clone), parent_search),
                  tmp_path / "profile", "--dump-dom")
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^\s*binary-logits-ce\s*$", visible_text(done.stdout), re.M)
    search = f"tags.`misfit.original_run_id` = '{seed_run['run_id']}'"
    # and the restored run's own page carries the original id among its tags
    from mlflow import MlflowClient

    from misfit.track.store import tracking_uri

    (restored,) = MlflowClient(tracking_uri(clone)).search_runs([experiment_id(clone)], search)
    page = f"{restored_server.base}/#/experiments/{experiment_id(clone)}/runs/{restored.info.run_id}"
    done = browse(chromium, page, tmp_path / "profile", "--dump-dom")
    assert done.returncode == 0, done.stderr[-3000:]
    text = visible_text(done.stdout)
    assert f"Run {restored.info.run_id}" in text or restored.info.run_id in text
    assert seed_run["run_id"] in text
