"""Type stub of the compiled module slimfast._cpu (csrc/cpu/bindings_cpu.cpp).

All arrays are contiguous float64 buffers passed as data pointers (``tensor.data_ptr()``);
shapes are given by the size arguments. Invalid sizes, null pointers or options raise
ValueError naming the argument; a LAPACK failure raises RuntimeError.
"""

MODE_SGCV: int
MODE_CONSTANT: int
MODE_REFERENCE: int
N_INFO: int
#: Eigensolver codes of ``slimtik_step``: "auto", "syevd", "syevr", "jacobi".
EIGENSOLVERS: dict[str, int]
#: Whether the batch loop was compiled with OpenMP.
openmp: bool
#: Whether SciPy's OpenBLAS thread count was found; the step then sets it per call (1 inside its
#: parallel batch loop and below n_f = 400, where LAPACK's own threads do not pay) and restores it.
blas_thread_control: bool

class StepOptions:
    """Validated step options (ValueError at construction otherwise): the one struct every step
    function of both modules takes. Build it from ``SolverConfig.kernel_options()``."""

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

class StepBuffers:
    """The data pointers of one step, checked once at construction (ValueError naming the
    argument): sizes against the kernels' 32-bit limits, required pointers non-null and aligned,
    optional ones (0: absent) aligned, s_in/U_in together, W_out not aliasing W. Build it with
    ``slimfast.backends.boundary.step_buffers``.

    G_mem, G: [B, n_f, n_f]; H, W, W_out: [B, n_t, n_f]; c, m, Lambda_prev: [B];
    info: [B, N_INFO] (slimfast._torch_impl.INFO_FIELDS). Optional: workspace (the block code's
    scratch), U0 [B, n_f, n_f] (Jacobi warm start), U_out [B, n_f, n_f] (receives G_mem's
    eigenvectors), s_in [B, n_f] and U_in [B, n_f, n_f]: G_mem's eigenpairs computed elsewhere
    (s ascending; U_in's eigenvectors are rows, Uᵀ, for ``slimtik_step`` and columns for the
    block code).
    """

    B: int
    n_f: int
    n_t: int
    memory_empty: bool

    def __init__(self, B: int, n_f: int, n_t: int, memory_empty: bool, G_mem_ptr: int, G_ptr: int, H_ptr: int,
                 c_ptr: int, m_ptr: int, W_ptr: int, Lambda_prev_ptr: int, W_out_ptr: int, info_ptr: int,
                 workspace_ptr: int = 0, U0_ptr: int = 0, U_out_ptr: int = 0, s_in_ptr: int = 0,
                 U_in_ptr: int = 0) -> None: ...

def slimtik_step(buffers: StepBuffers, options: StepOptions, eigensolver: int = 0) -> None:
    """One slimTik step for B problems (twin: slimfast._torch_impl._slimtik_step).

    Writes W_out = W − (W G − H + λW)(G_mem + Λ_k I)^{-1} and info rows (λ, Λ_k, sGCV,
    relative residual, cond, eig_min). eigensolver: a value of EIGENSOLVERS (0: auto); s_in/U_in
    of ``buffers``, if given, replace it. Takes no workspace, U0 or U_out (ValueError). The GIL
    is released while computing.
    """

class BlockOffsets:
    """A checked block layout (ValueError naming the problem otherwise): ``offsets`` =
    ``boundary.BlockLayout.offsets()``, P + 1 strictly increasing ints from 0 to n_f − border;
    ``offsets_ptr`` (0: none) the same offsets as int32 in device memory, for the CUDA kernel."""

    border: bool
    n_f: int
    P: int

    def __init__(self, offsets: list[int], border: bool, n_f: int, offsets_ptr: int = 0) -> None: ...

def slimtik_block_step(buffers: StepBuffers, blocks: BlockOffsets, options: StepOptions, eigensolver: int = 0) -> None:
    """One block-structured slimTik step for B problems sharing ``blocks`` (twin:
    slimfast._torch_block._slimtik_block_step): G_mem and G are read on their diagonal blocks and
    the border only. eigensolver: a value of EIGENSOLVERS for the blocks (0: auto, by the largest
    block). Takes no workspace, U0, U_out or s_in/U_in (ValueError); blocks.n_f must be
    buffers.n_f. The GIL is released while computing."""

def sample_side_woodbury_step(
    B: int, N: int, n_b: int, n_t: int, K_ptr: int, A_ptr: int, R0_ptr: int, WM_ptr: int, c_ptr: int, m_ptr: int,
    Lambda_ptr: int, options: StepOptions, X_out_ptr: int, info_ptr: int,
) -> int:
    """Sample-side slimTik step of B wide heads from their kernel matrices, without an
    eigendecomposition (twin: slimfast.sample_side_woodbury._sample_side_woodbury_step).

    Float64, row-major: K [B, N, N] = MᵀM, A [B, N, n_b] = MᵀMz, R0 [B, n_t, n_b] = W Mz − βC,
    WM [B, n_t, N], c, m, Lambda [B]. Writes X [B, n_t, N] (W_k = (Λ_{k−1}/μ)W + X Mᵀ) and info
    [B, N_INFO]. Returns 0, or 1 + the index of a problem where rounding left some K + μI not
    positive definite (its outputs are then not meaningful). ValueError for a bad size
    (1 <= n_b <= N) or a null/misaligned pointer; RuntimeError if LAPACK fails. The GIL is
    released while computing."""

TapAxisArgs = tuple[int, int, int, list[int], list[int], list[int], list[int]]

def conv_head_statistics(
    x_ptr: int, x_dtype: int, n_b: int, C: int, H: int, W: int, y_ptr: int, y_dtype: int, n_t: int, H_out: int,
    W_out: int, axis_h: TapAxisArgs, axis_w: TapAxisArgs, bias: bool, rows: float, beta2: float, G_ptr: int,
    H_ptr: int, c_ptr: int,
) -> float:
    """Lagged statistics of a convolutional head's batch (csrc/cpu/conv_statistics_cpu.h; twin: the
    torch formulation in slimfast.heads / slimfast.conv_statistics).

    x [n_b, C, H, W] contiguous, dtype 0 = float64 or 1 = float32; axes (n, step, out_stride,
    phase, start, count, base) as slimfast.conv_statistics.TapAxis plus the layer's stride.
    Writes G [n_f, n_f] = β² Σ z zᵀ (n_f = C·k_h·k_w + bias; the bias entry is ``rows``) and, with
    y_ptr != 0 (targets [n_b, n_t, H_out, W_out] of a ConvTranspose2d head), H [n_t, n_f] =
    β² Σ y zᵀ and c = β² Σ y². Returns the largest magnitude written, NaN when any value is not
    finite. ValueError for a bad size, dtype or pointer and for an axis that reads past the image
    or feeds outputs past the target. The GIL is released while computing."""

def gather_block_entries(
    G_ptr: int, src_ptr: int, dst_ptr: int, K: int, packed_ptr: int, n_stored: int, batch_ptr: int, G_blk_ptr: int,
    G_mem_blk_ptr: int, H_ptr: int, perm_ptr: int, n_t: int, n_f: int, H_blk_ptr: int, c_ptr: int, c_blk_ptr: int,
) -> None:
    """The phase-block fast path's gathers (csrc/cpu/block_gather_cpu.h; twin:
    slimfast.block_head._gather_block_entries). Float64 G [n_f²], int64 src, dst [K] (indices
    < n_f², not checked), packed [n_stored, K]: batch[k] = G[src[k]], G_blk[dst[k]] = G[src[k]],
    G_mem_blk[dst[k]] = G[src[k]] + Σ_j packed[j, k]; float64 H [n_t, n_f] (contiguous) and int64
    perm [n_f] (a permutation, not checked): H_blk[o, j] = H[o, perm[j]]; c_blk[0] = c[0].
    ValueError for a bad size or a null or misaligned pointer."""

def gather_parameters(weight_ptr: int, bias_ptr: int, dtype: int, n_w: int, n_p: int, src_ptr: int, W_ptr: int) -> float:
    """A phase-block head's parameters into block order (csrc/cpu/block_gather_cpu.h; twin:
    slimfast.block_head._gather_parameters): params = (weight [n_w], bias [n_p − n_w]), contiguous,
    float64 (dtype 0) or float32 (1); W[k] = params[src[k]] as float64, int64 src [n_p] (indices
    < n_p, not checked). Returns max |params|, NaN when any is NaN or ±inf. ValueError for a bad
    dtype or size, or a null or misaligned pointer."""

def scatter_parameters(W_ptr: int, dst_ptr: int, dtype: int, n_w: int, n_p: int, weight_ptr: int, bias_ptr: int) -> bool:
    """The inverse move (twin: slimfast.block_head._scatter_parameters): params[i] = W[dst[i]]
    rounded to dtype into weight and bias, only when every rounded value is finite; returns
    whether they were (False: nothing written). Errors as gather_parameters."""

def jacobi_eigh(
    B: int, n: int, A_ptr: int, U0_ptr: int, s_out_ptr: int, U_out_ptr: int, tol: float, max_sweeps: int
) -> int:
    """Cyclic Jacobi eigendecomposition of B symmetric matrices A [B, n, n] (lower triangle read).

    U0_ptr: 0 for a cold start, else [B, n, n] starting eigenvectors. Writes s [B, n] ascending
    and U [B, n, n] (eigenvectors as columns). Returns the largest number of sweeps used.
    """

# ---- host emulation of the CUDA block code (csrc/cpu/bindings_emulate.cpp; tests/block_emulation.py)

#: Default Jacobi stopping rule of the CUDA step (‖offdiag‖_F <= JACOBI_TOL·‖G_mem‖_F).
JACOBI_TOL: float
JACOBI_MAX_SWEEPS: int

def emulate_workspace_doubles(B: int, n_f: int, n_t: int, n_grid: int, memory_empty: bool) -> int:
    """float64 workspace elements emulate_slimtik_step needs for B problems."""

def emulate_jacobi_workspace_doubles(B: int, n: int) -> int:
    """float64 workspace elements emulate_jacobi_eigh needs for B matrices."""

def emulate_slimtik_step(buffers: StepBuffers, options: StepOptions, jacobi_tol: float = ..., max_sweeps: int = ...,
                         n_threads: int = 128, reverse: bool = False, shared: int = 0) -> None:
    """``slimfast._cuda.slimtik_step``'s block code run serially on the host (host pointers;
    ``buffers`` must hold a workspace of emulate_workspace_doubles elements)."""

def emulate_block_workspace_doubles(B: int, n_f: int, n_t: int, n_grid: int, blocks: BlockOffsets) -> int:
    """float64 elements of the workspace ``emulate_slimtik_block_step`` needs for B problems."""

def emulate_slimtik_block_step(buffers: StepBuffers, blocks: BlockOffsets, options: StepOptions,
                               jacobi_tol: float = ..., max_sweeps: int = ..., n_threads: int = 128,
                               reverse: bool = False, shared: int = 0) -> None:
    """``slimfast._cuda.slimtik_block_step``'s block code run serially on the host (host
    pointers; ``buffers`` must hold a workspace of emulate_block_workspace_doubles elements and no
    U0, U_out or s_in/U_in)."""

def emulate_jacobi_eigh(B: int, n: int, A_ptr: int, U0_ptr: int, s_ptr: int, U_ptr: int, tol: float, max_sweeps: int,
                        workspace_ptr: int, sweeps_ptr: int = 0, n_threads: int = 128, reverse: bool = False,
                        shared: int = 0) -> None:
    """``slimfast._cuda.jacobi_eigh``'s block code run serially on the host (host pointers)."""

def round_robin_schedule(n_pad: int) -> list[list[tuple[int, int]]]:
    """Rounds of disjoint (p, q) pairs of the parallel Jacobi ordering for an even n_pad."""

def jacobi_rotation(app: float, aqq: float, apq: float) -> tuple[float, float, float]:
    """(c, s, t) of the Jacobi rotation zeroing a_pq (slimfast_jacobi.h jacobi_rotation)."""

#: Element-type codes of ``FusedLinearStep`` ("float64", "float32", "bfloat16", "float16").
FUSED_DTYPES: dict[str, int]
#: Fault codes ``FusedLinearStep.step`` returns (0 "ok"; any other: nothing was written).
FUSED_FAULTS: dict[str, int]

class FusedLinearStep:
    """The fused slimTik step of one nn.Linear head layout (csrc/cpu/fused_head_cpu.h; used by
    slimfast/fused_head.py). Strides are in elements; weight/bias dtype code 0 or 1."""

    n_features: int

    def __init__(self, rows: int, n_in: int, n_t: int, bias: bool, mean: bool, memory_depth: int, x_dtype: int,
                 x_row_stride: int, x_col_stride: int, y_dtype: int, y_row_stride: int, y_col_stride: int,
                 w_dtype: int, w_row_stride: int, w_col_stride: int, b_stride: int, max_abs: float,
                 indefinite_rtol: float, options: StepOptions) -> None: ...
    def step(self, x_ptr: int, y_ptr: int, w_ptr: int, b_ptr: int, memory_ptr: int, n_stored: int, slot: int,
             Lambda_ptr: int, w_out_ptr: int, b_out_ptr: int) -> tuple[int] | tuple[int, float, float, float, float,
                                                                                   float, float]:
        """(fault,) with nothing written, or (0, λ_k, Λ_k, sGCV, rel_residual, cond, eig_min) after
        writing W_k to the output buffers and committing the memory slot and Λ_k. The outputs may
        be the head's own contiguous weight and bias (they are read first, written last)."""
    def statistics(self, x_ptr: int, y_ptr: int, G_ptr: int, H_ptr: int, c_ptr: int) -> int:
        """G [n_f, n_f], H [n_t, n_f], c [1] of one batch; 0, or 1 for NaN/Inf in the data."""

def lapack_function(name: str) -> int:
    """Address of the kernels' current ``dsyevd``, ``dgemm``, ``dgemv`` or
    ``mkl_set_num_threads_local`` (0: none). ValueError for any other name."""
    ...

def set_lapack_function(name: str, address: int) -> None:
    """Replace one of those entry points by an LP64 Fortran-interface function at ``address``
    (slimfast/backends/lapack_provider.py checks it first). Not while a step runs. ValueError
    for another name or a zero address (allowed only for ``mkl_set_num_threads_local``)."""
    ...
