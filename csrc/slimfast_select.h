// λ selection (reference candidates, grid bracket, Illinois root, select_mu) and the end of the
// step (finish_step) for one problem: part of csrc/slimfast_math.h, which includes this file;
// the same twin and device rules apply (see the top of slimfast_math.h).
#pragma once

#include "slimfast_math.h"

namespace slimfast {

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

}  // namespace slimfast
