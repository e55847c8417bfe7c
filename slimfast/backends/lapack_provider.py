"""Which LAPACK/BLAS library the compiled CPU kernels call for dsyevd, dgemm and dgemv.

The extension starts with SciPy's (``scipy.linalg.cython_lapack``/``cython_blas``, OpenBLAS in
SciPy's wheels). torch's x86-64 wheels carry MKL inside ``libtorch_cpu`` and export its Fortran
entry points; MKL's dsyevd is 1.4× faster than OpenBLAS's on the 17- to 129-square Gram matrices
of small and phase-block heads (benchmarks/RESULTS.md). So where the loaded torch exports them,
and they pass a check, the kernels call MKL's instead; nothing is linked and nothing new is
loaded (the library is looked up among those already in the process).

The check guards the one thing an exported name does not say: the integer width. The kernels
pass 32-bit ints (LP64); an ILP64 library reads 64. The probe call passes each int in 64 bits
whose upper half makes the value negative, so an ILP64 dsyevd sees n < 0 and returns an error
without touching memory, while an LP64 one reads the low half and must reproduce a known
eigendecomposition; dgemm and dgemv must reproduce a known product.

``SLIMFAST_LAPACK=scipy`` keeps SciPy's for every call (e.g. to compare the two); the default,
``auto``, takes torch's MKL when it passes. ``PROVIDER`` says which one is in use.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["ENV", "PROVIDER", "install", "torch_mkl_functions", "use"]

_log = logging.getLogger("slimfast")

ENV = "SLIMFAST_LAPACK"
#: The names the kernels can take from another library (``_cpu.set_lapack_function``).
REPLACEABLE = ("dsyevd", "dgemm", "dgemv", "mkl_set_num_threads_local")
#: "scipy" or "mkl (torch)": whose dsyevd/dgemm/dgemv the compiled kernels call.
PROVIDER = "scipy"

_SCIPY: dict[str, int] = {}

_POISON = -(1 << 32)   # added to each int: an ILP64 reader sees value − 2³², a negative number


def _int_arg(value: int) -> ctypes.c_int64:
    """A Fortran int argument readable as LP64 (low 32 bits = value) and, as ILP64, negative."""
    if sys.byteorder != "little":
        raise OSError("the LP64 probe needs a little-endian machine")
    return ctypes.c_int64(_POISON + value)


def _lp64_dsyevd_works(address: int) -> bool:
    """dsyevd at ``address`` is an LP64 LAPACK dsyevd: it reproduces the eigenpairs of a fixed
    4 × 4 matrix (and an ILP64 one rejects the call as n < 0 without writing anything)."""
    fn = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 11))(address)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 6))
    A = X @ X.T
    n = 4
    lwork, liwork = 1 + 6 * n + 2 * n * n, 3 + 5 * n
    a = np.asfortranarray(A.copy())
    w = np.zeros(n)
    work = np.zeros(lwork)
    iwork = np.zeros(liwork, dtype=np.int64)   # room for either width
    ints = [_int_arg(v) for v in (n, n, lwork, liwork)]
    info = ctypes.c_int64(_POISON - 1)
    fn(ctypes.c_char_p(b"V"), ctypes.c_char_p(b"L"), ctypes.byref(ints[0]), a.ctypes.data, ctypes.byref(ints[1]),
       w.ctypes.data, work.ctypes.data, ctypes.byref(ints[2]), iwork.ctypes.data, ctypes.byref(ints[3]),
       ctypes.byref(info))
    if ctypes.c_int32(info.value & 0xFFFFFFFF).value != 0:
        return False
    ref = np.linalg.eigvalsh(A)
    scale = float(np.abs(ref).max())
    return bool(np.abs(w - ref).max() <= 1e-12 * scale and np.abs(A @ a - a * w).max() <= 1e-12 * scale)


def _dgemm_works(address: int) -> bool:
    """dgemm at ``address`` computes C = A B for fixed 3 × 2 and 2 × 4 column-major matrices."""
    fn = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 13))(address)
    A = np.asfortranarray(np.arange(6.0).reshape(3, 2) + 1.0)
    B = np.asfortranarray(np.arange(8.0).reshape(2, 4) - 3.0)
    C = np.asfortranarray(np.zeros((3, 4)))
    m, n, k = (ctypes.c_int32(v) for v in (3, 4, 2))
    one, zero = ctypes.c_double(1.0), ctypes.c_double(0.0)
    fn(ctypes.c_char_p(b"N"), ctypes.c_char_p(b"N"), ctypes.byref(m), ctypes.byref(n), ctypes.byref(k),
       ctypes.byref(one), A.ctypes.data, ctypes.byref(m), B.ctypes.data, ctypes.byref(k), ctypes.byref(zero),
       C.ctypes.data, ctypes.byref(m))
    return bool(np.array_equal(C, A @ B))


def _dgemv_works(address: int) -> bool:
    """dgemv at ``address`` computes y = A x for a fixed 3 × 2 column-major matrix."""
    fn = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 11))(address)
    A = np.asfortranarray(np.arange(6.0).reshape(3, 2) + 1.0)
    x = np.array([2.0, -1.0])
    y = np.zeros(3)
    m, n, inc = (ctypes.c_int32(v) for v in (3, 2, 1))
    one, zero = ctypes.c_double(1.0), ctypes.c_double(0.0)
    fn(ctypes.c_char_p(b"N"), ctypes.byref(m), ctypes.byref(n), ctypes.byref(one), A.ctypes.data, ctypes.byref(m),
       x.ctypes.data, ctypes.byref(inc), ctypes.byref(zero), y.ctypes.data, ctypes.byref(inc))
    return bool(np.array_equal(y, A @ x))


def _thread_count_works(address: int) -> bool:
    """mkl_set_num_threads_local at ``address`` takes an int by value and returns the previous
    per-thread count (0: the global one): setting 1 and restoring reads back 1."""
    fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(address)
    before = fn(1)
    was_one = fn(before)
    return before >= 0 and was_one == 1


#: The exported symbol of each name: Fortran entry points, and MKL's C thread-count function
#: (``mkl_set_num_threads_local`` without the capitals is its Fortran one, taking a pointer).
_SYMBOLS = {"dsyevd": "dsyevd_", "dgemm": "dgemm_", "dgemv": "dgemv_",
            "mkl_set_num_threads_local": "MKL_Set_Num_Threads_Local"}
_PROBES: dict[str, Callable[[int], bool]] = {"dsyevd": _lp64_dsyevd_works, "dgemm": _dgemm_works,
                                              "dgemv": _dgemv_works, "mkl_set_num_threads_local": _thread_count_works}


def _loaded_torch_cpu() -> Any | None:
    """Handle of the already loaded ``libtorch_cpu`` (Linux), else None; loads nothing."""
    if not sys.platform.startswith("linux"):
        return None
    import torch

    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        return ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return None


def torch_mkl_functions() -> dict[str, int] | None:
    """Addresses of MKL's dsyevd_, dgemm_, dgemv_ and MKL_Set_Num_Threads_Local in the loaded
    torch, each checked by its probe; None when torch has no MKL, exports one of them not, or a
    probe fails."""
    import torch

    if not torch.backends.mkl.is_available():
        return None
    lib = _loaded_torch_cpu()
    if lib is None:
        return None
    found: dict[str, int] = {}
    try:
        for name, symbol in _SYMBOLS.items():
            found[name] = ctypes.cast(getattr(lib, symbol), ctypes.c_void_p).value or 0
        if not all(found.values()) or not all(probe(found[name]) for name, probe in _PROBES.items()):
            return None
    except (AttributeError, OSError):
        return None
    return found


def use(cpu_module: Any, provider: str) -> None:
    """Point the kernels of ``cpu_module`` (``slimfast._cpu``) at ``provider``: "scipy" or
    "mkl (torch)" (ValueError when that one is not available here). Not while a step runs."""
    if not _SCIPY:
        _SCIPY.update({name: cpu_module.lapack_function(name) for name in REPLACEABLE})
    if provider == "scipy":
        functions = _SCIPY
    elif provider == "mkl (torch)":
        functions = torch_mkl_functions()
        if functions is None:
            raise ValueError("provider 'mkl (torch)' is not available: the loaded torch exports no LP64 MKL")
    else:
        raise ValueError(f"provider must be 'scipy' or 'mkl (torch)', got {provider!r}")
    _point(cpu_module, provider, functions)


def _point(cpu_module: Any, provider: str, functions: dict[str, int]) -> None:
    global PROVIDER
    for name in REPLACEABLE:
        cpu_module.set_lapack_function(name, functions[name])
    PROVIDER = provider


def install(cpu_module: Any) -> str:
    """At import of the cpp backend: torch's MKL unless ``SLIMFAST_LAPACK=scipy`` or it is
    unavailable (then SciPy's, as built). Never raises; returns ``PROVIDER``."""
    wanted = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "scipy"):
        _log.warning("%s=%r is neither 'auto' nor 'scipy'; using 'auto'", ENV, wanted)
        wanted = "auto"
    try:
        use(cpu_module, "scipy")
        mkl = torch_mkl_functions() if wanted == "auto" else None
        if mkl is not None:   # probed once: use() would probe again
            _point(cpu_module, "mkl (torch)", mkl)
    except Exception as exc:   # an unusual library must never break the import: keep SciPy's
        _log.warning("keeping SciPy's LAPACK for the CPU kernels: %s", exc)
        if _SCIPY:
            use(cpu_module, "scipy")
    _log.debug("CPU kernels call %s's dsyevd/dgemm/dgemv", PROVIDER)
    return PROVIDER
