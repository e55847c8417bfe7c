// Leaf functions of λ selection (reference candidates, grid bracket, the Illinois state machine)
// and of the end of the step (update direction, info row) for one problem; select_mu and
// finish_step that compose them are in csrc/slimtik_step.h. Part of csrc/slimfast_math.h, which
// includes this file; the same twin and device rules apply (see the top of slimfast_math.h).
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
//   root = st.c;   (illinois_root in csrc/slimtik_step.h is exactly this loop)
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

// ---------------------------------------------------------------------------------------------
// Pieces of _select_mu (mode SGCV):
//   grid_t:        t_i = log μ_lo + (log μ_hi − log μ_lo)·linspace(0, 1, n)_i
//   grid_bracket:  argmin (first occurrence) of f on the grid and the bracket on the downhill side
//                  of dsGCV/dμ; select_mu then runs the Illinois root in t and clamps exp(t*)
//                  into [μ_lo, μ_hi].
// ---------------------------------------------------------------------------------------------
SLIMFAST_HD inline double grid_t(double mu_lo, double mu_hi, int n, int i) {
  const double t_lo = log(mu_lo), t_hi = log(mu_hi);
  return t_lo + (t_hi - t_lo) * linspace_at(0.0, 1.0, n, i);
}

// The best grid point and, on the downhill side of dsGCV/dμ,
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

// ---------------------------------------------------------------------------------------------
// End of _slimtik_step for one problem, μ = Λ_k chosen:
//   update_direction_at: element e = (t, j) of Y = (B̃ + λW̃)∘d [n_t, n_f], d_j = 1/(s_j + μ)
//   W_new = W − Y Uᵀ (a product hook of the context)
//   info_row: [λ, μ, sGCV(μ), sqrt(max(R, 0)/c) (0 if c <= 0), (s_max + μ)/(s_min + μ), eig_min]
// ---------------------------------------------------------------------------------------------
SLIMFAST_HD inline double update_direction_at(const Projections& p, double lam, double d_j, long e) {
  return (p.Bt[e] + lam * p.Wt[e]) * d_j;
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

}  // namespace slimfast
