"""Smoke tests of the command line: tiny train and compare runs write their files and tables."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from slimfast.cli import main
from slimfast.reports import sweep_summary
from slimfast.runs import RunConfig, run_training
from slimfast.problems import get_problem

PNG = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("single_thread")   # conftest.py


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


@pytest.mark.parametrize("optimizer", ["slimtrain", "adam"])
def test_train_peaks_writes_outputs(tmp_path, capsys, optimizer):
    out = tmp_path / "run"
    rc = main(["train", "--problem", "peaks", "--optimizer", optimizer, "--epochs", "2", "--n-train", "96",
               "--n-val", "40", "--out", str(out), "-q"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| method" in text and "val loss" in text and "time/step" in text and "alpha_" in text
    assert ("slimTrain" if optimizer == "slimtrain" else "Adam") in text
    assert _is_png(out / "loss.png")
    summary = (out / "summary.md").read_text()
    assert "| method" in summary and "loss.png" in summary
    hist = json.loads((out / "history.json").read_text())
    assert hist["epoch"] == [0, 1, 2] and hist["steps"] == 6  # 96 / 32 = 3 steps per epoch
    assert len(hist["step_time"]) == 6 and all(t > 0 for t in hist["step_time"])
    assert all(math.isfinite(v) for v in hist["val_loss"])
    if optimizer == "slimtrain":
        assert hist["alpha"][-1] is not None and hist["alpha"][-1] > 0
        assert len(hist["step_alpha"]) == 6
    else:
        assert hist["alpha"][-1] is None


def test_train_digits_conv_head_max_steps(tmp_path, capsys):
    out = tmp_path / "digits"
    rc = main(["train", "--problem", "digits", "--max-steps", "3", "--n-train", "64", "--n-val", "32",
               "--memory-depth", "2", "--out", str(out), "-q", "--threads", "1", "--backend", "torch"])
    assert rc == 0
    hist = json.loads((out / "history.json").read_text())
    assert hist["steps"] == 3 and hist["epoch"] == [0, 1, 2]  # 2 steps per epoch
    assert _is_png(out / "loss.png")
    assert "slimTrain" in capsys.readouterr().out
    assert hist["config"]["backend"] == "torch" and hist["config"]["memory_depth"] == 2


def test_compare_writes_outputs(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--problem", "peaks", "--epochs", "1", "--max-steps", "2", "--n-train", "64",
               "--n-val", "32", "--out", str(out), "-q"])
    assert rc == 0
    for name in ("convergence.png", "sensitivity.png"):
        assert _is_png(out / name)
    md = (out / "compare.md").read_text()
    for lr in ("0.0001", "0.001", "0.01", "0.1"):
        assert f"| {lr} " in md
    assert "spread max/min" in md and "best" in md
    data = json.loads((out / "compare.json").read_text())
    assert set(data["final_val_loss"]) == {"slimtrain", "adam"}
    assert set(data["final_val_loss"]["adam"]) == {"0.0001", "0.001", "0.01", "0.1"}
    assert data["summary"]["slimtrain"]["spread"] >= 1.0
    assert "spread max/min" in capsys.readouterr().out


def test_same_start_and_batches_for_both_methods():
    """With the same seed both methods start from the same weights: the epoch-0 losses agree."""
    problem = get_problem("peaks", seed=1).subset(64, 32)
    a = run_training(problem, RunConfig(method="slimtrain", epochs=1, max_steps=1))
    b = run_training(problem, RunConfig(method="adam", epochs=1, max_steps=1))
    assert a["val_loss"][0] == b["val_loss"][0]
    c = run_training(problem, RunConfig(method="slimtrain", epochs=1, max_steps=1))
    assert a["val_loss"] == c["val_loss"]  # deterministic


def test_sweep_summary_counts_divergence():
    s = sweep_summary({"adam": {1e-3: 2.0, 1e-2: 0.5, 1e-1: math.nan}, "slimtrain": {1e-3: 1.0, 1e-2: 4.0}})
    assert s["adam"]["best_lr"] == 1e-2 and s["adam"]["spread"] == math.inf and s["adam"]["n_diverged"] == 1
    assert s["slimtrain"]["spread"] == pytest.approx(4.0) and s["slimtrain"]["best_val_loss"] == 1.0


def test_plots_leave_the_matplotlib_backend_alone(tmp_path, monkeypatch):
    """The figures use matplotlib's object API: no library function may select a backend."""
    import matplotlib

    from slimfast import plots

    calls = []
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: calls.append(a))
    hist = run_training(get_problem("peaks", seed=0).subset(64, 32), RunConfig(epochs=1, max_steps=2))
    plots.plot_loss(hist, tmp_path / "loss.png", "t")
    plots.plot_convergence({"slimtrain": {1e-3: hist}}, tmp_path / "conv.png", "t")
    plots.plot_sensitivity({"slimtrain": {1e-3: 1.0, 1e-2: math.nan}}, tmp_path / "sens.png", "t")
    plots.plot_sweep_sensitivity({(0.05, 5): {1e-3: [1.0, 2.0]}}, tmp_path / "sweep.png", "t")
    assert calls == []
    assert all(_is_png(tmp_path / n) for n in ("loss.png", "conv.png", "sens.png", "sweep.png"))


def test_cli_modules_stay_small():
    for name in ("cli", "commands", "runs", "reports", "plots"):
        n_lines = len((ROOT / "slimfast" / f"{name}.py").read_text().splitlines())
        assert n_lines <= 400, f"slimfast/{name}.py has {n_lines} lines"


def test_bad_arguments_exit_with_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--problem", "nope"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["train", "--lr", "-1"])


def test_python_m_slimfast_help():
    env_path = str(ROOT)
    res = subprocess.run([sys.executable, "-m", "slimfast", "train", "--help"], capture_output=True, text=True,
                         env={"PYTHONPATH": env_path, "PATH": ""}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--memory-depth" in res.stdout and "--optimizer" in res.stdout and "--max-steps" not in res.stdout


def test_train_mnist_from_local_idx(tmp_path, capsys):
    from tests.test_problems import _fake_mnist

    data = tmp_path / "mnist"
    _fake_mnist(data, n_train=40, n_test=4, compress=True)
    out = tmp_path / "run"
    rc = main(["train", "--problem", "mnist", "--data-dir", str(data), "--n-train", "32", "--n-val", "8",
               "--max-steps", "1", "--backend", "torch", "--out", str(out), "-q"])
    assert rc == 0
    hist = json.loads((out / "history.json").read_text())
    assert hist["problem"] == "mnist" and hist["steps"] == 1
    assert _is_png(out / "loss.png")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--problem", "mnist", "--out", str(out)])
    assert exc.value.code == 2
    assert "--data-dir" in capsys.readouterr().err
