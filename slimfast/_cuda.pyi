"""Type stub of the compiled module slimfast._cuda (csrc/cuda/bindings_cuda.cpp).

Device arrays are contiguous float64 CUDA buffers passed as data pointers (``tensor.data_ptr()``),
the stream as an integer (``torch.cuda.current_stream().cuda_stream``), the device as its index.
Launches are asynchronous and never synchronise or allocate: scratch is the caller's workspace.
Invalid sizes, null pointers or options raise ValueError naming the argument; a failed launch
raises RuntimeError. The host emulation of the same block code is in slimfast._cpu
(``emulate_*``), built on every install.
"""

from . import _cpu

#: Default Jacobi stopping rule of the step (‖offdiag‖_F <= JACOBI_TOL·‖G_mem‖_F).
JACOBI_TOL: float
JACOBI_MAX_SWEEPS: int
#: Largest threads per block (``n_threads``: 0 for automatic, else a multiple of 32 up to this).
MAX_THREADS: int
#: ``shared`` codes: AUTO (as much in shared memory as fits), OFF, MATRIX (working matrix only), ON.
SHARED_AUTO: int
SHARED_OFF: int
SHARED_MATRIX: int
SHARED_ON: int
N_INFO: int

class StepOptions(_cpu.StepOptions):
    """This module's own (module-local) class with the fields and validation of
    ``slimfast._cpu.StepOptions`` (csrc/bindings_common.h binds both)."""

class StepBuffers(_cpu.StepBuffers):
    """This module's own class with the checks of ``slimfast._cpu.StepBuffers``; device pointers."""

def workspace_doubles(B: int, n_f: int, n_t: int, n_grid: int, memory_empty: bool) -> int:
    """float64 elements of the workspace ``slimtik_step`` needs for B problems."""

def jacobi_workspace_doubles(B: int, n: int) -> int:
    """float64 elements of the workspace ``jacobi_eigh`` needs for B matrices."""

def slimtik_step(buffers: StepBuffers, options: StepOptions, stream: int = 0, device: int = 0,
                 jacobi_tol: float = ..., max_sweeps: int = ..., n_threads: int = 0, shared: int = -1) -> None:
    """Enqueue one slimTik step for B problems (twin: slimfast._torch_impl._slimtik_step) on
    ``stream``. ``buffers`` must hold a workspace of workspace_doubles(...) elements; its optional
    U0 warm-starts the Jacobi sweeps, U_out receives G_mem's eigenvectors, s_in/U_in (columns)
    replace the sweeps."""

class BlockOffsets(_cpu.BlockOffsets):
    """This module's own class with the checks of ``slimfast._cpu.BlockOffsets``; the kernel
    reads the offsets through ``offsets_ptr`` (required by ``slimtik_block_step``)."""

def block_workspace_doubles(B: int, n_f: int, n_t: int, n_grid: int, blocks: BlockOffsets) -> int:
    """float64 elements of the workspace ``slimtik_block_step`` needs for B problems."""

def slimtik_block_step(buffers: StepBuffers, blocks: BlockOffsets, options: StepOptions, stream: int = 0,
                       device: int = 0, jacobi_tol: float = ..., max_sweeps: int = ..., n_threads: int = 0,
                       shared: int = -1) -> None:
    """Enqueue one block-structured step (twin: slimfast._torch_block._slimtik_block_step) on
    ``stream``, one thread block per problem, each block's eigenpairs by the kernel's Jacobi.
    ``buffers`` must hold a workspace of block_workspace_doubles(...) elements and no U0, U_out
    or s_in/U_in; ``blocks`` must carry offsets_ptr (device int32)."""

def jacobi_eigh(B: int, n: int, A_ptr: int, U0_ptr: int, s_ptr: int, U_ptr: int, tol: float, max_sweeps: int,
                workspace_ptr: int, stream: int = 0, device: int = 0, sweeps_ptr: int = 0, n_threads: int = 0,
                shared: int = -1) -> None:
    """Enqueue the block-parallel Jacobi eigendecomposition of B symmetric n×n matrices (lower
    triangle read): s [B, n] ascending, U [B, n, n] eigenvectors as columns, sweeps [B] int32."""
