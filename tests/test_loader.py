"""The loader never breaks import, reports what exists, honours forcing, and falls back with a notice."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

import slimfast
from slimfast.backends import loader


def test_backend_info_reports_every_backend() -> None:
    info = slimfast.backend_info()
    assert set(info["available"]) == {"cuda", "cpp", "numba", "torch"}
    assert info["available"]["torch"] is True
    assert info["default_cpu"] in ("cpp", "numba", "torch")
    assert info["available"][info["default_cpu"]] is True
    cpp_loaded = info["available"]["cpp"] is True
    assert info["cpu_lapack"] in (("scipy", "mkl (torch)") if cpp_loaded else (None,))


def test_cpu_preference_order() -> None:
    name, _ = loader.resolve_backend(None, torch.device("cpu"))
    expected = next(n for n in ("cpp", "numba", "torch") if loader.load_backend(n) is not None)
    assert name == expected


def test_environment_variable_forces_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIMFAST_BACKEND", "torch")
    assert loader.resolve_backend(None, torch.device("cpu"))[0] == "torch"
    monkeypatch.setenv("SLIMFAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="backend"):
        loader.resolve_backend(None, torch.device("cpu"))


@pytest.mark.parametrize("forced", [None, "torch", " CPP ", "nonsense", ""])
@pytest.mark.parametrize("name", [None, "cpp", "torch", "numba"])
def test_picks_cpp_agrees_with_resolve_backend(name: str | None, forced: str | None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast paths' check is resolve_backend(...) == "cpp", False where resolve_backend raises."""
    if forced is None:
        monkeypatch.delenv("SLIMFAST_BACKEND", raising=False)
    else:
        monkeypatch.setenv("SLIMFAST_BACKEND", forced)
    for device in (torch.device("cpu"), torch.device("meta")):
        try:
            expected = loader.resolve_backend(name, device)[0] == "cpp"
        except (ValueError, RuntimeError):
            expected = False
        assert loader.picks_cpp(name, device) is expected


def test_environment_value_follows_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLIMFAST_TEST_VALUE", raising=False)
    assert loader._environment_value("SLIMFAST_TEST_VALUE") == ""
    monkeypatch.setenv("SLIMFAST_TEST_VALUE", "naïve value")
    assert loader._environment_value("SLIMFAST_TEST_VALUE") == "naïve value"
    monkeypatch.delenv("SLIMFAST_TEST_VALUE")
    assert loader._environment_value("SLIMFAST_TEST_VALUE") == ""


def test_missing_compiled_module_falls_back_to_numba_with_notice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if loader.load_backend("numba") is None:
        pytest.skip("numba not installed")
    monkeypatch.setitem(loader._cache, "cpp", ImportError("No module named 'slimfast._cpu'"))
    monkeypatch.setattr(loader, "_announced", {})
    with caplog.at_level(logging.WARNING, logger="slimfast"):
        name, _ = loader.resolve_backend(None, torch.device("cpu"))
    assert name == "numba"
    assert any("falling back" in r.getMessage() for r in caplog.records)
    assert "unavailable" in str(slimfast.backend_info()["available"]["cpp"])
    with pytest.raises(RuntimeError, match="cpp"):
        loader.resolve_backend("cpp", torch.device("cpu"))


def test_import_survives_broken_extension() -> None:
    """A compiled module that fails to load must not break ``import slimfast``."""
    code = (
        "import sys\n"
        "sys.modules['slimfast._cpu'] = None\n"  # makes 'import slimfast._cpu' raise ImportError
        "import slimfast\n"
        "info = slimfast.backend_info()\n"
        "assert info['available']['cpp'] is not True, info\n"
        "print(info['default_cpu'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() in ("numba", "torch")
