"""benchmarks/bench_quality.py runs end to end on tiny subsets, and its summaries are what they say."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from slimfast.presets import PRESETS

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_quality.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_quality_quick_runs_and_summarises():
    bench = _bench()
    res = bench.run_problem("peaks", PRESETS["default"], lrs=(1e-3, 1e-2), seeds=(0, 1), epochs=2, n_train=64,
                            n_val=32)
    for key in ("adam_final", "slim_final"):
        assert set(res[key]) == {1e-3, 1e-2} and all(math.isfinite(v) and v > 0 for v in res[key].values())
    assert res["adam_best"] == min(res["adam_final"].values())
    assert res["slim_spread"] == pytest.approx(math.log10(max(res["slim_final"].values())
                                                          / min(res["slim_final"].values())))
    assert len(res["slim_curves"][1e-3]) == 3     # epochs 0, 1, 2
    # refit="end": the curve's last point is the refit run's final loss
    assert res["slim_curves"][1e-3][-1] == pytest.approx(res["slim_final"][1e-3], rel=1e-12)
    text = bench.format_problem(res)
    assert "best-of-sweep" in text and "spread" in text
    assert set(bench.checks(res)) == {"wins_at_lr<=1e-2", "best<=best", "reach<=half", "spread<=half"}


def test_bench_quality_main_quick_on_one_problem(tmp_path):
    bench = _bench()
    out = tmp_path / "q.json"
    results = bench.main(["--quick", "--problems", "cdr", "--json", str(out)])
    assert len(results) == 1 and out.exists()
    assert bench.settings_from(bench.parse_args(["--preset", "reference"])) == PRESETS["reference"]
