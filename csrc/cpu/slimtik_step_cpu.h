// CPU launcher of the slimTik step: LAPACK/BLAS entry points and the batched step.
// Twin of csrc/cuda/slimtik_step_cuda.cu; the per-problem step is csrc/slimtik_step.h.
#pragma once

#include "slimfast_math.h"

namespace slimfast {

// Fortran LAPACK/BLAS signatures (every argument by pointer), as exported by SciPy's
// scipy.linalg.cython_lapack / cython_blas capsules. Taking them from SciPy at import time means
// the extension links no BLAS of its own and uses the one SciPy already loaded.
using dsyevd_t = void (*)(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
                          double* work, const int* lwork, int* iwork, const int* liwork, int* info);
using dsyevr_t = void (*)(const char* jobz, const char* range, const char* uplo, const int* n, double* a,
                          const int* lda, const double* vl, const double* vu, const int* il, const int* iu,
                          const double* abstol, int* m, double* w, double* z, const int* ldz, int* isuppz,
                          double* work, const int* lwork, int* iwork, const int* liwork, int* info);
using dgemm_t = void (*)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                         const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
                         const double* beta, double* c, const int* ldc);
using dpstrf_t = void (*)(const char* uplo, const int* n, double* a, const int* lda, int* piv, int* rank,
                          const double* tol, double* work, int* info);
using dsyrk_t = void (*)(const char* uplo, const char* trans, const int* n, const int* k, const double* alpha,
                         const double* a, const int* lda, const double* beta, double* c, const int* ldc);
using dgemv_t = void (*)(const char* trans, const int* m, const int* n, const double* alpha, const double* a,
                         const int* lda, const double* x, const int* incx, const double* beta, double* y,
                         const int* incy);

// The sample side's tridiagonal route (csrc/cpu/sample_side_cpu.h).
using dsytrd_t = void (*)(const char* uplo, const int* n, double* a, const int* lda, double* d, double* e, double* tau,
                          double* work, const int* lwork, int* info);
using dormtr_t = void (*)(const char* side, const char* uplo, const char* trans, const int* m, const int* n,
                          const double* a, const int* lda, const double* tau, double* c, const int* ldc, double* work,
                          const int* lwork, int* info);
using dstebz_t = void (*)(const char* range, const char* order, const int* n, const double* vl, const double* vu,
                          const int* il, const int* iu, const double* abstol, const double* d, const double* e, int* m,
                          int* nsplit, double* w, int* iblock, int* isplit, double* work, int* iwork, int* info);

struct Lapack {
  dsyevd_t dsyevd = nullptr;
  dsyevr_t dsyevr = nullptr;
  dgemm_t dgemm = nullptr;
  dgemv_t dgemv = nullptr;
  dpstrf_t dpstrf = nullptr;
  dsyrk_t dsyrk = nullptr;
  dsytrd_t dsytrd = nullptr;
  dormtr_t dormtr = nullptr;
  dstebz_t dstebz = nullptr;
  // Thread count of SciPy's OpenBLAS, when it can be found (else null). A pthreads OpenBLAS called
  // from inside an OpenMP loop oversubscribes and may hang, so the batch loop sets it to 1.
  int (*get_threads)() = nullptr;
  void (*set_threads)(int) = nullptr;
  // MKL's per-thread count (mkl_set_num_threads_local: returns the previous one, 0 = the global
  // count), set when dsyevd/dgemm/dgemv are MKL's (slimfast/backends/lapack_provider.py).
  int (*set_threads_local)(int) = nullptr;
};

// Which eigensolver factors G_mem. AUTO picks by n_f (see csrc/cpu/cpu_context.h).
enum Eigensolver { EIG_AUTO = 0, EIG_SYEVD = 1, EIG_SYEVR = 2, EIG_JACOBI = 3 };

// One slimTik step for B independent problems (slimfast._torch_impl._slimtik_step).
//   G_mem, G [B, n_f, n_f]; H, W, W_out [B, n_t, n_f]; c, m, Lambda_prev [B]; info [B, 5].
// s_given [B, n_f], Ut_given [B, n_f, n_f]: the eigendecomposition of G_mem (ascending; eigenvectors
// as ROWS, Ut = Uᵀ, which is LAPACK's column-major output) when the caller already has it, else
// both null and LAPACK computes it.
// Returns 0, or 1 + the index of the first problem whose LAPACK call failed (lapack_info set).
int slimtik_step_cpu(const Lapack& lapack, int B, int n_f, int n_t, const double* G_mem, const double* G,
                     const double* H, const double* c, const double* m, const double* W, const double* Lambda_prev,
                     bool memory_empty, const StepOptions& opts, int eigensolver, const double* s_given,
                     const double* Ut_given, double* W_out, double* info, int* lapack_info);

// Batched Jacobi eigensolver (jacobi_eigh of csrc/slimfast_jacobi.h, the CUDA kernel's Jacobi with
// each round's rotations applied one after another) for B matrices A [B, n, n]; U0 may be
// null (cold start). Writes s [B, n] ascending and U [B, n, n]; returns the largest sweep count.
int jacobi_eigh_cpu(int B, int n, const double* A, const double* U0, double* s, double* U, double tol,
                    int max_sweeps);

}  // namespace slimfast
