"""Solver backends and the loader that picks one.

Each backend module exposes ``slimtik_step(G_mem, G, H, c, m, W, Lambda_prev, memory_empty,
config) -> (W_new, info)`` with the semantics of ``slimfast._torch_impl._slimtik_step``, made
from a kernel of one ``StepInputs`` by ``boundary.step_entry`` (the signature is written there
only). A module with ``BLOCK_CODE = True`` (cuda) also takes the warm start and workspace that
the solver keeps in the state.
"""

from .loader import BACKEND_NAMES, backend_info, load_backend, picks_cpp, resolve_backend

__all__ = ["BACKEND_NAMES", "backend_info", "load_backend", "picks_cpp", "resolve_backend"]
