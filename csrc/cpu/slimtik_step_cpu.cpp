// CPU launcher: loops over the B problems (OpenMP), factors G_mem with LAPACK, forms the n_f³
// products with dgemm, and leaves the rest to the pieces of csrc/slimfast_math.h. The CUDA kernel
// composes the same pieces differently (block-parallel, its own Jacobi); the tests run that
// composition too, through its host emulation (slimtik_step_emulate.cpp). Twin of
// csrc/cuda/slimtik_step_cuda.cu.
#include "slimtik_step_cpu.h"

#include "cpu_threads.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>


namespace slimfast {
namespace {

// Up to kJacobiMaxN a plain cyclic Jacobi (header) beats dsyevd's call and workspace overhead;
// below kGemmMinN the header's loops beat the dgemm calls (benchmarks/bench_eigh.py --step;
// measured on a 2-core EPYC).
constexpr int kJacobiMaxN = 6;
constexpr int kGemmMinN = 24;
// Full-memory sGCV grids with n_f at least this are evaluated with one dgemm (Q·D for all grid
// points) instead of n_grid matrix-vector passes over Q0..Q2.
constexpr int kGridGemmMinN = 32;
// Most targets for which sGCV uses a factored K̃ = F Fᵀ instead of forming Q0..Q2 (scratch grows
// with n_t; the factored products only pay when 4 rank·n_t < 3 n_f anyway).
constexpr int kFactoredMaxNt = 16;
constexpr double kJacobiTol = 1e-15;
constexpr int kJacobiMaxSweeps = 60;
// Go parallel over problems only when the serial work would take more than ~2 ms: a parallel
// region's fork/join is cheap on an idle machine but can cost a scheduler time slice (ms) when
// the cores are shared, which would make small batches slower than serial.
constexpr double kParallelMinMicros = 2000.0;
// Smallest n_f for which LAPACK/BLAS may use their own threads (serial batch loop, idle machine:
// see usable_threads). Below it OpenBLAS runs single-threaded: its pthreads then never compete with
// torch's OpenMP threads, which spin for a while after every torch op (a step right after
// torch.linalg.eigh took 16 ms instead of 5 with two OpenBLAS threads at n_f = 257).
constexpr int kBlasThreadsMinN = 400;

// Rough serial microseconds of one step problem (fit on a 2-core EPYC: eigensolver + projections
// ~ n³, the sGCV grid ~ n_grid n², fixed overhead).
double step_micros(int n, int n_t, int n_grid) {
  const double n3 = (double)n * n * n, n2 = (double)n * n;
  return 20.0 + 2.5e-3 * n3 + 5e-4 * n_grid * n2 + 1e-3 * n_t * n2;
}

int resolve_eigensolver(int requested, int n) {
  if (requested != EIG_AUTO) return requested;
  return n <= kJacobiMaxN ? EIG_JACOBI : EIG_SYEVD;
}

void transpose(int n, const double* A, double* At) {
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) At[(long)j * n + i] = A[(long)i * n + j];
}

// A LAPACK workspace size computed in 64 bits, as LAPACK's 32-bit int; std::invalid_argument
// (ValueError) before anything is allocated when it does not fit.
int lapack_int(long long size, const char* what, int n) {
  if (size > INT_MAX)
    throw std::invalid_argument(std::string(what) + " of the eigensolver for n_f = " + std::to_string(n) +
                                " exceeds LAPACK's 32-bit workspace size; use a smaller n_f or eigensolver 'jacobi'");
  return (int)size;
}

// The optimum a workspace query returned (a double), never below the documented minimum.
long long query_size(double optimum, long long minimum) {
  return optimum > (double)minimum ? (optimum < 9e18 ? (long long)optimum : LLONG_MAX) : minimum;
}

// Workspace sizes (doubles, ints) of the LAPACK eigensolver: the larger of the documented minimum
// and the optimum from a workspace query.
void eig_workspace(const Lapack& L, int method, int n, int* lwork, int* liwork) {
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

// G_mem = U diag(s) Uᵀ with s ascending. Output Ut = Uᵀ row-major (eigenvectors as rows), which is
// what column-major LAPACK returns for the row-major matrix (it sees it transposed: its "U" triangle
// is our lower one, the one torch.linalg.eigh reads). Read as a column-major matrix, Ut is U, so the
// dgemm calls below use it without a transpose. E: n*n scratch.
int eigh(const Lapack& L, int method, int n, const double* A, double* s, double* Ut, double* E, double* work,
         int lwork, int* iwork, int liwork) {
  int info = 0;
  if (method == EIG_JACOBI) {
    jacobi_eigh(n, A, nullptr, s, E, kJacobiTol, kJacobiMaxSweeps, work);
    transpose(n, E, Ut);
  } else if (method == EIG_SYEVD) {
    std::memcpy(Ut, A, sizeof(double) * n * n);
    L.dsyevd("V", "U", &n, Ut, &n, s, work, &lwork, iwork, &liwork, &info);
  } else {
    const double zero = 0.0;
    const int one = 1;
    int found = 0;
    const int liw = liwork - 2 * n;
    std::memcpy(E, A, sizeof(double) * n * n);
    L.dsyevr("V", "A", "U", &n, E, &n, &zero, &zero, &one, &one, &zero, &found, s, Ut, &n, iwork + liw, work,
             &lwork, iwork, &liw, &info);
  }
  return info;
}

// K = Uᵀ G U [n, n] with two dgemms. Row-major C = A B is column-major Cᵀ = Bᵀ Aᵀ, and Ut read
// column-major is U. T: n*n.
void project_gram_blas(const Lapack& L, int n, const double* Ut, const double* G, double* K, double* T) {
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
int factor_gram(const Lapack& L, int n, const double* Ut, const double* G, double* C, double* M, double* F,
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
void gram_from_factor(const Lapack& L, int n, const double* F, int r, double* K) {
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

// Where the BLAS path gets Q0 d, Q1 d, Q2 d. Formed Q's: one dgemv (one point) or dgemm (a grid)
// over the stacked [Q0; Q1; Q2] (adjacent in the projection buffer). Factored (F non-null): Q is
// never formed; with K̃ = F Fᵀ (rank r, from factor_gram) and Q0 = K̃∘B̃ᵀB̃ etc.,
//   (Q0 d)_i = Σ_t B̃_ti (K̃(B̃_t∘d))_i,  (Q2 d)_i = Σ_t W̃_ti (K̃(W̃_t∘d))_i,
//   (Q1 d)_i = Σ_t B̃_ti (K̃(W̃_t∘d))_i + W̃_ti (K̃(B̃_t∘d))_i,
// which costs 4 r n_t n_f per point instead of 3 n_f² (and saves forming Q: 3 n_t n_f² + 3 n_f²).
struct QdSource {
  const Lapack* L;
  const Projections* p;
  const double* F = nullptr;  // [n_f, r] column-major, or null when the Q's are formed
  int r = 0;
  double* V = nullptr;  // factored scratch: n_f × 2 n_t × points
  double* Y = nullptr;  // factored scratch: r × 2 n_t × points
};

// QD [npts, 3 n_f] (Q0 d | Q1 d | Q2 d per row) for the rows d of D [npts, n_f].
void qd_products(const QdSource& q, int npts, const double* D, double* QD) {
  const Projections& p = *q.p;
  const int nf = p.n_f, nt = p.n_t, nq = 3 * nf, inc = 1;
  const double one = 1.0, zero = 0.0;
  if (q.F == nullptr) {
    if (npts == 1)
      q.L->dgemv("T", &nf, &nq, &one, p.Q0, &nf, D, &inc, &zero, QD, &inc);
    else
      q.L->dgemm("T", "N", &nq, &npts, &nf, &one, p.Q0, &nf, D, &nf, &zero, QD, &nq);
    return;
  }
  // Factored: columns 2e, 2e + 1 of V are B̃_t∘d_g and W̃_t∘d_g for the pair e = g n_t + t.
  const int ncols = 2 * nt * npts;
  for (int e = 0; e < npts * nt; ++e) {
    const double* d = D + (long)(e / nt) * nf;
    const double* bt = p.Bt + (long)(e % nt) * nf;
    const double* wt = p.Wt + (long)(e % nt) * nf;
    double* vb = q.V + (long)(2 * e) * nf;
    double* vw = vb + nf;
    for (int j = 0; j < nf; ++j) {
      vb[j] = bt[j] * d[j];
      vw[j] = wt[j] * d[j];
    }
  }
  q.L->dgemm("T", "N", &q.r, &ncols, &nf, &one, q.F, &nf, q.V, &nf, &zero, q.Y, &q.r);  // Y = Fᵀ V
  q.L->dgemm("N", "N", &nf, &ncols, &q.r, &one, q.F, &nf, q.Y, &q.r, &zero, q.V, &nf);  // V = F Y = K̃ V
  for (int g = 0; g < npts; ++g) {
    double* q0 = QD + (long)g * nq;
    double* q1 = q0 + nf;
    double* q2 = q1 + nf;
    for (int i = 0; i < nq; ++i) q0[i] = 0.0;
    for (int t = 0; t < nt; ++t) {
      const double* bt = p.Bt + (long)t * nf;
      const double* wt = p.Wt + (long)t * nf;
      const double* kb = q.V + (long)(2 * (g * nt + t)) * nf;
      const double* kw = kb + nf;
      for (int i = 0; i < nf; ++i) {
        q0[i] += bt[i] * kb[i];
        q1[i] += bt[i] * kw[i] + wt[i] * kb[i];
        q2[i] += wt[i] * kw[i];
      }
    }
  }
}

// sGCV at μ via qd_products (the header's sgcv_eval when K̃ is diagonal). Leaves d = 1/(s + μ) at
// the front of scratch (sgcv_eval_doubles(n_f)).
SgcvPoint sgcv_eval_blas(const QdSource& q, double mu, double m, double Lambda_prev, double* scratch) {
  const Projections& p = *q.p;
  if (p.diagonal) return sgcv_eval(mu, p, m, Lambda_prev, scratch);  // O(n_f), nothing to gain
  const int nf = p.n_f;
  double* d = scratch;
  double* qd = d + nf;
  shifted_inverse(p, mu, d);
  qd_products(q, 1, d, qd);
  return sgcv_eval_qd(mu, p, m, Lambda_prev, d, qd, qd + nf, qd + 2 * nf);
}

// sgcv_precompute (header) with dgemm for its matrix products: W G, [B̃; W̃] = [W G − H; W] U (B̃ and
// W̃ are adjacent in the projection buffer) and B̃ᵀB̃, B̃ᵀW̃, W̃ᵀW̃; the header's pieces do the rest.
// Row-major C = A B is column-major Cᵀ = Bᵀ Aᵀ, hence the swapped operands. Ut = Uᵀ as from eigh.
// Without form_q (factored K̃) the Q's and k are left to the caller. XW: 2 n_t × n_f.
void sgcv_precompute_blas(const Lapack& L, Projections& p, const double* Ut, double* s, const double* G,
                          const double* H, double c, const double* W, const double* K, bool form_q, double* XW) {
  const int nf = p.n_f, nt = p.n_t, nt2 = 2 * nt;
  const long ntf = (long)nt * nf;
  const double one = 1.0, zero = 0.0;
  p.eig_min = clip_spectrum(nf, s);
  L.dgemm("N", "N", &nf, &nt, &nf, &one, G, &nf, W, &nf, &zero, XW, &nf);  // W G
  p.res0 = residual0(ntf, W, XW, H, c);
  for (long i = 0; i < ntf; ++i) XW[i] -= H[i];
  std::memcpy(XW + ntf, W, sizeof(double) * ntf);
  L.dgemm("T", "N", &nf, &nt2, &nf, &one, Ut, &nf, XW, &nf, &zero, p.Bt, &nf);
  zero_null_columns(p);
  precompute_ab(p);
  if (p.diagonal) {
    for (int j = 0; j < nf; ++j) q_diagonal_at(p, s, j);
    return;
  }
  if (!form_q) return;  // factored K̃ (QdSource): the caller sets k
  L.dgemm("N", "T", &nf, &nf, &nt, &one, p.Bt, &nf, p.Bt, &nf, &zero, p.Q0, &nf);  // B̃ᵀB̃
  L.dgemm("N", "T", &nf, &nf, &nt, &one, p.Wt, &nf, p.Bt, &nf, &zero, p.Q1, &nf);  // B̃ᵀW̃
  L.dgemm("N", "T", &nf, &nf, &nt, &one, p.Bt, &nf, p.Wt, &nf, &one, p.Q1, &nf);   // + W̃ᵀB̃
  L.dgemm("N", "T", &nf, &nf, &nt, &one, p.Wt, &nf, p.Wt, &nf, &zero, p.Q2, &nf);  // W̃ᵀW̃
  q_from_products(p, K);
}

// finish_step (header) with W_new = W − Y Uᵀ as one dgemm. scratch: finish_step_doubles(n_f, n_t).
void finish_step_blas(const QdSource& q, const double* Ut, double mu, double m, double Lambda_prev, double c,
                      const double* W, double* W_out, double* info, double* scratch) {
  const Lapack& L = *q.L;
  const Projections& p = *q.p;
  const int nf = p.n_f, nt = p.n_t;
  const double one = 1.0, minus_one = -1.0;
  const SgcvPoint pt = sgcv_eval_blas(q, mu, m, Lambda_prev, scratch);
  double* Y = scratch + sgcv_eval_doubles(nf);
  update_direction(p, mu - Lambda_prev, scratch, Y);
  std::memcpy(W_out, W, sizeof(double) * nt * nf);
  L.dgemm("N", "N", &nf, &nt, &nf, &minus_one, Ut, &nf, Y, &nf, &one, W_out, &nf);  // (W − Y Uᵀ)ᵀ = Wᵀ − U Yᵀ
  info_row(p, mu, Lambda_prev, pt, c, info);
}

// select_mu (mode SGCV, full memory) with BLAS doing the O(n_f²) work: the products for the whole
// grid at once (qd_products), then the header's bracket and Illinois state machine with one
// qd_products per root iterate. Same arithmetic as select_mu except the summation order inside
// the products.
double select_mu_blas(const QdSource& q, double m, double Lambda_prev, const StepOptions& o, double* scratch) {
  const Projections& p = *q.p;
  const int n = o.n_grid, nf = p.n_f, nq = 3 * nf;
  double mu_lo, mu_hi;
  admissible_interval(Lambda_prev, o, &mu_lo, &mu_hi);
  double* t_grid = scratch;
  double* f_grid = t_grid + n;
  double* g_grid = f_grid + n;
  double* D = g_grid + n;
  double* QD = D + (long)n * nf;
  double* eval_scratch = QD + (long)n * nq;
  for (int i = 0; i < n; ++i) {
    t_grid[i] = grid_t(mu_lo, mu_hi, n, i);
    shifted_inverse(p, exp(t_grid[i]), D + (long)i * nf);
  }
  qd_products(q, n, D, QD);
  for (int i = 0; i < n; ++i) {
    const double* qd = QD + (long)i * nq;
    const SgcvPoint pt = sgcv_eval_qd(exp(t_grid[i]), p, m, Lambda_prev, D + (long)i * nf, qd, qd + nf, qd + 2 * nf);
    f_grid[i] = pt.f;
    g_grid[i] = pt.g;
  }
  const GridBracket br = grid_bracket(t_grid, f_grid, g_grid, n, mu_lo, mu_hi);
  double t_star = br.t_best;
  if (br.bracketed) {
    IllinoisState st = illinois_start(br.t_other, br.t_best, br.g_other, br.g_best);
    for (int it = 0; it < o.max_root_iter; ++it) {
      const double c = illinois_next(st);
      if (illinois_feed(st, sgcv_eval_blas(q, exp(c), m, Lambda_prev, eval_scratch).g, o)) break;
    }
    t_star = st.c;
  }
  return clamp_max(clamp_min(exp(t_star), mu_lo), mu_hi);
}

}  // namespace

int slimtik_step_cpu(const Lapack& L, int B, int n_f, int n_t, const double* G_mem, const double* G, const double* H,
                     const double* c, const double* m, const double* W, const double* Lambda_prev, bool memory_empty,
                     const StepOptions& opts, int eigensolver, const double* s_given, const double* Ut_given,
                     double* W_out, double* info, int* lapack_info) {
  const bool given = s_given != nullptr && Ut_given != nullptr;
  const int method = resolve_eigensolver(eigensolver, n_f);
  int lwork = 0, liwork = 0;
  if (!given) eig_workspace(L, method, n_f, &lwork, &liwork);
  const long nn = (long)n_f * n_f;
  const bool blas = n_f >= kGemmMinN;
  const bool grid_gemm = blas && !memory_empty && n_f >= kGridGemmMinN && opts.mode == SLIMFAST_MODE_SGCV;
  const long select_doubles = std::max(select_mu_doubles(n_f, opts.n_grid) + (grid_gemm ? 4L * opts.n_grid * n_f : 0L),
                                       finish_step_doubles(n_f, n_t));
  // LAPACK work, also dpstrf's 2 n_f and the Jacobi scratch.
  const long jacobi_work = method == EIG_JACOBI && !given ? jacobi_doubles(n_f) : 0L;
  const long work_doubles = std::max<long>({(long)lwork, 2L * n_f, jacobi_work});
  // A factored K̃ (no Q's; see QdSource) needs V, Y for the grid: n_f × 2 n_t × n_grid each.
  const bool factored = grid_gemm && n_t <= kFactoredMaxNt;
  const long factored_doubles = factored ? 2L * n_f * n_t * opts.n_grid : 0L;
  // Per problem: Ut, U, K, T, M, F (n_f² each), s, projections, [X; W] (2 n_t n_f), select/finish
  // scratch, V and Y, LAPACK work.
  const long per_thread = 6 * nn + n_f + projections_doubles(n_f, n_t, memory_empty) + 2L * n_t * n_f +
                          select_doubles + work_doubles + 2 * factored_doubles;
  int failed = 0;  // 1 + first failing problem
  // Parallelism goes over problems; a pthreads OpenBLAS called inside the loop must stay
  // single-threaded (oversubscription, possible hang).
  const bool big = B > 1 && B * step_micros(n_f, n_t, opts.n_grid) >= kParallelMinMicros;
  const int threads = big ? usable_threads(std::min(B, omp_max_threads())) : 1;
  // BLAS runs single-threaded inside the parallel loop and for small matrices (its threads cost
  // more than they save); otherwise with as many threads as the machine's load allows.
  const BlasThreads blas_threads(L, threads > 1 || n_f < kBlasThreadsMinN ? 1 : usable_threads(BlasThreads::current(L)));

  // Every thread's scratch is allocated here, before the parallel region: an exception may not
  // leave an OpenMP region (std::terminate), while here std::bad_alloc reaches Python as
  // MemoryError with nothing written. Uninitialised on purpose: zero-filling megabytes of
  // scratch per call costs ~5% at n_f = 257.
  const long per_thread_ints = std::max(liwork, n_f);  // LAPACK iwork, dpstrf pivots
  std::unique_ptr<double[]> bufs(new double[(size_t)threads * (size_t)per_thread]);
  std::unique_ptr<int[]> ibufs(new int[(size_t)threads * (size_t)per_thread_ints]);

#pragma omp parallel if (threads > 1) num_threads(threads)
  {
    const int thread = threads > 1 ? omp_thread() : 0;
    double* Ut = bufs.get() + (size_t)thread * per_thread;  // eigenvectors as rows (eigh)
    int* iwork = ibufs.get() + (size_t)thread * per_thread_ints;
    double* U = Ut + nn;     // as columns, for the header's loops (small n_f); also eigh's scratch
    double* K = U + nn;
    double* T = K + nn;
    double* M = T + nn;
    double* F = M + nn;
    double* s = F + nn;
    double* proj = s + n_f;
    double* XW = proj + projections_doubles(n_f, n_t, memory_empty);
    double* sel = XW + 2L * n_t * n_f;
    double* V = sel + select_doubles;
    double* Yf = V + factored_doubles;
    double* work = Yf + factored_doubles;
#pragma omp for schedule(dynamic)
    for (int bi = 0; bi < B; ++bi) {
      const long off_g = (long)bi * nn, off_w = (long)bi * n_t * n_f;
      int inf = 0;
      if (given) {
        std::memcpy(s, s_given + (long)bi * n_f, sizeof(double) * n_f);
        std::memcpy(Ut, Ut_given + off_g, sizeof(double) * nn);
      } else {
        inf = eigh(L, method, n_f, G_mem + off_g, s, Ut, U, work, lwork, iwork, liwork);
      }
      if (inf != 0) {
#pragma omp critical
        if (failed == 0 || bi + 1 < failed) {
          failed = bi + 1;
          *lapack_info = inf;
        }
        continue;
      }
      Projections p;
      double* pwork = projections_bind(p, n_f, n_t, memory_empty, proj);
      p.s = s;
      double* info_b = info + (long)bi * SLIMFAST_N_INFO;
      if (blas) {
        p.U = nullptr;  // only the header's loops read U; the dgemm calls take Ut
        QdSource q{&L, &p};
        if (!memory_empty) {
          const int r = factor_gram(L, n_f, Ut, G + off_g, T, M, F, work, iwork);
          if (r > 0 && factored && 4 * r * n_t < 3 * n_f) {
            q.F = F;
            q.r = r;
            q.V = V;
            q.Y = Yf;
          } else if (r >= 0) {
            gram_from_factor(L, n_f, F, r, K);
          } else {
            project_gram_blas(L, n_f, Ut, G + off_g, K, T);
          }
        }
        sgcv_precompute_blas(L, p, Ut, s, G + off_g, H + off_w, c[bi], W + off_w, K, q.F == nullptr, XW);
        if (q.F != nullptr)
          for (int j = 0; j < n_f; ++j) {  // null-space rows of F are 0 (masked_gram); k_j = K̃_jj = Σ_k F_jk²
            if (s[j] == 0.0)
              for (int k = 0; k < q.r; ++k) F[(long)k * n_f + j] = 0.0;
            double kj = 0.0;
            for (int k = 0; k < q.r; ++k) kj += F[(long)k * n_f + j] * F[(long)k * n_f + j];
            p.k[j] = kj;
          }
        const double mu = grid_gemm ? select_mu_blas(q, m[bi], Lambda_prev[bi], opts, sel)
                                    : select_mu(p, m[bi], Lambda_prev[bi], opts, sel);
        finish_step_blas(q, Ut, mu, m[bi], Lambda_prev[bi], c[bi], W + off_w, W_out + off_w, info_b, sel);
      } else {
        transpose(n_f, Ut, U);
        p.U = U;
        if (!memory_empty) project_gram(n_f, U, G + off_g, K, T);
        sgcv_precompute(p, s, G + off_g, H + off_w, c[bi], W + off_w, K, pwork);
        const double mu = select_mu(p, m[bi], Lambda_prev[bi], opts, sel);
        finish_step(p, mu, m[bi], Lambda_prev[bi], c[bi], W + off_w, W_out + off_w, info_b, sel);
      }
    }
  }
  return failed;
}

int jacobi_eigh_cpu(int B, int n, const double* A, const double* U0, double* s, double* U, double tol,
                    int max_sweeps) {
  const long nn = (long)n * n;
  int sweeps = 0;
  // ~8 sweeps of 6n³ flops each per matrix; parallel only above ~2 ms of serial work.
  const int threads = B > 1 && B * 0.015 * (double)n * n * n >= kParallelMinMicros
                          ? usable_threads(std::min(B, omp_max_threads()))
                          : 1;
  // Allocated before the parallel region (see slimtik_step_cpu).
  std::unique_ptr<double[]> scratch(new double[(size_t)threads * (size_t)jacobi_doubles(n)]);
#pragma omp parallel if (threads > 1) num_threads(threads)
  {
    double* mine = scratch.get() + (size_t)(threads > 1 ? omp_thread() : 0) * (size_t)jacobi_doubles(n);
#pragma omp for schedule(dynamic) reduction(max : sweeps)
    for (int bi = 0; bi < B; ++bi) {
      const int k = jacobi_eigh(n, A + bi * nn, U0 ? U0 + bi * nn : nullptr, s + (long)bi * n, U + bi * nn, tol,
                                max_sweeps, mine);
      sweeps = std::max(sweeps, k);
    }
  }
  return sweeps;
}

}  // namespace slimfast
