"""The command line's slimTrain settings: compare reports medians over seeds; --refit and --preset reach the run."""

from __future__ import annotations

import json
import statistics

import pytest

from slimfast.cli import main
from slimfast.problems import get_problem
from slimfast.runs import RunConfig, run_training


pytestmark = pytest.mark.usefixtures("single_thread")


def test_compare_reports_medians_over_seeds(tmp_path):
    out = tmp_path / "cmp"
    rc = main(["compare", "--problem", "peaks", "--epochs", "1", "--n-train", "64", "--n-val", "32", "--lrs", "1e-2",
               "--seeds", "0,1,2", "--out", str(out), "-q"])
    assert rc == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["seeds"] == [0, 1, 2]
    problem = get_problem("peaks").subset(64, 32)
    for method in ("slimtrain", "adam"):
        finals = [run_training(problem, RunConfig(method=method, lr=1e-2, epochs=1, seed=s))["val_loss"][-1]
                  for s in (0, 1, 2)]
        assert data["final_val_loss"][method]["0.01"] == pytest.approx(statistics.median(finals), rel=1e-12)
        assert len(data["runs"][method]["0.01"]) == 3


def test_train_refit_and_preset_options_reach_the_run(tmp_path):
    def run(*extra):
        out = tmp_path / "_".join(extra or ("default",)).replace("-", "")
        assert main(["train", "--problem", "peaks", "--epochs", "1", "--n-train", "64", "--n-val", "32",
                     "--out", str(out), "-q", *extra]) == 0
        return json.loads((out / "history.json").read_text())

    default, none, ref = run(), run("--refit", "none"), run("--preset", "reference")
    assert default["config"]["refit"] == "end" and len(default["refit_alpha"]) == 1
    assert none["config"]["refit"] == "none" and none["refit_alpha"] == []
    assert default["val_loss"][-1] != none["val_loss"][-1]
    assert (ref["config"]["memory_depth"], ref["config"]["lambda_mode"], ref["config"]["refit"]) == (5, "reference",
                                                                                                     "none")
