"""The defaults are what README's "Choosing settings" says, and every entry point uses the same ones."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

from torch import nn

from slimfast.cli import build_parser
from slimfast.commands import _run_config, _settings
from slimfast.optim import SlimTik
from slimfast.presets import PRESETS
from slimfast.runs import RunConfig
from slimfast.sweep import ModelSpec, run_sweep
from slimfast.train import SlimTrain

README = Path(__file__).resolve().parents[1] / "README.md"


def test_default_preset_is_what_the_readme_says():
    d = PRESETS["default"]
    assert (d.memory_depth, d.Lambda0, d.lambda_mode, d.Lambda_bounds, d.refit) == (0, 0.05, "sgcv", (1e-7, 1e3), "end")
    assert d.lambda_bounds == (-math.inf, 1e3)
    text = README.read_text()
    assert "**memory depth r = 0**, Λ0 = 0.05, λ by sGCV over Λ ∈ [1e-7, 1e3]" in text
    assert 'refit of the head at the end** (`refit="end"`)' in text
    r = PRESETS["reference"]
    assert (r.memory_depth, r.Lambda0, r.lambda_mode, r.Lambda_bounds, r.refit) == (5, 0.05, "reference", (1e-7, 1e3),
                                                                                    "none")
    assert "r = 5,\nΛ0 = 0.05, Λ ∈ [1e-7, 1e3], its 60-point λ grid, no refit" in text


def test_entry_points_share_the_default_preset():
    d = PRESETS["default"]
    slim = SlimTik(nn.Linear(3, 1))
    assert slim.memory_depth == d.memory_depth and slim.Lambda0 == d.Lambda0 and slim.config.mode == d.lambda_mode
    assert tuple(slim.config.Lambda_bounds) == d.Lambda_bounds and tuple(slim.config.lambda_bounds) == d.lambda_bounds
    cfg = RunConfig()
    assert (cfg.memory_depth, cfg.Lambda0, cfg.lambda_mode, tuple(cfg.Lambda_bounds), cfg.refit) == (
        d.memory_depth, d.Lambda0, d.lambda_mode, d.Lambda_bounds, d.refit)
    assert (ModelSpec().memory_depth, ModelSpec().Lambda0) == (d.memory_depth, d.Lambda0)
    assert inspect.signature(run_sweep).parameters["refit"].default == d.refit
    assert inspect.signature(SlimTrain.fit).parameters["refit"].default == d.refit


def test_cli_preset_and_overrides():
    parser = build_parser()
    args = parser.parse_args(["train"])
    assert _settings(args) == PRESETS["default"]
    ref = parser.parse_args(["compare", "--preset", "reference", "--seeds", "0,1,2"])
    assert _settings(ref) == PRESETS["reference"] and ref.seeds == (0, 1, 2)
    over = parser.parse_args(["sweep", "--preset", "reference", "--memory-depth", "2", "--Lambda0", "0.5", "--refit",
                              "end", "--lambda-mode", "sgcv"])
    s = _settings(over)
    assert (s.memory_depth, s.Lambda0, s.refit, s.lambda_mode) == (2, 0.5, "end", "sgcv")
    cfg = _run_config(over, "slimtrain", 1e-3, 3, seed=4)
    assert (cfg.memory_depth, cfg.Lambda0, cfg.refit, cfg.lambda_mode, cfg.seed) == (2, 0.5, "end", "sgcv", 4)
