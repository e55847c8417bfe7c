"""Type stub of the compiled module slimfast._cuda (csrc/cuda/bindings_cuda.cpp).

Device arrays are contiguous float64 CUDA buffers passed as data pointers (``tensor.data_ptr()``),
the stream as an integer (``torch.cuda.current_stream().cuda_stream``), the device as its index.
Launches are asynchronous and never synchronise or allocate: scratch is the caller's workspace.
Invalid sizes, null pointers or options raise ValueError naming the argument; a failed launch
raises RuntimeError. The host emulation of the same block code is in slimfast._cpu
(``emulate_*``), built on every install.
"""

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

class StepOptions:
    """Validated step options (ValueError at construction otherwise): the one struct both modules'
    step functions take. Build it from ``SolverConfig.kernel_options()``."""

    mode: int
    lambda_const: float
    Lambda_min: float
    Lambda_max: float
    lambda_min: float
    lambda_max: float
    n_grid: int
    root_tol: float
    max_root_iter: int

    def __init__(self, mode: int, lambda_const: float, Lambda_min: float, Lambda_max: float, lambda_min: float,
                 lambda_max: float, n_grid: int, root_tol: float, max_root_iter: int) -> None: ...

def workspace_doubles(B: int, n_f: int, n_t: int, n_grid: int, memory_empty: bool) -> int:
    """float64 elements of the workspace ``slimtik_step`` needs for B problems."""

def jacobi_workspace_doubles(B: int, n: int) -> int:
    """float64 elements of the workspace ``jacobi_eigh`` needs for B matrices."""

def slimtik_step(
    B: int,
    n_f: int,
    n_t: int,
    G_mem_ptr: int,
    G_ptr: int,
    H_ptr: int,
    c_ptr: int,
    m_ptr: int,
    W_ptr: int,
    Lambda_prev_ptr: int,
    memory_empty: bool,
    options: StepOptions,
    W_out_ptr: int,
    info_ptr: int,
    workspace_ptr: int,
    U0_ptr: int = 0,
    U_out_ptr: int = 0,
    stream: int = 0,
    device: int = 0,
    jacobi_tol: float = ...,
    max_sweeps: int = ...,
    n_threads: int = 0,
    shared: int = -1,
    s_in_ptr: int = 0,
    U_in_ptr: int = 0,
) -> None:
    """Enqueue one slimTik step for B problems (twin: slimfast._torch_impl._slimtik_step).

    G_mem, G: [B, n_f, n_f]; H, W, W_out: [B, n_t, n_f]; c, m, Lambda_prev: [B]; info: [B, 5];
    workspace: workspace_doubles(...) elements. Optional: U0 [B, n_f, n_f] warm start of the
    Jacobi sweeps; U_out [B, n_f, n_f] receives G_mem's eigenvectors; s_in [B, n_f] and
    U_in [B, n_f, n_f] (together) are G_mem's eigenpairs computed elsewhere, replacing the sweeps.
    """

def jacobi_eigh(
    B: int,
    n: int,
    A_ptr: int,
    U0_ptr: int,
    s_ptr: int,
    U_ptr: int,
    tol: float,
    max_sweeps: int,
    workspace_ptr: int,
    stream: int = 0,
    device: int = 0,
    sweeps_ptr: int = 0,
    n_threads: int = 0,
    shared: int = -1,
) -> None:
    """Enqueue the block-parallel Jacobi eigendecomposition of B symmetric n×n matrices (lower
    triangle read): s [B, n] ascending, U [B, n, n] eigenvectors as columns, sweeps [B] int32."""
