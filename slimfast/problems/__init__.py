"""Built-in problems: data (train / validation / test tensors) and a separable network each.

    problem = get_problem("peaks", seed=0)
    body, head = problem.make_body(), problem.make_head()

All problems are generated or read offline and are deterministic in ``seed``.
"""

from __future__ import annotations

from typing import Any

from ._common import Problem, ResidualBlock, ResidualBody
from .cdr import CDRConfig, CDRSolver, load_cdr
from .digits import load_digits_problem
from .mnist import load_mnist, read_idx
from .peaks import load_peaks, peaks

PROBLEMS: tuple[str, ...] = ("peaks", "cdr", "digits", "mnist")


def get_problem(name: str, seed: int = 0, **kwargs: Any) -> Problem:
    """The built-in problem ``name`` (peaks | cdr | digits | mnist) generated with ``seed``.

    Extra keyword arguments go to the loader (e.g. ``n_train``, ``batch_size``; ``cache_dir``
    for cdr). ``mnist`` requires ``data_dir``, a folder with the IDX files.
    """
    if name == "peaks":
        return load_peaks(seed=seed, **kwargs)
    if name == "cdr":
        return load_cdr(seed=seed, **kwargs)
    if name == "digits":
        return load_digits_problem(seed=seed, **kwargs)
    if name == "mnist":
        if kwargs.get("data_dir") is None:
            raise ValueError("the mnist problem needs data_dir= (a folder with the MNIST IDX files)")
        return load_mnist(seed=seed, **kwargs)
    raise ValueError(f"unknown problem {name!r}; choose one of {', '.join(PROBLEMS)}")


__all__ = [
    "PROBLEMS", "CDRConfig", "CDRSolver", "Problem", "ResidualBlock", "ResidualBody", "get_problem", "load_cdr",
    "load_digits_problem", "load_mnist", "load_peaks", "peaks", "read_idx",
]
