// Per-problem mathematics of one slimTik step (method.md §2–4), shared by the CPU and CUDA
// launchers. The top-level functions (admissible_interval, sgcv_precompute, sgcv_eval,
// reference_candidate, illinois_root, select_mu, jacobi_eigh) are twins of the functions in
// slimfast/_torch_impl.py with the same name plus a leading underscore, and follow them operation
// by operation (same grid, same bracket rule, same Illinois iteration), so backends agree to
// rounding. finish_step is the end of _slimtik_step.
//
// The serial functions are composed of smaller pieces (a Jacobi rotation, the sGCV sums, the grid
// bracket, an Illinois step) that the block-parallel CUDA launcher (csrc/cuda/slimtik_step_cuda.cuh)
// calls directly, so the CPU runs the very arithmetic of the GPU.
//
// Rules that let nvcc compile this header for the device: functions are `inline SLIMFAST_HD`,
// take raw pointers plus caller-provided scratch, and use no STL, exceptions or allocation.
// All arrays are row-major, contiguous float64. Sizes: n_f features, n_t targets.
#pragma once

#include <float.h>
#include <math.h>

#if defined(__CUDACC__)
#define SLIMFAST_HD __host__ __device__
#else
#define SLIMFAST_HD
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
  const double* U;  // [n_f, n_f] eigenvectors as columns: U[i*n_f + j] = component i of vector j
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

// Clip s [n] (ascending) in place; returns eig_min_ratio of the raw values.
SLIMFAST_HD inline double clip_spectrum(int n, double* s) {
  const double ratio = eig_min_ratio(s[0], s[n - 1]);
  const double thr = null_threshold(n, s[n - 1]);
  for (int j = 0; j < n; ++j) s[j] = clipped_eigenvalue(s[j], thr);
  return ratio;
}

// Zero the null-space columns of B̃ (s_j == 0 after clip_spectrum).
SLIMFAST_HD inline void zero_null_columns(Projections& p) {
  for (int j = 0; j < p.n_f; ++j)
    if (p.s[j] == 0.0)
      for (int t = 0; t < p.n_t; ++t) p.Bt[(long)t * p.n_f + j] = 0.0;
}

// Doubles needed by projections_bind (outputs of sgcv_precompute plus its n_t×n_f work array).
SLIMFAST_HD inline long projections_doubles(int n_f, int n_t, bool diagonal) {
  const long q = diagonal ? (long)n_f : (long)n_f * n_f;
  return 3L * n_t * n_f + 3L * n_f + 3L * q;
}

// Point p's output arrays into buf (projections_doubles long); returns the work array for
// sgcv_precompute (n_t × n_f).
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

// K = Uᵀ G U [n, n] by plain loops (the CPU launcher uses BLAS for n_f >= 24). work: n*n.
SLIMFAST_HD inline void project_gram(int n, const double* U, const double* G, double* K, double* work) {
  // work = G U, row by row as axpys so the inner loop is contiguous.
  for (long i = 0; i < (long)n * n; ++i) work[i] = 0.0;
  for (int i = 0; i < n; ++i)
    for (int l = 0; l < n; ++l) {
      const double g = G[(long)i * n + l];
      const double* u = U + (long)l * n;
      double* w = work + (long)i * n;
      for (int j = 0; j < n; ++j) w[j] += g * u[j];
    }
  // K = Uᵀ work: K[i, :] = Σ_l U[l, i] work[l, :].
  for (long i = 0; i < (long)n * n; ++i) K[i] = 0.0;
  for (int l = 0; l < n; ++l)
    for (int i = 0; i < n; ++i) {
      const double u = U[(long)l * n + i];
      const double* w = work + (long)l * n;
      double* kr = K + (long)i * n;
      for (int j = 0; j < n; ++j) kr[j] += u * w[j];
    }
}

// ---------------------------------------------------------------------------------------------
// _sgcv_precompute after the eigendecomposition (method.md §4), as pieces a launcher can combine
// with its own matrix products (the CPU uses dgemm for W G, [B̃; W̃] and B̃ᵀB̃, B̃ᵀW̃, W̃ᵀW̃):
//   res0            = Σ (W G)∘W − 2 Σ W∘H + c
//   precompute_ab:    a_j = Σ_t B̃_tj², b_j = Σ_t B̃_tj W̃_tj
//   q_diagonal_at:    K̃ = diag(s): k_j = s_j, Q0_j = s_j a_j, Q1_j = 2 s_j b_j, Q2_j = s_j (W̃ᵀW̃)_jj
//   q_from_products:  Q0 = K̃∘B̃ᵀB̃, Q1 = K̃∘(B̃ᵀW̃ + W̃ᵀB̃), Q2 = K̃∘W̃ᵀW̃, k = diag(K̃), given the products
// ---------------------------------------------------------------------------------------------
SLIMFAST_HD inline double residual0(long ntf, const double* W, const double* WG, const double* H, double c) {
  double s_wgw = 0.0, s_wh = 0.0;
  for (long i = 0; i < ntf; ++i) {
    s_wgw += WG[i] * W[i];
    s_wh += W[i] * H[i];
  }
  return s_wgw - 2.0 * s_wh + c;
}

SLIMFAST_HD inline void precompute_ab(Projections& p) {
  const int nf = p.n_f;
  for (int j = 0; j < nf; ++j) p.a[j] = p.b[j] = 0.0;
  for (int t = 0; t < p.n_t; ++t)
    for (int j = 0; j < nf; ++j) {
      const double bt = p.Bt[(long)t * nf + j];
      p.a[j] += bt * bt;
      p.b[j] += bt * p.Wt[(long)t * nf + j];
    }
}

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

// The whole of _sgcv_precompute with plain loops. p must be bound (projections_bind) with
// p.U = U and p.s = s. s [n_f] is clipped in place (clip_spectrum: G_mem is PSD, rounding is not).
// K = Uᵀ G U [n_f, n_f] is read only when !p.diagonal. work: n_t × n_f.
SLIMFAST_HD inline void sgcv_precompute(Projections& p, double* s, const double* G, const double* H, double c,
                                        const double* W, const double* K, double* work) {
  const int nf = p.n_f, nt = p.n_t;
  const long ntf = (long)nt * nf;
  const double* U = p.U;
  p.eig_min = clip_spectrum(nf, s);
  double* WG = work;  // W G, then W G − H
  for (long i = 0; i < ntf; ++i) WG[i] = 0.0;
  for (int t = 0; t < nt; ++t)
    for (int l = 0; l < nf; ++l) {
      const double w = W[(long)t * nf + l];
      const double* g = G + (long)l * nf;
      double* o = WG + (long)t * nf;
      for (int i = 0; i < nf; ++i) o[i] += w * g[i];
    }
  p.res0 = residual0(ntf, W, WG, H, c);
  // B̃ = (W G − H) U and W̃ = W U.
  for (long i = 0; i < ntf; ++i) {
    WG[i] -= H[i];
    p.Bt[i] = 0.0;
    p.Wt[i] = 0.0;
  }
  for (int t = 0; t < nt; ++t)
    for (int i = 0; i < nf; ++i) {
      const double x = WG[(long)t * nf + i], w = W[(long)t * nf + i];
      const double* u = U + (long)i * nf;
      double* bt = p.Bt + (long)t * nf;
      double* wt = p.Wt + (long)t * nf;
      for (int j = 0; j < nf; ++j) {
        bt[j] += x * u[j];
        wt[j] += w * u[j];
      }
    }
  zero_null_columns(p);
  precompute_ab(p);
  if (p.diagonal) {
    for (int j = 0; j < nf; ++j) q_diagonal_at(p, s, j);
    return;
  }
  // Products row by row (B̃ᵀB̃, B̃ᵀW̃ + W̃ᵀB̃, W̃ᵀW̃), accumulated over t as axpys.
  for (long e = 0; e < (long)nf * nf; ++e) p.Q0[e] = p.Q1[e] = p.Q2[e] = 0.0;
  for (int t = 0; t < nt; ++t) {
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

SLIMFAST_HD inline SgcvPoint sgcv_from_sums(const Projections& p, double m, const double* acc) {
  SgcvPoint out;
  out.R = p.res0 - 2.0 * acc[0] + acc[1];
  const double R_der = 2.0 * acc[2] - 2.0 * acc[3] - 2.0 * acc[4] + acc[5];
  const double D = m - p.n_t * acc[6];
  const double D_der = p.n_t * acc[7];
  out.g = R_der * D - 2.0 * out.R * D_der;
  out.f = D > SLIMFAST_SGCV_DENOMINATOR_EPS * m ? nan_to_num_inf(m * clamp_min(out.R, 0.0) / (D * D)) : slim_inf();
  return out;
}

// The evaluation given d [n_f] and, when !p.diagonal, the products Q0 d, Q1 d, Q2 d [n_f] (the
// CPU launcher forms those for a whole grid with one dgemm).
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

// d = 1/(s + μ) into d [n_f].
SLIMFAST_HD inline void shifted_inverse(const Projections& p, double mu, double* d) {
  for (int j = 0; j < p.n_f; ++j) d[j] = 1.0 / (p.s[j] + mu);
}

// Row i of (Q d) = Σ_j Q_ij d_j for Q0, Q1, Q2 in one pass; the CUDA kernel splits rows over threads.
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

// (Q d)_i = Σ_j Q_ij d_j for Q0, Q1, Q2, every row.
SLIMFAST_HD inline void q_times_d(const Projections& p, const double* d, double* Q0d, double* Q1d, double* Q2d) {
  for (int i = 0; i < p.n_f; ++i) q_row_times_d(p, i, d, Q0d, Q1d, Q2d);
}

// _sgcv_eval at one μ. scratch: sgcv_eval_doubles(n_f).
SLIMFAST_HD inline long sgcv_eval_doubles(int n_f) { return 4L * n_f; }
SLIMFAST_HD inline SgcvPoint sgcv_eval(double mu, const Projections& p, double m, double Lambda_prev, double* scratch) {
  double* d = scratch;
  double* Q0d = d + p.n_f;
  double* Q1d = Q0d + p.n_f;
  double* Q2d = Q1d + p.n_f;
  shifted_inverse(p, mu, d);
  if (!p.diagonal) q_times_d(p, d, Q0d, Q1d, Q2d);
  return sgcv_eval_qd(mu, p, m, Lambda_prev, d, Q0d, Q1d, Q2d);
}

// ---------------------------------------------------------------------------------------------
// _reference_candidates, element i of 60: 30 negative λ then 30 positive, NaN when dropped.
// ---------------------------------------------------------------------------------------------
SLIMFAST_HD inline double reference_candidate(int i, double Lambda_prev, const StepOptions& o) {
  const int n = SLIMFAST_N_REFERENCE_POINTS;
  const double log_eps = log10(SLIMFAST_FLOAT64_EPS);
  if (i >= n) {  // torch.logspace(log10 eps, log10 λ_max, n): 10^linspace
    const double lmax = isfinite(o.lambda_max) ? o.lambda_max : o.Lambda_max;
    return pow(10.0, linspace_at(log_eps, log10(lmax), n, i - n));
  }
  const double n_low = Lambda_prev / 2.0 - o.Lambda_min;
  if (!(n_low > 0)) return slim_nan();
  const double log_low = log10(clamp_min(n_low, SLIMFAST_FLOAT64_EPS));
  return -pow(10.0, log_low + (log_eps - log_low) * linspace_at(0.0, 1.0, n, i));
}

// Mode REFERENCE of select_mu given the 60 candidates μ_i = Λ_{k−1} + reference_candidate(i) and
// their sGCV values f_i (+inf where μ_i is not admissible): first minimiser, or Λ_{k−1} clipped
// into [μ_lo, μ_hi] when no value is finite.
SLIMFAST_HD inline double reference_pick(const double* mu, const double* f, double Lambda_prev, double mu_lo,
                                         double mu_hi) {
  double best_f = slim_inf(), best_mu = slim_nan();
  bool any_finite = false;
  for (int i = 0; i < 2 * SLIMFAST_N_REFERENCE_POINTS; ++i) {
    if (i == 0 || f[i] < best_f) {
      best_f = f[i];
      best_mu = mu[i];
    }
    any_finite = any_finite || isfinite(f[i]);
  }
  return any_finite ? best_mu : nan_min(nan_max(Lambda_prev, mu_lo), mu_hi);
}

// ---------------------------------------------------------------------------------------------
// _illinois_root for one problem: root of g(t) = sgcv_eval(exp t).g on [ta, tb], g(ta), g(tb)
// of opposite signs. Stops when g(c) == 0 or |c − c_prev| <= tol·max(|c|, 1).
// Written as a state machine so that a block can evaluate g(c) in parallel between steps:
//   IllinoisState st = illinois_start(ta, tb, ga, gb);
//   for (int it = 0; it < o.max_root_iter; ++it) {
//     const double c = illinois_next(st);
//     if (illinois_feed(st, g(c), o)) break;
//   }
//   root = st.c;   (illinois_root below is exactly this loop)
// ---------------------------------------------------------------------------------------------
struct IllinoisState {
  double ta, tb, ga, gb, c, c_prev;
  int side;  // −1: b moved last, +1: a moved last, 0: neither yet
};

SLIMFAST_HD inline IllinoisState illinois_start(double ta, double tb, double ga, double gb) {
  IllinoisState st;
  st.ta = ta;
  st.tb = tb;
  st.ga = ga;
  st.gb = gb;
  st.c = ta;
  st.c_prev = slim_nan();
  st.side = 0;
  return st;
}

SLIMFAST_HD inline double illinois_next(IllinoisState& st) {
  const double c_new = (st.ta * st.gb - st.tb * st.ga) / (st.gb - st.ga);
  st.c = nan_min(nan_max(c_new, nan_min(st.ta, st.tb)), nan_max(st.ta, st.tb));
  return st.c;
}

// Feed g(st.c); true when the iteration has converged (nothing is changed then).
SLIMFAST_HD inline bool illinois_feed(IllinoisState& st, double gc, const StepOptions& o) {
  if (gc == 0 || fabs(st.c - st.c_prev) <= o.root_tol * clamp_min(fabs(st.c), 1.0)) return true;
  if ((gc > 0) == (st.gb > 0)) {
    if (st.side == -1) st.ga /= 2;
    st.tb = st.c;
    st.gb = gc;
    st.side = -1;
  } else {
    if (st.side == 1) st.gb /= 2;
    st.ta = st.c;
    st.ga = gc;
    st.side = 1;
  }
  st.c_prev = st.c;
  return false;
}

SLIMFAST_HD inline double illinois_root(double ta, double tb, double ga, double gb, const Projections& p, double m,
                                        double Lambda_prev, const StepOptions& o, double* scratch) {
  IllinoisState st = illinois_start(ta, tb, ga, gb);
  for (int it = 0; it < o.max_root_iter; ++it) {
    const double c = illinois_next(st);
    if (illinois_feed(st, sgcv_eval(exp(c), p, m, Lambda_prev, scratch).g, o)) break;
  }
  return st.c;
}

// ---------------------------------------------------------------------------------------------
// _select_mu, split so a launcher may evaluate the grid itself (e.g. with dgemm):
//   grid_t:             t_i = log μ_lo + (log μ_hi − log μ_lo)·linspace(0, 1, n)_i
//   select_mu_from_grid: argmin (first occurrence) of f on the grid, bracket on the downhill side
//                        of dsGCV/dμ, Illinois root in t, clamp exp(t*) into [μ_lo, μ_hi].
//   select_mu:          all modes, grid evaluated with sgcv_eval.
// ---------------------------------------------------------------------------------------------
SLIMFAST_HD inline double grid_t(double mu_lo, double mu_hi, int n, int i) {
  const double t_lo = log(mu_lo), t_hi = log(mu_hi);
  return t_lo + (t_hi - t_lo) * linspace_at(0.0, 1.0, n, i);
}

// First half of select_mu_from_grid: the best grid point and, on the downhill side of dsGCV/dμ,
// its neighbour; `bracketed` when g changes sign between them and both are admissible (finite f;
// D grows with μ, so the whole bracket is then admissible): the minimiser is the root of g on
// [t_other, t_best].
struct GridBracket {
  double t_best, g_best, t_other, g_other;
  bool bracketed;
};

SLIMFAST_HD inline GridBracket grid_bracket(const double* t_grid, const double* f_grid, const double* g_grid, int n,
                                            double mu_lo, double mu_hi) {
  int i = 0;
  for (int j = 1; j < n; ++j)
    if (f_grid[j] < f_grid[i]) i = j;
  GridBracket br;
  br.t_best = t_grid[i];
  br.g_best = g_grid[i];
  const bool go_left = i > 0 && br.g_best > 0;
  const bool go_right = i < n - 1 && br.g_best < 0;
  const int i_other = go_left ? i - 1 : (i + 1 < n - 1 ? i + 1 : n - 1);
  br.t_other = t_grid[i_other];
  br.g_other = g_grid[i_other];
  br.bracketed = ((go_left && br.g_other < 0) || (go_right && br.g_other > 0)) && log(mu_hi) > log(mu_lo) &&
                 f_grid[i] < slim_inf() && f_grid[i_other] < slim_inf();
  return br;
}

SLIMFAST_HD inline double select_mu_from_grid(const double* t_grid, const double* f_grid, const double* g_grid,
                                               double mu_lo, double mu_hi, const Projections& p, double m,
                                               double Lambda_prev, const StepOptions& o, double* scratch) {
  const GridBracket br = grid_bracket(t_grid, f_grid, g_grid, o.n_grid, mu_lo, mu_hi);
  const double t_star =
      br.bracketed ? illinois_root(br.t_other, br.t_best, br.g_other, br.g_best, p, m, Lambda_prev, o, scratch)
                   : br.t_best;
  return clamp_max(clamp_min(exp(t_star), mu_lo), mu_hi);
}

// Scratch doubles for select_mu: the trial points (t, f, g for the grid; μ, f for the 60
// reference candidates) and one sgcv_eval.
SLIMFAST_HD inline long select_mu_doubles(int n_f, int n_grid) {
  const long points = n_grid > 2 * SLIMFAST_N_REFERENCE_POINTS ? n_grid : 2 * SLIMFAST_N_REFERENCE_POINTS;
  return 3L * points + sgcv_eval_doubles(n_f);
}

SLIMFAST_HD inline double select_mu(const Projections& p, double m, double Lambda_prev, const StepOptions& o,
                                    double* scratch) {
  double mu_lo, mu_hi;
  admissible_interval(Lambda_prev, o, &mu_lo, &mu_hi);
  if (o.mode == SLIMFAST_MODE_CONSTANT) return constant_mu(Lambda_prev, mu_lo, mu_hi, o);
  if (o.mode == SLIMFAST_MODE_REFERENCE) {
    // sGCV at the admissible candidates (+inf elsewhere), then the first minimiser.
    const int n = 2 * SLIMFAST_N_REFERENCE_POINTS;
    double* mu = scratch;
    double* f = mu + n;
    for (int i = 0; i < n; ++i) {
      mu[i] = Lambda_prev + reference_candidate(i, Lambda_prev, o);
      const bool ok = mu[i] >= mu_lo && mu[i] <= mu_hi;
      f[i] = ok ? sgcv_eval(mu[i], p, m, Lambda_prev, f + n).f : slim_inf();
    }
    return reference_pick(mu, f, Lambda_prev, mu_lo, mu_hi);
  }
  const int n = o.n_grid;
  double* t_grid = scratch;
  double* f_grid = t_grid + n;
  double* g_grid = f_grid + n;
  double* eval_scratch = scratch + 3L * (n > 2 * SLIMFAST_N_REFERENCE_POINTS ? n : 2 * SLIMFAST_N_REFERENCE_POINTS);
  for (int i = 0; i < n; ++i) {
    t_grid[i] = grid_t(mu_lo, mu_hi, n, i);
    const SgcvPoint pt = sgcv_eval(exp(t_grid[i]), p, m, Lambda_prev, eval_scratch);
    f_grid[i] = pt.f;
    g_grid[i] = pt.g;
  }
  return select_mu_from_grid(t_grid, f_grid, g_grid, mu_lo, mu_hi, p, m, Lambda_prev, o, eval_scratch);
}

// ---------------------------------------------------------------------------------------------
// End of _slimtik_step for one problem, μ = Λ_k chosen:
//   update_direction: Y = (B̃ + λW̃)∘d [n_t, n_f],  d = 1/(s + μ)
//   W_new = W − Y Uᵀ
//   info_row: [λ, μ, sGCV(μ), sqrt(max(R, 0)/c) (0 if c <= 0), (s_max + μ)/(s_min + μ), eig_min]
// ---------------------------------------------------------------------------------------------
SLIMFAST_HD inline void update_direction(const Projections& p, double lam, const double* d, double* Y) {
  const int nf = p.n_f;
  for (long e = 0; e < (long)p.n_t * nf; ++e) Y[e] = (p.Bt[e] + lam * p.Wt[e]) * d[e % nf];
}

SLIMFAST_HD inline void info_row(const Projections& p, double mu, double Lambda_prev, const SgcvPoint& pt, double c,
                                 double* info) {
  info[0] = mu - Lambda_prev;
  info[1] = mu;
  info[2] = pt.f;
  info[3] = c > 0 ? sqrt(clamp_min(pt.R, 0.0) / c) : 0.0;
  info[4] = (p.s[p.n_f - 1] + mu) / (p.s[0] + mu);
  info[5] = p.eig_min;
}

// The whole end of the step with plain loops. scratch: sgcv_eval_doubles(n_f) + n_t·n_f.
SLIMFAST_HD inline long finish_step_doubles(int n_f, int n_t) { return sgcv_eval_doubles(n_f) + (long)n_t * n_f; }
SLIMFAST_HD inline void finish_step(const Projections& p, double mu, double m, double Lambda_prev, double c,
                                    const double* W, double* W_out, double* info, double* scratch) {
  const int nf = p.n_f, nt = p.n_t;
  const SgcvPoint pt = sgcv_eval(mu, p, m, Lambda_prev, scratch);  // leaves d = 1/(s + μ) in scratch
  double* Y = scratch + sgcv_eval_doubles(nf);
  update_direction(p, mu - Lambda_prev, scratch, Y);
  for (int t = 0; t < nt; ++t)
    for (int i = 0; i < nf; ++i) {
      const double* y = Y + (long)t * nf;
      const double* u = p.U + (long)i * nf;
      double acc = 0.0;
      for (int j = 0; j < nf; ++j) acc += y[j] * u[j];
      W_out[(long)t * nf + i] = W[(long)t * nf + i] - acc;
    }
  info_row(p, mu, Lambda_prev, pt, c, info);
}

// ---------------------------------------------------------------------------------------------
// Cyclic Jacobi eigensolver for a symmetric A [n, n] (lower triangle read, as torch.linalg.eigh).
// Output: s_out [n] ascending, U_out [n, n] with eigenvectors as columns.
// Warm start: with U0 (e.g. the previous step's eigenvectors) the rotations start from
// A' = U0ᵀ A U0 and V = U0, which is nearly diagonal when A changed little, so far fewer sweeps
// are needed. Stops when off(A') = ‖A' − diag(A')‖_F <= tol·‖A‖_F or after max_sweeps sweeps.
// Returns the number of sweeps run. scratch: jacobi_doubles(n).
// ---------------------------------------------------------------------------------------------
// Rutishauser's rotation zeroing a_pq of the symmetric 2×2 block [[a_pp, a_pq], [a_pq, a_qq]]:
// t = tan φ of the smaller angle, c = cos φ, s = sin φ (jacobi_eigh's inline formula). Applied as
//   row_p ← c·row_p − s·row_q,  row_q ← s·row_p + c·row_q  (and the same on columns),
// it gives a_pp' = a_pp − t·a_pq, a_qq' = a_qq + t·a_pq, a_pq' = 0. Exactly the identity
// (c = 1, s = t = 0) when a_pq == 0, so a zero row/column (padding) stays exactly zero.
struct JacobiRotation {
  double c, s, t;
};

SLIMFAST_HD inline JacobiRotation jacobi_rotation(double app, double aqq, double apq) {
  JacobiRotation r;
  if (apq == 0.0) {
    r.c = 1.0;
    r.s = 0.0;
    r.t = 0.0;
    return r;
  }
  const double theta = (aqq - app) / (2.0 * apq);
  r.t = fabs(theta) > 1e150 ? 0.5 / theta : (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
  r.c = 1.0 / sqrt(r.t * r.t + 1.0);
  r.s = r.t * r.c;
  return r;
}

// Round-robin ("circle method") parallel ordering for an even n_pad: in round r (0 <= r < n_pad−1)
// the n_pad/2 pairs k = 0 .. n_pad/2−1 are disjoint, and over the n_pad−1 rounds of a sweep every
// pair (p, q), p < q, occurs exactly once. Index n_pad−1 stays put; the others rotate.
SLIMFAST_HD inline void round_robin_pair(int n_pad, int r, int k, int* p, int* q) {
  const int m = n_pad - 1;
  int a, b;
  if (k == 0) {
    a = r;
    b = m;
  } else {
    a = (r + k) % m;
    b = (r - k + m) % m;
  }
  *p = a < b ? a : b;
  *q = a < b ? b : a;
}

SLIMFAST_HD inline long jacobi_doubles(int n) { return 3L * n * n; }

SLIMFAST_HD inline double sym_lower(const double* A, int n, int i, int j) {
  return j <= i ? A[(long)i * n + j] : A[(long)j * n + i];
}

SLIMFAST_HD inline int jacobi_eigh(int n, const double* A, const double* U0, double* s_out, double* U_out, double tol,
                                   int max_sweeps, double* scratch) {
  double* M = scratch;               // working matrix, full symmetric storage
  double* Vt = M + (long)n * n;      // eigenvectors as ROWS, so rotations touch contiguous rows
  double* T = Vt + (long)n * n;      // warm start: A U0
  double norm2 = 0.0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      const double x = sym_lower(A, n, i, j);
      norm2 += x * x;
    }
  if (U0 == nullptr) {
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        M[(long)i * n + j] = sym_lower(A, n, i, j);
        Vt[(long)i * n + j] = i == j ? 1.0 : 0.0;
      }
  } else {
    // T = A U0 (axpy rows), M = U0ᵀ T, Vt = U0ᵀ.
    for (long i = 0; i < (long)n * n; ++i) T[i] = M[i] = 0.0;
    for (int i = 0; i < n; ++i)
      for (int l = 0; l < n; ++l) {
        const double a = sym_lower(A, n, i, l);
        for (int j = 0; j < n; ++j) T[(long)i * n + j] += a * U0[(long)l * n + j];
      }
    for (int l = 0; l < n; ++l)
      for (int i = 0; i < n; ++i) {
        const double u = U0[(long)l * n + i];
        for (int j = 0; j < n; ++j) M[(long)i * n + j] += u * T[(long)l * n + j];
      }
    // U0ᵀ A U0 is symmetric only up to rounding; keep its lower triangle.
    for (int i = 0; i < n; ++i)
      for (int j = i + 1; j < n; ++j) M[(long)i * n + j] = M[(long)j * n + i];
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) Vt[(long)i * n + j] = U0[(long)j * n + i];
  }
  const double thresh = tol * sqrt(norm2);
  int sweep = 0;
  for (; sweep < max_sweeps; ++sweep) {
    double off2 = 0.0;
    for (int i = 0; i < n; ++i)
      for (int j = i + 1; j < n; ++j) off2 += 2.0 * M[(long)i * n + j] * M[(long)i * n + j];
    if (sqrt(off2) <= thresh) break;
    for (int p = 0; p < n - 1; ++p)
      for (int q = p + 1; q < n; ++q) {
        const double apq = M[(long)p * n + q];
        if (apq == 0.0) continue;
        const double app = M[(long)p * n + p], aqq = M[(long)q * n + q];
        const JacobiRotation r = jacobi_rotation(app, aqq, apq);
        const double t = r.t, cs = r.c, sn = r.s;
        double* rp = M + (long)p * n;
        double* rq = M + (long)q * n;
        for (int k = 0; k < n; ++k) {  // rows p, q of Jᵀ M (contiguous) ...
          const double x = rp[k], y = rq[k];
          rp[k] = cs * x - sn * y;
          rq[k] = sn * x + cs * y;
        }
        for (int k = 0; k < n; ++k) {  // ... mirrored into columns p, q (M stays symmetric)
          M[(long)k * n + p] = rp[k];
          M[(long)k * n + q] = rq[k];
        }
        rp[p] = app - t * apq;
        rq[q] = aqq + t * apq;
        rp[q] = rq[p] = 0.0;
        double* vp = Vt + (long)p * n;
        double* vq = Vt + (long)q * n;
        for (int k = 0; k < n; ++k) {
          const double x = vp[k], y = vq[k];
          vp[k] = cs * x - sn * y;
          vq[k] = sn * x + cs * y;
        }
      }
  }
  // Ascending order by selection sort (n swaps of rows of Vt), then transpose into U_out.
  for (int i = 0; i < n; ++i) s_out[i] = M[(long)i * n + i];
  for (int i = 0; i < n; ++i) {
    int jm = i;
    for (int j = i + 1; j < n; ++j)
      if (s_out[j] < s_out[jm]) jm = j;
    if (jm != i) {
      const double tmp = s_out[i];
      s_out[i] = s_out[jm];
      s_out[jm] = tmp;
      for (int k = 0; k < n; ++k) {
        const double v = Vt[(long)i * n + k];
        Vt[(long)i * n + k] = Vt[(long)jm * n + k];
        Vt[(long)jm * n + k] = v;
      }
    }
  }
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) U_out[(long)i * n + j] = Vt[(long)j * n + i];
  return sweep;
}

}  // namespace slimfast
