// Leaf functions of one slimTik step (method.md §2–4), shared by every compiled backend: the
// scalar rules (admissible interval, null-space threshold, the sGCV sums and their totals, the
// grid bracket and Illinois steps in slimfast_select.h, the Jacobi rotation and ordering in
// slimfast_jacobi.h). The step itself is composed from them once, in csrc/slimtik_step.h, as a
// template over an execution context: the CPU launcher, the CUDA kernel and its host emulation
// all run that one composition. Names follow the float64 torch twins in slimfast/_torch_impl.py
// (same name plus a leading underscore there), operation by operation (same grid, same bracket
// rule, same Illinois iteration), so backends agree to rounding.
//
// Rules that let nvcc compile this header for the device: functions are `inline SLIMFAST_HD`,
// take raw pointers plus caller-provided scratch, and use no STL, exceptions or allocation.
// All arrays are row-major, contiguous float64. Sizes: n_f features, n_t targets.
#pragma once

#include <float.h>
#include <math.h>

#if defined(__CUDACC__)
#define SLIMFAST_HD __host__ __device__
#define SLIMFAST_BLOCK __device__  // context templates exist only on the device under nvcc
#else
#define SLIMFAST_HD
#define SLIMFAST_BLOCK
#endif

// Mode codes shared with slimfast/config.py MODE_CODES.
inline constexpr int SLIMFAST_MODE_SGCV = 0;
inline constexpr int SLIMFAST_MODE_CONSTANT = 1;
inline constexpr int SLIMFAST_MODE_REFERENCE = 2;
// Columns of the info row: λ_k, Λ_k, sGCV(λ_k), ‖res‖/‖βC‖, cond(G_mem + Λ_k I), and s_min/max|s|
// of G_mem before clipping (slimfast/_torch_impl.py INFO_FIELDS).
inline constexpr int SLIMFAST_N_INFO = 6;
// Trial points per sign of the public reference's λ grid.
inline constexpr int SLIMFAST_N_REFERENCE_POINTS = 30;
inline constexpr double SLIMFAST_FLOAT64_EPS = 2.220446049250313e-16;
// sGCV admissibility (slimfast/config.py SGCV_DENOMINATOR_EPS, method.md §6): a trial μ whose
// denominator D = m − n_t·tr(…) is <= this · m gets f = +inf (never chosen, never a bracket end).
inline constexpr double SLIMFAST_SGCV_DENOMINATOR_EPS = 1e-3;
// Eigenvalues of G_mem <= this · n_f · s_max count as exactly 0, with their columns of B̃ and rows
// and columns of K̃ (config.py SGCV_NULL_RTOL_PER_FEATURE): rounding noise of a rank-deficient G_mem.
inline constexpr double SLIMFAST_NULL_RTOL_PER_FEATURE = SLIMFAST_FLOAT64_EPS;

namespace slimfast {

// ---------------------------------------------------------------------------------------------
// Scalar helpers with torch semantics: torch.minimum/maximum/clamp propagate NaN, std::fmin
// does not, and a NaN that silently became a bound would hide a failure from the caller.
// ---------------------------------------------------------------------------------------------
SLIMFAST_HD inline double nan_min(double a, double b) { return (a != a || a < b) ? a : b; }
SLIMFAST_HD inline double nan_max(double a, double b) { return (a != a || a > b) ? a : b; }
SLIMFAST_HD inline double clamp_min(double x, double lo) { return x < lo ? lo : x; }
SLIMFAST_HD inline double clamp_max(double x, double hi) { return x > hi ? hi : x; }
SLIMFAST_HD inline double slim_inf() { return HUGE_VAL; }
SLIMFAST_HD inline double slim_nan() { return NAN; }

// The work items e = tid, tid + nthr, ... < rows·cols of one thread, as f(r, c, e) with
// e = r·cols + c, stepped without a division per item (64-bit division is slow on a GPU and
// shows in the CPU's small steps).
template <class F>
SLIMFAST_HD inline void for_items(int tid, int nthr, int rows, int cols, F&& f) {
  int r = tid / cols, c = tid % cols;
  const int dr = nthr / cols, dc = nthr % cols;
  while (r < rows) {
    f(r, c, (long)r * cols + c);
    c += dc;
    r += dr;
    if (c >= cols) {
      c -= cols;
      ++r;
    }
  }
}

// Element i of torch.linspace(start, end, n): the first half counts up from start, the second
// half down from end (ATen's linspace kernel), so both endpoints are exact.
SLIMFAST_HD inline double linspace_at(double start, double end, int n, int i) {
  const double step = (end - start) / (n - 1);
  return i < n / 2 ? start + step * i : end - step * (n - 1 - i);
}

// ---------------------------------------------------------------------------------------------
// Options (slimfast.config.SolverConfig) and the projected statistics (_Projections).
// ---------------------------------------------------------------------------------------------
struct StepOptions {
  int mode;             // SLIMFAST_MODE_*
  double lambda_const;  // λ for mode CONSTANT
  double Lambda_min, Lambda_max;  // bounds on Λ_k (finite, 0 < min <= max)
  double lambda_min, lambda_max;  // bounds on λ_k (min may be -inf, max may be +inf)
  int n_grid;           // log-grid points for mode SGCV (>= 2)
  double root_tol;      // Illinois termination, relative in t = log μ
  int max_root_iter;
};

// Everything sGCV needs after G_mem = U diag(s) Uᵀ. With `diagonal` (memory empty, K̃ = diag(s))
// Q0..Q2 are length n_f, otherwise n_f × n_f.
struct Projections {
  int n_f, n_t;
  bool diagonal;
  const double* s;  // [n_f] eigenvalues, clipped at 0, ascending
  double* Bt;       // [n_t, n_f] B̃ = (W G − H) U
  double* Wt;       // [n_t, n_f] W̃ = W U
  double* a;        // [n_f] (B̃ᵀB̃)_jj
  double* b;        // [n_f] (B̃ᵀW̃)_jj
  double* k;        // [n_f] K̃_jj, K̃ = Uᵀ G U
  double* Q0;       // K̃∘B̃ᵀB̃
  double* Q1;       // K̃∘(B̃ᵀW̃ + W̃ᵀB̃)
  double* Q2;       // K̃∘W̃ᵀW̃
  double res0;      // ‖β(W Z − C)‖² = tr(W G Wᵀ) − 2 tr(W Hᵀ) + c
  double eig_min;   // s_min / max|s| of G_mem before clip_spectrum (0 when G_mem = 0)
};

// _eig_min of the raw ascending spectrum s [n].
SLIMFAST_HD inline double eig_min_ratio(double s_first, double s_last) {
  const double scale = s_last > -s_first ? s_last : -s_first;
  return scale > 0 ? s_first / scale : 0.0;
}

// Threshold below which an eigenvalue (clipped at 0) of G_mem counts as 0 (_null_space).
SLIMFAST_HD inline double null_threshold(int n, double s_last) {
  return SLIMFAST_NULL_RTOL_PER_FEATURE * n * clamp_min(s_last, 0.0);
}

// Eigenvalue j after clipping: 0 when negative or at most `thr` (null_threshold), else s_j. After
// this, "s_j == 0" is the null-space mask that zeroes B̃'s column j and K̃'s row/column j.
SLIMFAST_HD inline double clipped_eigenvalue(double s_j, double thr) { return s_j <= thr ? 0.0 : s_j; }

// Doubles needed by projections_bind (outputs of sgcv_precompute plus its 2 n_t × n_f work array).
SLIMFAST_HD inline long projections_doubles(int n_f, int n_t, bool diagonal) {
  const long q = diagonal ? (long)n_f : (long)n_f * n_f;
  return 4L * n_t * n_f + 3L * n_f + 3L * q;
}

// Point p's output arrays into buf (projections_doubles long); returns the work array for
// sgcv_precompute (2 n_t × n_f: [W G − H; W], then the update direction of finish_step).
SLIMFAST_HD inline double* projections_bind(Projections& p, int n_f, int n_t, bool diagonal, double* buf) {
  const long q = diagonal ? (long)n_f : (long)n_f * n_f;
  p.n_f = n_f;
  p.n_t = n_t;
  p.diagonal = diagonal;
  p.Bt = buf;
  p.Wt = p.Bt + (long)n_t * n_f;
  p.a = p.Wt + (long)n_t * n_f;
  p.b = p.a + n_f;
  p.k = p.b + n_f;
  p.Q0 = p.k + n_f;
  p.Q1 = p.Q0 + q;
  p.Q2 = p.Q1 + q;
  return p.Q2 + q;
}

// ---------------------------------------------------------------------------------------------
// _admissible_interval: μ = Λ_{k−1} + λ ∈ [max(Λ_min, Λ_{k−1}+λ_min), min(Λ_max, Λ_{k−1}+λ_max)].
// ---------------------------------------------------------------------------------------------
SLIMFAST_HD inline void admissible_interval(double Lambda_prev, const StepOptions& o, double* mu_lo, double* mu_hi) {
  *mu_lo = isfinite(o.lambda_min) ? clamp_min(Lambda_prev + o.lambda_min, o.Lambda_min) : o.Lambda_min;
  *mu_hi = clamp_max(Lambda_prev + o.lambda_max, o.Lambda_max);
}

// Mode CONSTANT of select_mu: Λ_{k−1} + λ_const clipped into [μ_lo, μ_hi].
SLIMFAST_HD inline double constant_mu(double Lambda_prev, double mu_lo, double mu_hi, const StepOptions& o) {
  return nan_min(nan_max(Lambda_prev + o.lambda_const, mu_lo), mu_hi);
}

// sgcv_precompute's per-column pieces (the composition is csrc/slimtik_step.h):
//   q_diagonal_at:    K̃ = diag(s): k_j = s_j, Q0_j = s_j a_j, Q1_j = 2 s_j b_j, Q2_j = s_j (W̃ᵀW̃)_jj
//   q_from_products:  Q0 = K̃∘B̃ᵀB̃, Q1 = K̃∘(B̃ᵀW̃ + W̃ᵀB̃), Q2 = K̃∘W̃ᵀW̃, k = diag(K̃), given the products
SLIMFAST_HD inline void q_diagonal_at(Projections& p, const double* s, int j) {
  double cw = 0.0;
  for (int t = 0; t < p.n_t; ++t) cw += p.Wt[(long)t * p.n_f + j] * p.Wt[(long)t * p.n_f + j];
  p.k[j] = s[j];
  p.Q0[j] = s[j] * p.a[j];
  p.Q1[j] = 2.0 * s[j] * p.b[j];
  p.Q2[j] = s[j] * cw;
}

// On entry Q0 = B̃ᵀB̃, Q1 = B̃ᵀW̃ + W̃ᵀB̃, Q2 = W̃ᵀW̃; on return multiplied by K̃ elementwise, and k = diag(K̃).
// K̃'s rows and columns of the null space (s_i == 0 or s_j == 0) count as 0.
SLIMFAST_HD inline double masked_gram(const Projections& p, const double* K, int i, int j) {
  return p.s[i] == 0.0 || p.s[j] == 0.0 ? 0.0 : K[(long)i * p.n_f + j];
}

SLIMFAST_HD inline void q_from_products(Projections& p, const double* K) {
  const int nf = p.n_f;
  for (int i = 0; i < nf; ++i)
    for (int j = 0; j < nf; ++j) {
      const long e = (long)i * nf + j;
      const double k = masked_gram(p, K, i, j);
      p.Q0[e] *= k;
      p.Q1[e] *= k;
      p.Q2[e] *= k;
    }
  for (int i = 0; i < nf; ++i) p.k[i] = masked_gram(p, K, i, i);
}

// ---------------------------------------------------------------------------------------------
// _sgcv_eval at one μ (method.md §3–4), λ = μ − Λ_{k−1}, d = 1/(s + μ):
//   R  = res0 − 2 Σ_j d_j (a_j + λ b_j) + dᵀ(Q0 + λQ1 + λ²Q2)d
//   R' = 2 Σ d²(a + λb) − 2 Σ d b − 2 Σ d²∘(Q(λ)d) + Σ d∘((Q1 + 2λQ2)d)
//   D  = m − n_t Σ k d,  D' = n_t Σ k d²,  g = R' D − 2 R D'  (sign of dsGCV/dμ when D > 0)
//   f  = m max(R, 0) / D², torch.nan_to_num(nan=inf): NaN → +inf, ±inf → ±DBL_MAX; then f = +inf
//        where μ is inadmissible, D <= SLIMFAST_SGCV_DENOMINATOR_EPS·m (method.md §6)
// ---------------------------------------------------------------------------------------------
struct SgcvPoint {
  double f, R, g;
};

SLIMFAST_HD inline double nan_to_num_inf(double f) {
  if (f != f) return slim_inf();
  if (f == slim_inf()) return DBL_MAX;
  if (f == -slim_inf()) return -DBL_MAX;
  return f;
}

// The eight sums of sgcv_eval_qd, split so a block can reduce them: index j's terms are added to
// acc = {Σ d(a+λb), Σ d·q_λd, Σ d²(a+λb), Σ d·b, Σ d²·q_λd, Σ d·q_der d, Σ k·d, Σ k·d²}, and
// sgcv_from_sums turns the totals into (f, R, g) exactly as sgcv_eval_qd does.
inline constexpr int SLIMFAST_SGCV_NSUMS = 8;

SLIMFAST_HD inline void sgcv_accumulate(const Projections& p, double lam, int j, double dj, double Q0dj, double Q1dj,
                                        double Q2dj, double* acc) {
  const double dj2 = dj * dj;
  double q_lam_d, q_der_d;
  if (p.diagonal) {
    q_lam_d = (p.Q0[j] + lam * (p.Q1[j] + lam * p.Q2[j])) * dj;
    q_der_d = (p.Q1[j] + 2.0 * lam * p.Q2[j]) * dj;
  } else {
    q_lam_d = Q0dj + lam * (Q1dj + lam * Q2dj);
    q_der_d = Q1dj + 2.0 * lam * Q2dj;
  }
  const double ab = p.a[j] + lam * p.b[j];
  acc[0] += dj * ab;
  acc[1] += dj * q_lam_d;
  acc[2] += dj2 * ab;
  acc[3] += dj * p.b[j];
  acc[4] += dj2 * q_lam_d;
  acc[5] += dj * q_der_d;
  acc[6] += p.k[j] * dj;
  acc[7] += p.k[j] * dj2;
}

// (f, R, g) from R(μ), R'(μ) and the denominator D = m − n_t T(μ) with D' = −n_t T'(μ): the
// dense step's sums and the block step's terms (csrc/slimtik_block_step.h) both end here.
SLIMFAST_HD inline SgcvPoint sgcv_point(double R, double R_der, double D, double D_der, double m) {
  SgcvPoint out;
  out.R = R;
  out.g = R_der * D - 2.0 * R * D_der;
  out.f = D > SLIMFAST_SGCV_DENOMINATOR_EPS * m ? nan_to_num_inf(m * clamp_min(R, 0.0) / (D * D)) : slim_inf();
  return out;
}

SLIMFAST_HD inline SgcvPoint sgcv_from_sums(const Projections& p, double m, const double* acc) {
  const double R = p.res0 - 2.0 * acc[0] + acc[1];
  const double R_der = 2.0 * acc[2] - 2.0 * acc[3] - 2.0 * acc[4] + acc[5];
  return sgcv_point(R, R_der, m - p.n_t * acc[6], p.n_t * acc[7], m);
}

// The evaluation given d [n_f] and, when !p.diagonal, the products Q0 d, Q1 d, Q2 d [n_f] (formed
// for a whole set of trial points at once by the context's q_times_d hook).
SLIMFAST_HD inline SgcvPoint sgcv_eval_qd(double mu, const Projections& p, double m, double Lambda_prev,
                                          const double* d, const double* Q0d, const double* Q1d,
                                          const double* Q2d) {
  const double lam = mu - Lambda_prev;
  double acc[SLIMFAST_SGCV_NSUMS] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  for (int j = 0; j < p.n_f; ++j) {
    if (p.diagonal)
      sgcv_accumulate(p, lam, j, d[j], 0.0, 0.0, 0.0, acc);
    else
      sgcv_accumulate(p, lam, j, d[j], Q0d[j], Q1d[j], Q2d[j], acc);
  }
  return sgcv_from_sums(p, m, acc);
}

// Row i of (Q d) = Σ_j Q_ij d_j for Q0, Q1, Q2 in one pass (a work item of the loop q_times_d).
SLIMFAST_HD inline void q_row_times_d(const Projections& p, int i, const double* d, double* Q0d, double* Q1d,
                                      double* Q2d) {
  const int nf = p.n_f;
  const double* q0 = p.Q0 + (long)i * nf;
  const double* q1 = p.Q1 + (long)i * nf;
  const double* q2 = p.Q2 + (long)i * nf;
  double x0 = 0.0, x1 = 0.0, x2 = 0.0;
  for (int j = 0; j < nf; ++j) {
    x0 += q0[j] * d[j];
    x1 += q1[j] * d[j];
    x2 += q2[j] * d[j];
  }
  Q0d[i] = x0;
  Q1d[i] = x1;
  Q2d[i] = x2;
}

}  // namespace slimfast

// λ selection and the info row, and the Jacobi eigensolver, in their own headers.
#include "slimfast_select.h"
#include "slimfast_jacobi.h"
