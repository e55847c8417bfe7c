// The CPU launcher's execution context for the step composition of csrc/slimtik_step.h: one thread
// per problem (SerialCtx) whose hooks call SciPy's BLAS/LAPACK: dsyevd/dsyevr or the Jacobi of
// csrc/slimfast_jacobi.h for the eigenpairs, dgemm/dgemv for the products; below kGemmMinN serial
// loops ordered for the CPU (row axpys; the CUDA block's dot-product loops were slower). Two measured
// wins live here as hook implementations: K̃ = Uᵀ G U from a pivoted Cholesky factor of the batch
// Gram (K̃ = F Fᵀ, and with few targets Q0..Q2 never formed), and the products of a whole set of
// trial points in one dgemm. Included by slimtik_step_cpu.cpp only.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "slimtik_block_step.h"
#include "slimtik_step.h"
#include "slimtik_step_cpu.h"

namespace slimfast {
namespace cpu {

// Up to kJacobiMaxN the Jacobi eigensolver beats dsyevd inside a training loop: in isolation
// dsyevd wins from n ≈ 7 (benchmarks/bench_eigh.py --step, 2-core EPYC), but between a backward
// pass and an optimiser step its deep call chain runs from cold caches, and at n_f = 9 the
// compact Jacobi took the fused step from 4.4 % to 3.3 % of an Adam step (benchmarks/RESULTS.md,
// 2026-12-03); at n_f = 17 it did not pay. Below kGemmMinN the loops of csrc/slimtik_loops.h beat
// the dgemm calls (bench_eigh.py --step, EPYC).
constexpr int kJacobiMaxN = 12;
constexpr int kGemmMinN = 24;
// From this many rows (2 n_t for the projections and the products of B̃, W̃; n_t for W G and the
// update W − Y Uᵀ) the products go to dgemm below kGemmMinN too: their cost then grows with n_t,
// not with the call overhead (n_f = 17, n_t = 72: the loops took ~40 % of the compiled step).
constexpr int kGemmMinRows = 32;
// Full-memory sGCV grids with n_f at least this are evaluated with one dgemm (Q·D for all grid
// points) instead of n_grid matrix-vector passes over Q0..Q2, also below kGemmMinN: at n_f = 17,
// n_t = 72 (cdr) the dgemm took the compiled step from 68 to 62 µs; at n_f = 9 (peaks) neither won
// (18 µs both; benchmarks/RESULTS.md, 2026-12-04).
constexpr int kGridGemmMinN = 16;
// From this n_f a factored K̃ = F Fᵀ may replace Q0..Q2 (with few targets, kFactoredMaxNt).
constexpr int kFactoredMinN = 32;
// Most targets for which sGCV uses a factored K̃ = F Fᵀ instead of forming Q0..Q2 (scratch grows
// with n_t; the factored products only pay when 4 rank·n_t < 3 n_f anyway).
constexpr int kFactoredMaxNt = 16;
// The Jacobi eigensolver's stopping rule inside the step (the CUDA kernel's default).
constexpr double kJacobiTol = 1e-15;
constexpr int kJacobiMaxSweeps = 60;
inline int resolve_eigensolver(int requested, int n) {
  if (requested != EIG_AUTO) return requested;
  return n <= kJacobiMaxN ? EIG_JACOBI : EIG_SYEVD;
}

// A LAPACK workspace size computed in 64 bits, as LAPACK's 32-bit int; std::invalid_argument
// (ValueError) before anything is allocated when it does not fit.
inline int lapack_int(long long size, const char* what, int n) {
  if (size > INT_MAX)
    throw std::invalid_argument(std::string(what) + " of the eigensolver for n_f = " + std::to_string(n) +
                                " exceeds LAPACK's 32-bit workspace size; use a smaller n_f or eigensolver 'jacobi'");
  return (int)size;
}

// The optimum a workspace query returned (a double), never below the documented minimum.
inline long long query_size(double optimum, long long minimum) {
  return optimum > (double)minimum ? (optimum < 9e18 ? (long long)optimum : LLONG_MAX) : minimum;
}

// Workspace sizes (doubles, ints) of the LAPACK eigensolver: the larger of the documented minimum
// and the optimum from a workspace query.
inline void eig_workspace(const Lapack& L, int method, int n, int* lwork, int* liwork) {
  double dummy = 0.0, wq = 0.0;
  int iq = 0, info = 0;
  const int query = -1;
  const long long n64 = n;
  if (method == EIG_SYEVD) {
    const long long min_lwork = 1 + 6 * n64 + 2 * n64 * n64;
    lapack_int(min_lwork, "lwork", n);  // rejected before the query, which could overflow itself
    L.dsyevd("V", "U", &n, &dummy, &n, &dummy, &wq, &query, &iq, &query, &info);
    *lwork = lapack_int(query_size(wq, min_lwork), "lwork", n);
    *liwork = lapack_int(std::max(3 + 5 * n64, (long long)iq), "liwork", n);
  } else if (method == EIG_SYEVR) {
    const double zero = 0.0;
    const int one = 1;
    int found = 0, isuppz[2];
    L.dsyevr("V", "A", "U", &n, &dummy, &n, &zero, &zero, &one, &one, &zero, &found, &dummy, &dummy, &n, isuppz,
             &wq, &query, &iq, &query, &info);
    *lwork = lapack_int(query_size(wq, 26 * n64), "lwork", n);
    *liwork = lapack_int(std::max(10 * n64, (long long)iq) + 2 * n64, "liwork", n);  // + isuppz
  } else {
    *lwork = *liwork = 0;
  }
}

// K = Uᵀ G U [n, n] with two dgemms. Row-major C = A B is column-major Cᵀ = Bᵀ Aᵀ, and Ut read
// column-major is U. T: n*n.
inline void project_gram_blas(const Lapack& L, int n, const double* Ut, const double* G, double* K, double* T) {
  const double one = 1.0, zero = 0.0;
  L.dgemm("T", "N", &n, &n, &n, &one, Ut, &n, G, &n, &zero, T, &n);  // T = G U   (Tᵀ = Uᵀ Gᵀ)
  L.dgemm("N", "N", &n, &n, &n, &one, T, &n, Ut, &n, &zero, K, &n);  // K = Uᵀ T  (Kᵀ = Tᵀ U)
}

// K = Uᵀ G U through a pivoted Cholesky factor of the batch Gram G (PSD): Pᵀ G P = L Lᵀ with L
// [n, r], r = rank G — usually the batch size, far below n_f — so K = F Fᵀ with F = Uᵀ P L costs
// O(n² r) instead of the 2n³ of Uᵀ (G U). LAPACK's default tolerance stops at the numerical rank
// with a residual at rounding level (checked: |G − M Mᵀ| ~ 1e-15·max G_ii, K as accurate as the
// dgemm product). factor_gram returns r and F [n, r] column-major, or −1 when G is not PSD to that
// accuracy (the neglected trailing block of Pᵀ G P − L Lᵀ is then not small): the caller falls
// back to project_gram_blas. Scratch: C, M n*n each, work 2n doubles, piv n ints; F: n*n.
inline int factor_gram(const Lapack& L, int n, const double* Ut, const double* G, double* C, double* M, double* F,
                       double* work, int* piv) {
  int rank = 0, info = 0;
  const double tol = -1.0;  // LAPACK default: n·ε·max G_ii
  std::memcpy(C, G, sizeof(double) * n * n);
  // Column-major, C is Gᵀ: its lower triangle is G's upper one; L_ik = C[k*n + i], i >= k.
  L.dpstrf("L", &n, C, &n, piv, &rank, &tol, work, &info);
  if (info < 0) return -1;
  double max_diag = 0.0;
  for (int i = 0; i < n; ++i) max_diag = std::max(max_diag, G[(long)i * n + i]);
  // Check: trailing block G[p_i, p_j] − (L Lᵀ)_ij, i, j >= rank, against 10× the stopping tolerance.
  const int nr = n - rank;
  if (nr > 0) {
    double* S = F;  // (n − r)², free until F is formed
    for (int j = 0; j < nr; ++j)
      for (int i = 0; i < nr; ++i) S[(long)j * nr + i] = G[(long)(piv[rank + i] - 1) * n + (piv[rank + j] - 1)];
    const double minus_one = -1.0, one = 1.0;
    if (rank > 0) L.dsyrk("L", "N", &nr, &rank, &minus_one, C + rank, &n, &one, S, &nr);
    const double bound = 10.0 * n * 2.220446049250313e-16 * max_diag;
    for (int j = 0; j < nr; ++j)
      for (int i = j; i < nr; ++i)
        if (!(std::fabs(S[(long)j * nr + i]) <= bound)) return -1;
  }
  if (rank == 0) return 0;
  // M = P L [n, r] column-major (zeros above L's diagonal), F = Uᵀ M.
  for (int k = 0; k < rank; ++k)
    for (int i = 0; i < n; ++i) M[(long)k * n + (piv[i] - 1)] = i >= k ? C[(long)k * n + i] : 0.0;
  const double one = 1.0, zero = 0.0;
  L.dgemm("T", "N", &n, &rank, &n, &one, Ut, &n, M, &n, &zero, F, &n);
  return rank;
}

// K = F Fᵀ [n, n] for F [n, r] from factor_gram.
inline void gram_from_factor(const Lapack& L, int n, const double* F, int r, double* K) {
  const double one = 1.0, zero = 0.0;
  if (r == 0) {
    std::memset(K, 0, sizeof(double) * n * n);
  } else if (4 * r <= n) {
    L.dgemm("N", "T", &n, &n, &r, &one, F, &n, F, &n, &zero, K, &n);
  } else {  // half the flops with dsyrk; K is symmetric, so mirror the computed triangle
    L.dsyrk("L", "N", &n, &r, &one, F, &n, &zero, K, &n);
    for (int j = 0; j < n; ++j)
      for (int i = j + 1; i < n; ++i) K[(long)i * n + j] = K[(long)j * n + i];
  }
}


// The CPU's context. Per-thread: its scratch (set by the launcher) and, per problem, the factor of
// K̃ that form_q chose (Fq, r), which q_times_d reads.
struct CpuCtx : SerialCtx {
  const Lapack* L;
  int method;        // Eigensolver, resolved (not EIG_AUTO)
  bool blas;         // n_f >= kGemmMinN: products by BLAS, else the loops of slimtik_loops.h
  bool grid_gemm;    // n_f >= kGridGemmMinN: the products of several trial points in one dgemm
  bool factored_ok;  // a factored K̃ may replace Q0..Q2 (V, Y hold n_f × 2 n_t × npts each)
  double* work;      // LAPACK work, lwork doubles (also dpstrf's 2 n_f)
  int lwork;
  int* iwork;  // LAPACK iwork, liwork ints (also dpstrf's n_f pivots)
  int liwork;
  double *M, *F, *V, *Y;  // n_f² each (M, F: form_q's factor), factored q_times_d scratch
  double* Ucols;          // below kGemmMinN: U [n_f, n_f] (Utᵀ), for the loops' row access
  const double* Fq = nullptr;  // K̃ = Fq Fqᵀ, Fq [n_f, r] column-major, or null when Q0..Q2 are formed
  int r = 0;

  // G_mem = U diag(s) Uᵀ, s ascending, Ut = Uᵀ row-major (LAPACK's column-major output for the
  // row-major matrix: it sees it transposed, its "U" triangle is our lower one, the one
  // torch.linalg.eigh reads). scratch: jacobi_layout(n).total doubles.
  int eigh(int n, const double* A, const double* U0, double* s, double* Ut, double* scratch, double tol,
           int max_sweeps) {
    int info = 0;
    if (method == EIG_JACOBI) {
      const JacobiLayout J = jacobi_layout(n);
      jacobi_eigh(*this, n, A, U0, scratch + J.jac_M, scratch + J.jac_Vt, scratch + J.rot, scratch + J.perm, tol,
                  max_sweeps, s, Ut, true);
    } else if (method == EIG_SYEVD) {
      std::memcpy(Ut, A, sizeof(double) * n * n);
      L->dsyevd("V", "U", &n, Ut, &n, s, work, &lwork, iwork, &liwork, &info);
    } else {
      const double zero = 0.0;
      const int one = 1;
      int found = 0;
      const int liw = liwork - 2 * n;  // the last 2n ints are isuppz
      std::memcpy(scratch, A, sizeof(double) * n * n);
      L->dsyevr("V", "A", "U", &n, scratch, &n, &zero, &zero, &one, &one, &zero, &found, s, Ut, &n, iwork + liw, work,
                &lwork, iwork, &liw, &info);
    }
    return info;
  }

  // Products of order n by BLAS: `blas` set and n >= kGemmMinN (the dense step sets blas by n_f, so
  // the size test only matters to the block step, whose hooks see every block's own n_p).
  bool use_blas(int n) const { return blas && n >= kGemmMinN; }
  // Products of `rows` rows of order n (times_gram, to_eigenbasis, from_eigenbasis, form_q's
  // products): by BLAS as use_blas, or for many rows (kGemmMinRows) whatever n.
  bool use_blas_rows(int rows, int n) const { return use_blas(n) || rows >= kGemmMinRows; }

  // Block step: K = Uᵀ G U [n, n] for one block (T: n² scratch); two dgemms, or below kGemmMinN
  // the block contexts' loops.
  void project_gram(int n, const double* Ut, const double* G, double* K, double* T) {
    if (use_blas(n)) return project_gram_blas(*L, n, Ut, G, K, T);
    loop_project_gram(*this, n, Ut, G, K, T);
  }

  // Block step: out[r, :] = X[r, :] blockdiag(M_p) (csrc/slimtik_block_step.h BlockDims): per
  // block one dgemv/dgemm from n_p >= kGemmMinN (row-major X_p M_p is column-major M_pᵀ X_pᵀ, with
  // the strided leading dimensions), below it row axpys over the block's rows (contiguous and
  // vectorised; the block contexts' loop has one dot product per output element).
  void blockdiag_times(const BlockDims& bd, int rows, const double* X, int ldx, const double* M, int ldm,
                       bool shifted, double* out, int ldo) {
    const double one = 1.0, zero = 0.0;
    const int inc = 1;
    for (int p = 0; p < bd.P; ++p) {
      const int lo = bd.off[p], np = bd.off[p + 1] - lo;
      const double* Mp = M + (long)lo * ldm + (shifted ? lo : 0);
      if (use_blas(np)) {
        if (rows == 1)
          L->dgemv("N", &np, &np, &one, Mp, &ldm, X + lo, &inc, &zero, out + lo, &inc);
        else
          L->dgemm("N", "N", &np, &rows, &np, &one, Mp, &ldm, X + lo, &ldx, &zero, out + lo, &ldo);
        continue;
      }
      for (int r = 0; r < rows; ++r) rows_axpy_ld(np, np, X + (long)r * ldx + lo, Mp, ldm, out + (long)r * ldo + lo);
    }
  }

  // Row-major C = A B is column-major Cᵀ = Bᵀ Aᵀ, hence the swapped operands; Ut read column-major
  // is U. Below kGemmMinN serial loops instead, ordered so the inner loop is an axpy over a
  // contiguous row (the compiler vectorises those; the block loops' dot products it may not,
  // without -ffast-math): measured 3–8 % of the step at n_f = 16, n_t = 1..72.
  void times_gram(int nt, int n, const double* W, const double* G, double* WG) {
    const double one = 1.0, zero = 0.0;
    if (use_blas_rows(nt, n)) return L->dgemm("N", "N", &n, &nt, &n, &one, G, &n, W, &n, &zero, WG, &n);
    for (int t = 0; t < nt; ++t) rows_axpy(n, n, W + (long)t * n, G, nullptr, WG + (long)t * n);
  }

  void to_eigenbasis(int rows, int n, const double* X, const double* Ut, double* out) {
    const double one = 1.0, zero = 0.0;
    if (use_blas_rows(rows, n)) return L->dgemm("T", "N", &n, &rows, &n, &one, Ut, &n, X, &n, &zero, out, &n);
    for (int i = 0; i < n; ++i)  // U = Utᵀ, so that out[r, :] = Σ_i X[r, i] U[i, :]
      for (int j = 0; j < n; ++j) Ucols[(long)i * n + j] = Ut[(long)j * n + i];
    for (int r = 0; r < rows; ++r) rows_axpy(n, n, X + (long)r * n, Ucols, nullptr, out + (long)r * n);
  }

  void from_eigenbasis(int nt, int n, const double* Y, const double* Ut, const double* W, double* W_out) {
    const double one = 1.0, minus_one = -1.0;
    if (use_blas_rows(nt, n)) {
      std::memcpy(W_out, W, sizeof(double) * nt * n);
      return L->dgemm("N", "N", &n, &nt, &n, &minus_one, Ut, &n, Y, &n, &one, W_out, &n);  // Wᵀ − U Yᵀ
    }
    for (int t = 0; t < nt; ++t) rows_axpy(n, n, Y + (long)t * n, Ut, W + (long)t * n, W_out + (long)t * n, -1.0);
  }

  // out [n] = Σ_l x_l M[l, :] for x [k], M [k, n] rows ldm apart.
  static void rows_axpy_ld(int k, int n, const double* x, const double* M, long ldm, double* out) {
    for (int i = 0; i < n; ++i) out[i] = 0.0;
    for (int l = 0; l < k; ++l) {
      const double a = x[l];
      const double* row = M + l * ldm;
      for (int i = 0; i < n; ++i) out[i] += a * row[i];
    }
  }

  // out [n] = base + alpha Σ_l x_l M[l, :] for x [k], M [k, n] row-major (base null: 0).
  static void rows_axpy(int k, int n, const double* x, const double* M, const double* base, double* out,
                        double alpha = 1.0) {
    for (int i = 0; i < n; ++i) out[i] = 0.0;
    for (int l = 0; l < k; ++l) {
      const double a = x[l];
      const double* row = M + (long)l * n;
      for (int i = 0; i < n; ++i) out[i] += a * row[i];
    }
    if (base)
      for (int i = 0; i < n; ++i) out[i] = base[i] + alpha * out[i];
  }

  // Below kGemmMinN: K̃ = Uᵀ (G U) and the products B̃ᵀB̃, B̃ᵀW̃ + W̃ᵀB̃, W̃ᵀW̃ as sums of axpys over
  // rows, then q_from_products (Ucols holds U from to_eigenbasis); with many targets by BLAS.
  void form_q_loops(Projections& p, const double* Ut, const double* G, double* K, double* T) {
    const int nf = p.n_f;
    if (use_blas_rows(2 * p.n_t, nf)) {  // to_eigenbasis took dgemm as well: Ucols was not filled
      project_gram_blas(*L, nf, Ut, G, K, T);
      products_blas(p);
      return q_from_products(p, K);
    }
    for (int i = 0; i < nf; ++i) rows_axpy(nf, nf, G + (long)i * nf, Ucols, nullptr, T + (long)i * nf);  // G U
    for (int i = 0; i < nf; ++i) rows_axpy(nf, nf, Ut + (long)i * nf, T, nullptr, K + (long)i * nf);   // Uᵀ (G U)
    const long nn = (long)nf * nf;
    for (long e = 0; e < nn; ++e) p.Q0[e] = p.Q1[e] = p.Q2[e] = 0.0;
    for (int t = 0; t < p.n_t; ++t) {
      const double* bt = p.Bt + (long)t * nf;
      const double* wt = p.Wt + (long)t * nf;
      for (int i = 0; i < nf; ++i) {
        const double bi = bt[i], wi = wt[i];
        double* q0 = p.Q0 + (long)i * nf;
        double* q1 = p.Q1 + (long)i * nf;
        double* q2 = p.Q2 + (long)i * nf;
        for (int j = 0; j < nf; ++j) {
          q0[j] += bi * bt[j];
          q1[j] += bi * wt[j] + wi * bt[j];
          q2[j] += wi * wt[j];
        }
      }
    }
    q_from_products(p, K);
  }

  // K̃ from factor_gram when G is PSD: with few targets the factor itself (Q0..Q2 never formed;
  // null-space rows of F zeroed as masked_gram, k_j = Σ_k F_jk²), else K̃ = F Fᵀ; K̃ = Uᵀ (G U)
  // when G is not PSD. Then Q0..Q2 by dgemm and q_from_products. K, T: n_f² scratch.
  void form_q(Projections& p, const double* Ut, const double* G, double* K, double* T) {
    Fq = nullptr;
    if (!blas) return form_q_loops(p, Ut, G, K, T);
    const int nf = p.n_f, nt = p.n_t;
    const int rank = factor_gram(*L, nf, Ut, G, T, M, F, work, iwork);
    if (rank > 0 && factored_ok && 4 * rank * nt < 3 * nf) {
      Fq = F;
      r = rank;
      for (int j = 0; j < nf; ++j) {
        if (p.s[j] == 0.0)
          for (int k = 0; k < r; ++k) F[(long)k * nf + j] = 0.0;
        double kj = 0.0;
        for (int k = 0; k < r; ++k) kj += F[(long)k * nf + j] * F[(long)k * nf + j];
        p.k[j] = kj;
      }
      return;
    }
    if (rank >= 0)
      gram_from_factor(*L, nf, F, rank, K);
    else
      project_gram_blas(*L, nf, Ut, G, K, T);
    products_blas(p);
    q_from_products(p, K);
  }

  // Q0 = B̃ᵀB̃, Q1 = B̃ᵀW̃ + W̃ᵀB̃, Q2 = W̃ᵀW̃ [n_f, n_f] by four dgemms (before q_from_products).
  void products_blas(Projections& p) const {
    const int nf = p.n_f, nt = p.n_t;
    const double one = 1.0, zero = 0.0;
    L->dgemm("N", "T", &nf, &nf, &nt, &one, p.Bt, &nf, p.Bt, &nf, &zero, p.Q0, &nf);  // B̃ᵀB̃
    L->dgemm("N", "T", &nf, &nf, &nt, &one, p.Wt, &nf, p.Bt, &nf, &zero, p.Q1, &nf);  // B̃ᵀW̃
    L->dgemm("N", "T", &nf, &nf, &nt, &one, p.Bt, &nf, p.Wt, &nf, &one, p.Q1, &nf);   // + W̃ᵀB̃
    L->dgemm("N", "T", &nf, &nf, &nt, &one, p.Wt, &nf, p.Wt, &nf, &zero, p.Q2, &nf);  // W̃ᵀW̃
  }

  // QD [npts, 3 n_f] for the rows d of D [npts, n_f]. Formed Q's: one dgemv (one point) or dgemm
  // (several) over the stacked [Q0; Q1; Q2] (adjacent in the projection buffer). Factored: with
  // K̃ = F Fᵀ and Q0 = K̃∘B̃ᵀB̃ etc.,
  //   (Q0 d)_i = Σ_t B̃_ti (K̃(B̃_t∘d))_i,  (Q2 d)_i = Σ_t W̃_ti (K̃(W̃_t∘d))_i,
  //   (Q1 d)_i = Σ_t B̃_ti (K̃(W̃_t∘d))_i + W̃_ti (K̃(B̃_t∘d))_i,
  // which costs 4 r n_t n_f per point instead of 3 n_f² (and saves forming Q: 3 n_t n_f² + 3 n_f²).
  void q_times_d(const Projections& p, int npts, const double* D, double* QD) {
    const int nf = p.n_f, nt = p.n_t, nq = 3 * nf, inc = 1;
    const double one = 1.0, zero = 0.0;
    if (Fq == nullptr) {
      if (npts > 1 ? !grid_gemm : !blas) {  // point by point, row by row (as loop_q_times_d)
        for (int g = 0; g < npts; ++g) {
          double* qd = QD + (long)g * nq;
          for (int i = 0; i < nf; ++i) q_row_times_d(p, i, D + (long)g * nf, qd, qd + nf, qd + 2 * nf);
        }
        return;
      }
      if (npts == 1)
        L->dgemv("T", &nf, &nq, &one, p.Q0, &nf, D, &inc, &zero, QD, &inc);
      else
        L->dgemm("T", "N", &nq, &npts, &nf, &one, p.Q0, &nf, D, &nf, &zero, QD, &nq);
      return;
    }
    // Columns 2e, 2e + 1 of V are B̃_t∘d_g and W̃_t∘d_g for the pair e = g n_t + t.
    const int ncols = 2 * nt * npts;
    for (int e = 0; e < npts * nt; ++e) {
      const double* d = D + (long)(e / nt) * nf;
      const double* bt = p.Bt + (long)(e % nt) * nf;
      const double* wt = p.Wt + (long)(e % nt) * nf;
      double* vb = V + (long)(2 * e) * nf;
      double* vw = vb + nf;
      for (int j = 0; j < nf; ++j) {
        vb[j] = bt[j] * d[j];
        vw[j] = wt[j] * d[j];
      }
    }
    L->dgemm("T", "N", &r, &ncols, &nf, &one, Fq, &nf, V, &nf, &zero, Y, &r);  // Y = Fᵀ V
    L->dgemm("N", "N", &nf, &ncols, &r, &one, Fq, &nf, Y, &r, &zero, V, &nf);  // V = F Y = K̃ V
    for (int g = 0; g < npts; ++g) {
      double* q0 = QD + (long)g * nq;
      double* q1 = q0 + nf;
      double* q2 = q1 + nf;
      for (int i = 0; i < nq; ++i) q0[i] = 0.0;
      for (int t = 0; t < nt; ++t) {
        const double* bt = p.Bt + (long)t * nf;
        const double* wt = p.Wt + (long)t * nf;
        const double* kb = V + (long)(2 * (g * nt + t)) * nf;
        const double* kw = kb + nf;
        for (int i = 0; i < nf; ++i) {
          q0[i] += bt[i] * kb[i];
          q1[i] += bt[i] * kw[i] + wt[i] * kb[i];
          q2[i] += wt[i] * kw[i];
        }
      }
    }
  }
};

}  // namespace cpu
}  // namespace slimfast
