// The sample side's tridiagonal route (see sample_side_cpu.h for the equations).
#include "sample_side_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_threads.h"
#include "slimtik_step.h"

namespace slimfast {
namespace {

// one_problem's code for a shifted kernel matrix that rounding made indefinite.
constexpr int kIndefinite = -1000;

// One problem in the basis of Q (K = Q T Qᵀ). Row-major [N, ·] arrays, so that one row of all
// right-hand sides is contiguous in the LDLᵀ sweeps.
struct Rotated {
  int N, n_b, n_t;
  const double *d, *e;      // T: diagonal [N], off-diagonal [N − 1]
  const double* St;         // QᵀS [N, n_b] (S: the last n_b columns of I_N, so M S = Mz)
  const double *P1t, *P2t;  // Qᵀ(A R0ᵀ) and Qᵀ WMᵀ [N, n_t]: Qᵀ(E M)ᵀ = P1t + λ P2t
  const double* R0;         // [n_t, n_b]
};

// T + μI = L D Lᵀ (unit lower bidiagonal L): dd [N] = D, l [N − 1]. T ≽ 0 and μ > 0 make it SPD;
// returns false when rounding made a pivot non-positive (K's scale far beyond μ/ε), where the
// solves would be meaningless.
bool factor_shifted(const Rotated& r, double mu, double* dd, double* l) {
  dd[0] = r.d[0] + mu;
  bool ok = dd[0] > 0.0;
  for (int i = 1; i < r.N; ++i) {
    l[i - 1] = r.e[i - 1] / dd[i - 1];
    dd[i] = r.d[i] + mu - l[i - 1] * r.e[i - 1];
    ok = ok && dd[i] > 0.0;
  }
  return ok && std::isfinite(dd[r.N - 1]);
}

// x := (L D Lᵀ)⁻¹ x for x [N, nr] row-major (all right-hand sides of a row side by side).
void solve_shifted(int N, int nr, const double* dd, const double* l, double* x) {
  for (int i = 1; i < N; ++i) {
    double* row = x + (long)i * nr;
    const double* prev = row - nr;
    const double li = l[i - 1];
    for (int k = 0; k < nr; ++k) row[k] -= li * prev[k];
  }
  for (int i = N - 1; i >= 0; --i) {
    double* row = x + (long)i * nr;
    const double inv = 1.0 / dd[i];
    if (i == N - 1) {
      for (int k = 0; k < nr; ++k) row[k] *= inv;
    } else {
      const double* next = row + nr;
      const double li = l[i];
      for (int k = 0; k < nr; ++k) row[k] = row[k] * inv - li * next[k];
    }
  }
}

// sGCV of one trial point (select_mu's evaluator, as DenseSgcv). In Q's basis, with
// Ẽ = P1t + λ P2t = Qᵀ(E M)ᵀ and the solves Ys = (T + μI)⁻¹St, q = (T + μI)⁻¹Ẽ:
//   res = R0 − ẼᵀYs,                        res' = (q − P2t)ᵀYs
//   trace = tr(Aᵀ(K + μI)⁻¹S) = n_b − μ⟨St, Ys⟩,   trace' = μ‖Ys‖² − ⟨St, Ys⟩
// (A = K S, so (K + μI)⁻¹A = S − μ(K + μI)⁻¹S; res' = −d res/dμ, by the symmetry of T
// (q − P2t)ᵀYs = qᵀ(T + μI)⁻¹St − P2tᵀ(T + μI)⁻¹St). Both n_t × n_b products are one GEMM with
// Ys, the only O(N·n_t·n_b) work of a trial point. Scratch: dd, l [N]; sol [N, n_b + n_t]
// (Ys | q); F [N, 2 n_t] (Ẽ | q − P2t); acc [2 n_t, n_b] (res's ẼᵀYs | res'). *indefinite is set
// when some T + μI was not numerically positive definite (the step is then not taken: see
// one_problem).
struct WoodburySgcv {
  const Rotated& r;
  const Lapack& lp;
  double m, Lambda_prev;
  double *dd, *l, *sol, *F, *acc;
  bool* indefinite;

  SgcvPoint at(double mu) const {
    const int N = r.N, nb = r.n_b, nt = r.n_t, nr = nb + nt, nf = 2 * nt;
    const double lam = mu - Lambda_prev;
    for (int i = 0; i < N; ++i) {
      double* row = sol + (long)i * nr;
      double* f = F + (long)i * nf;
      std::memcpy(row, r.St + (long)i * nb, sizeof(double) * nb);
      for (int t = 0; t < nt; ++t) f[t] = row[nb + t] = r.P1t[(long)i * nt + t] + lam * r.P2t[(long)i * nt + t];
    }
    if (!factor_shifted(r, mu, dd, l)) *indefinite = true;
    solve_shifted(N, nr, dd, l, sol);
    double sy = 0.0, yy = 0.0;
    for (int i = 0; i < N; ++i) {
      const double* __restrict row = sol + (long)i * nr;
      const double* __restrict st = r.St + (long)i * nb;
      double* f = F + (long)i * nf;
      for (int t = 0; t < nt; ++t) f[nt + t] = row[nb + t] - r.P2t[(long)i * nt + t];
#pragma omp simd reduction(+ : sy, yy)
      for (int j = 0; j < nb; ++j) {
        sy += st[j] * row[j];
        yy += row[j] * row[j];
      }
    }
    // acc [2 n_t, n_b] row-major = (Ysᵀ F) column-major [n_b, 2 n_t]: Ys column-major is Ysᵀ
    // [n_b, N] with leading dimension nr, F column-major is Fᵀ [2 n_t, N].
    const double one = 1.0, zero = 0.0;
    lp.dgemm("N", "T", &nb, &nf, &N, &one, sol, &nr, F, &nf, &zero, acc, &nb);
    const long ntb = (long)nt * nb;
    const double* EY = acc;
    const double* DY = acc + ntb;
    double R = 0.0, R_der = 0.0;
#pragma omp simd reduction(+ : R, R_der)
    for (long e = 0; e < ntb; ++e) {
      const double res = r.R0[e] - EY[e];
      R += res * res;
      R_der += 2.0 * res * DY[e];
    }
    const double trace = nb - mu * sy;
    const double trace_der = mu * yy - sy;
    return sgcv_point(R, R_der, m - nt * trace, -nt * trace_der, m);
  }

  template <class Ctx>
  SgcvPoint point(Ctx&, double mu) const {
    return at(mu);
  }
  template <class Ctx>
  void points(Ctx&, int npts, const double* mu, bool admissible_only, double mu_lo, double mu_hi, double* f,
              double* g) const {
    for (int i = 0; i < npts; ++i) {
      if (admissible_only && !(mu[i] >= mu_lo && mu[i] <= mu_hi)) {
        f[i] = slim_inf();
        g[i] = slim_nan();
        continue;
      }
      const SgcvPoint pt = at(mu[i]);
      f[i] = pt.f;
      g[i] = pt.g;
    }
  }
};

// Workspace of one problem (doubles), after the LAPACK work of `lwork` doubles.
struct Layout {
  long Kt, d, e, tau, Cm, St, P1t, P2t, dd, l, sol, F, acc, pts, stebz, total;
};

Layout layout(int N, int nb, int nt, int n_grid, long lwork) {
  const long n = N, nr = nb + 2 * nt, npts = step_points(n_grid);  // nr: Cm's columns
  Layout L;
  L.Kt = lwork;
  L.d = L.Kt + n * n;
  L.e = L.d + n;
  L.tau = L.e + n;
  L.Cm = L.tau + n;
  L.St = L.Cm + n * nr;
  L.P1t = L.St + n * nb;
  L.P2t = L.P1t + n * nt;
  L.dd = L.P2t + n * nt;
  L.l = L.dd + n;
  L.sol = L.l + n;
  L.F = L.sol + n * (nb + nt);
  L.acc = L.F + n * 2L * nt;
  L.pts = L.acc + 2L * nt * nb;
  L.stebz = L.pts + 4 * npts;
  L.total = L.stebz + 6 * n;  // dstebz: w [N], work [4N]; its ints go to iwork
  return L;
}

// The largest LAPACK work (doubles) of dsytrd and dormtr for N and up to ncols right-hand sides.
int lapack_work(const Lapack& lp, int N, int ncols) {
  double q1 = 0.0, q2 = 0.0, dummy = 0.0;
  int info = 0;
  const int query = -1;
  lp.dsytrd("L", &N, &dummy, &N, &dummy, &dummy, &dummy, &q1, &query, &info);
  lp.dormtr("L", "L", "T", &N, &ncols, &dummy, &N, &dummy, &dummy, &N, &q2, &query, &info);
  return std::max({(int)q1, (int)q2, 1, ncols});
}

int one_problem(const Lapack& lp, int N, int nb, int nt, const double* K, const double* A, const double* R0,
                const double* WM, double c, double m, double Lambda_prev, const StepOptions& opts, int lwork,
                double* ws, int* iws, double* X, double* info) {
  const Layout L = layout(N, nb, nt, opts.n_grid, lwork);
  double* work = ws;
  double *Kt = ws + L.Kt, *d = ws + L.d, *e = ws + L.e, *tau = ws + L.tau, *Cm = ws + L.Cm;
  double *St = ws + L.St, *P1t = ws + L.P1t, *P2t = ws + L.P2t;
  int lapack_info = 0;
  // K is symmetric: row-major is column-major, and either triangle is it.
  std::memcpy(Kt, K, sizeof(double) * N * N);
  lp.dsytrd("L", &N, Kt, &N, d, e, tau, work, &lwork, &lapack_info);
  if (lapack_info != 0) return lapack_info;
  // Cm = Qᵀ [S | A R0ᵀ | WMᵀ], column-major [N, n_b + 2 n_t].
  const int ncols = nb + 2 * nt;
  std::fill(Cm, Cm + (long)N * nb, 0.0);
  for (int j = 0; j < nb; ++j) Cm[(long)j * N + N - nb + j] = 1.0;
  for (int t = 0; t < nt; ++t) {
    double* col = Cm + (long)(nb + t) * N;
    for (int i = 0; i < N; ++i) {
      double s = 0.0;
      for (int j = 0; j < nb; ++j) s += A[(long)i * nb + j] * R0[(long)t * nb + j];
      col[i] = s;
    }
    std::memcpy(Cm + (long)(nb + nt + t) * N, WM + (long)t * N, sizeof(double) * N);
  }
  lp.dormtr("L", "L", "T", &N, &ncols, Kt, &N, tau, Cm, &N, work, &lwork, &lapack_info);
  if (lapack_info != 0) return lapack_info;
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < nb; ++j) St[(long)i * nb + j] = Cm[(long)j * N + i];
    for (int t = 0; t < nt; ++t) {
      P1t[(long)i * nt + t] = Cm[(long)(nb + t) * N + i];
      P2t[(long)i * nt + t] = Cm[(long)(nb + nt + t) * N + i];
    }
  }
  const Rotated rot{N, nb, nt, d, e, St, P1t, P2t, R0};
  bool indefinite = false;
  const WoodburySgcv eval{rot, lp, m, Lambda_prev, ws + L.dd, ws + L.l, ws + L.sol, ws + L.F, ws + L.acc, &indefinite};
  SerialCtx ctx;
  const long npts = step_points(opts.n_grid);
  double* pts = ws + L.pts;
  const double mu = select_mu(ctx, eval, Lambda_prev, opts, pts, pts + npts, pts + 2 * npts, pts + 3 * npts);
  const SgcvPoint pt = eval.at(mu);  // leaves Ys at μ in sol, T + μI's factors in dd, l
  if (indefinite) return kIndefinite;
  // X = ((λ/μ) W M − R0 Sᵀ)(K + μI)⁻¹ = (Q ((λ/μ) p − Ys R0ᵀ))ᵀ with p = (T + μI)⁻¹P2t,
  // column-major [N, n_t] in Cm.
  double* p = ws + L.F;
  std::memcpy(p, P2t, sizeof(double) * N * nt);
  solve_shifted(N, nt, ws + L.dd, ws + L.l, p);
  const double ratio = (mu - Lambda_prev) / mu;
  const double* sol = ws + L.sol;
  const int nr = nb + nt;
  for (int i = 0; i < N; ++i)
    for (int t = 0; t < nt; ++t) {
      double s = 0.0;
      for (int j = 0; j < nb; ++j) s += sol[(long)i * nr + j] * R0[(long)t * nb + j];
      Cm[(long)t * N + i] = ratio * p[(long)i * nt + t] - s;
    }
  lp.dormtr("L", "L", "N", &N, &nt, Kt, &N, tau, Cm, &N, work, &lwork, &lapack_info);
  if (lapack_info != 0) return lapack_info;
  std::memcpy(X, Cm, sizeof(double) * nt * N);  // column-major [N, n_t] is row-major [n_t, N]
  // s_max of G_mem = the largest eigenvalue of K (of T), by bisection.
  const double zero = 0.0;
  int found = 0, nsplit = 0;
  double* w = ws + L.stebz;
  lp.dstebz("I", "E", &N, &zero, &zero, &N, &N, &zero, d, e, &found, &nsplit, w, iws, iws + N, w + N, iws + 2 * N,
            &lapack_info);
  if (lapack_info != 0 || found != 1) return lapack_info != 0 ? lapack_info : -1;
  const double s_max = std::max(w[0], 0.0);
  info[0] = mu - Lambda_prev;
  info[1] = mu;
  info[2] = pt.f;
  info[3] = c > 0 ? std::sqrt(std::max(pt.R, 0.0) / c) : 0.0;
  info[4] = (s_max + mu) / mu;
  info[5] = 0.0;
  return 0;
}

}  // namespace

int sample_side_woodbury_step_cpu(const Lapack& lapack, int B, int N, int n_b, int n_t, const double* K,
                                  const double* A, const double* R0, const double* WM, const double* c,
                                  const double* m, const double* Lambda_prev, const StepOptions& opts, double* X_out,
                                  double* info, int* lapack_info) {
  const BlasThreads blas_threads(lapack, N < kBlasThreadsMinN ? 1 : usable_threads(BlasThreads::current(lapack)));
  const int lwork = lapack_work(lapack, N, n_b + 2 * n_t);
  // Kept across calls: a wide head steps every batch, and fresh pages of this size cost a fault each.
  thread_local std::vector<double> ws;
  thread_local std::vector<int> iws;
  const long total = layout(N, n_b, n_t, opts.n_grid, lwork).total;
  if ((long)ws.size() < total) ws.resize(total);
  if ((long)iws.size() < 5L * N) iws.resize(5L * N);
  const long nn = (long)N * N;
  int declined = 0;
  for (int b = 0; b < B; ++b) {
    const int failed =
        one_problem(lapack, N, n_b, n_t, K + b * nn, A + (long)b * N * n_b, R0 + (long)b * n_t * n_b,
                    WM + (long)b * n_t * N, c[b], m[b], Lambda_prev[b], opts, lwork, ws.data(), iws.data(),
                    X_out + (long)b * n_t * N, info + (long)b * SLIMFAST_N_INFO);
    if (failed == kIndefinite) {
      declined = declined ? declined : b + 1;
    } else if (failed != 0) {
      *lapack_info = failed;
      return b + 1;
    }
  }
  return declined ? -declined : 0;
}

}  // namespace slimfast
