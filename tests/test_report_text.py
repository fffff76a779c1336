"""How the report words a cell's modes: runs that differ only in a measured number are one group."""
from __future__ import annotations

from misfit.report import _detail_groups


def test_constants_that_differ_in_a_measured_number_group_with_their_range():
    assert _detail_groups(["-1.35 strokes", "-0.99 strokes", "-1.34 strokes"]) == ["-1.35 to -0.99 strokes"]
    assert _detail_groups(["the mean (2.56)", "the mean (2.56)"]) == ["the mean (2.56)"]


def test_whole_numbers_are_categories_and_groups_count_their_runs():
    found = _detail_groups(["digit 1", "digit 7", "digit 1", "the mean (2.60)", ""])
    assert found == ["2× digit 1", "1× digit 7", "1× the mean (2.60)"]
    assert _detail_groups(["died in epoch 2", "dead at initialisation", "dead at initialisation"]) == [
        "2× dead at initialisation", "1× died in epoch 2"]
