"""How the report words a cell's modes: runs that differ only in a measured number are one group."""
from __future__ import annotations

import pytest

from misfit.report.tables import _detail_groups


def test_constants_that_differ_in_a_measured_number_group_with_their_range():
    assert _detail_groups(["-1.35 strokes", "-0.99 strokes", "-1.34 strokes"]) == ["-1.35 to -0.99 strokes"]
    assert _detail_groups(["the mean (2.56)", "the mean (2.56)"]) == ["the mean (2.56)"]


def test_whole_numbers_are_categories_and_groups_count_their_runs():
    found = _detail_groups(["digit 1", "digit 7", "digit 1", "the mean (2.60)", ""])
    assert found == ["2× digit 1", "1× digit 7", "1× the mean (2.60)"]
    assert _detail_groups(["died in epoch 2", "dead at initialisation", "dead at initialisation"]) == [
        "2× dead at initialisation", "1× died in epoch 2"]


def test_a_detail_with_braces_is_text_not_a_format_string():
    # a multilabel constant answer (misfit.report.modes.describe_answer); it stopped the report
    assert _detail_groups(["labels {curved}", "labels {curved}", "labels {even, prime}"]) == [
        "2× labels {curved}", "1× labels {even, prime}"]
    assert _detail_groups(["labels {curved} at 0.25", "labels {curved} at 0.75"]) == ["labels {curved} at 0.25 to 0.75"]


def test_a_collapse_to_the_minority_answer_is_named_as_such():
    from conftest import report_run

    from misfit.report.cells import Baseline, Cell
    from misfit.report.modes import CONSTANT, LEARNED, Outcome
    from misfit.report.tables import constant_answer_lines

    runs = [report_run(seed, 0, 0.4931, Outcome(CONSTANT, "always 1 = curved")) for seed in range(4)]
    runs.append(report_run(4, 0, 0.97, Outcome(LEARNED, "")))
    cell = Cell("probability-softmax-ce", "probability", "accuracy", "softmax", {}, runs, [])
    (line,) = constant_answer_lines([cell], Baseline(0.5069, "always answering the majority answer"))
    assert "`probability-softmax-ce` (4/5 runs) answers always 1 = curved" in line and "49.31% on test" in line
    assert "1.38 points less than the best constant answer: not the majority answer" in line
    majority = Cell("binary-softmax-ce", "binary", "accuracy", "softmax", {},
                    [report_run(0, 0, 0.5069, Outcome(CONSTANT, "class 0 (not curved)"))], [])
    (line,) = constant_answer_lines([majority], Baseline(0.5069, "always answering the majority class"))
    assert "as much as the best constant answer" in line
    # cells that give the same answer share one line
    other = Cell("binary-sigmoid-bce", "binary", "accuracy", "sigmoid", {},
                 [report_run(0, 0, 0.5069, Outcome(CONSTANT, "class 0 (not curved)"))] * 2, [])
    (line,) = constant_answer_lines([majority, other], Baseline(0.5069, "always answering the majority class"))
    assert line.startswith("- `binary-softmax-ce` (1/1 runs), `binary-sigmoid-bce` (2/2 runs) answer class 0")


@pytest.mark.slow
def test_the_published_report_does_not_depend_on_the_hash_seed(published, tmp_path):
    """The report of a published study's committed records, made in processes with different
    string hashing, is the same text: DVC would otherwise see a changed output of unchanged
    inputs. (The diagnostics' recommended rows once came out in a set's order.)"""
    import shutil
    import subprocess
    import sys

    project = published[0]
    for name in ("src", "stages", "records", "evaluations", "metrics", "predictions", "reference", "params.yaml",
                 "data/label_summary.json", "data/test_labels.npz"):
        source, target = project / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    texts = set()
    for seed in ("0", "1", "2", "3"):
        done = subprocess.run([sys.executable, "stages/report.py"], cwd=tmp_path, capture_output=True, text=True,
                              env={**__import__("os").environ, "PYTHONPATH": "src", "PYTHONHASHSEED": seed})
        assert done.returncode == 0, done.stderr
        texts.add((tmp_path / "reports" / "report.md").read_text())
    assert len(texts) == 1


def test_relu_cells_that_lose_the_same_seeds_at_initialisation_are_one_draw_of_the_lottery():
    from misfit.report.sections import shared_deaths_lines

    def results(raw: list[int], zscore: list[int]) -> dict:
        return {"cells": {"regression-relu-mse-raw": {"relu": {"dead_at_init_seeds": raw}},
                          "regression-relu-mse-zscore": {"relu": {"dead_at_init_seeds": zscore}}}}

    (_, same), = [shared_deaths_lines(results([0, 2, 3], [0, 2, 3]))]
    assert "the same 3 seeds" in same and "not two" in same
    (_, some), = [shared_deaths_lines(results([0, 2, 3], [2, 3, 5, 7]))]
    assert "share 2 of their deaths" in some and "[2, 3]" in some and "3 in `regression-relu-mse-raw`" in some
    assert shared_deaths_lines(results([], [])) == []
    assert shared_deaths_lines({"cells": {"regression-relu-mse-raw": {"relu": {"dead_at_init_seeds": [1]}}}}) == []
