// The block step's sGCV evaluator (method.md §6 "Phase blocks"; twin: slimfast._torch_block's
// _block_terms and _block_sgcv_eval) and the layout it works on: the blocks' dimensions, the
// products with the bordered inverse in the blocks' eigenbasis, the trial points evaluated
// together. Included by csrc/slimtik_block_step.h, whose header comment has the formulas and the
// hooks (ctx.blockdiag_times) a context provides.
#pragma once

#include "slimtik_step.h"

namespace slimfast {

// The layout of every problem of a batch: off [P + 1] (off[0] = 0, increasing, off[P] = n_c),
// nmax = the largest n_p, border = whether feature n_c is the border.
struct BlockDims {
  const int* off;
  int P, n_c, nmax;
  bool border;
};

SLIMFAST_HD inline BlockDims block_dims(const int* off, int P, bool border) {
  BlockDims bd;
  bd.off = off;
  bd.P = P;
  bd.n_c = off[P];
  bd.border = border;
  bd.nmax = 0;
  for (int q = 0; q < P; ++q) bd.nmax = off[q + 1] - off[q] > bd.nmax ? off[q + 1] - off[q] : bd.nmax;
  return bd;
}

// The block q with off[q] <= j < off[q + 1] (binary search; j < n_c).
SLIMFAST_HD inline int block_of(const BlockDims& bd, int j) {
  int lo = 0, hi = bd.P;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (bd.off[mid] <= j)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

// Most trial points the block step's sGCV evaluates together (BlockSgcv), and how many it does for
// n_t targets: about SLIMFAST_BLOCK_POINTS rows per product with K, so with many targets one point
// at a time (its rows already make the products matrix products).
inline constexpr int SLIMFAST_BLOCK_POINTS = 8;

SLIMFAST_HD inline int block_points_chunk(int n_t) {
  return n_t >= SLIMFAST_BLOCK_POINTS ? 1 : SLIMFAST_BLOCK_POINTS / n_t;
}
// out[r] = Σ_{j<n} A[r·lda + j] v[j] for r < rows, in reductions of up to SLIMFAST_MAX_ROW_DOTS rows.
inline constexpr int SLIMFAST_MAX_ROW_DOTS = 8;

template <class Ctx>
SLIMFAST_BLOCK void row_dots(Ctx& ctx, int rows, int n, const double* A, long lda, const double* v, double* out) {
  for (int r0 = 0; r0 < rows; r0 += SLIMFAST_MAX_ROW_DOTS) {
    const int cnt = rows - r0 < SLIMFAST_MAX_ROW_DOTS ? rows - r0 : SLIMFAST_MAX_ROW_DOTS;
    double tot[SLIMFAST_MAX_ROW_DOTS];
    ctx.template sums<SLIMFAST_MAX_ROW_DOTS>(
        [&](int tid, int nthr, double* acc) {
          for (int j = tid; j < n; j += nthr) {
            const double vj = v[j];
            for (int k = 0; k < cnt; ++k) acc[k] += A[(long)(r0 + k) * lda + j] * vj;
          }
        },
        tot);
    ctx.par([&](int tid, int nthr) {
      for (int k = tid; k < cnt; k += nthr) out[r0 + k] = tot[k];
    });
  }
}

// dst = src (D̂ + u uᵀ/σ) for src, dst [rows, n_f] (row length n_f, the border last): the core
// columns src∘d − x_u e, the border x_u = (src_b − src_core·e)/σ; without a border src∘d. xe: [rows]
// scratch (src_core·e). The inverse of the bordered matrix in the blocks' eigenbasis (the twin's
// _block_terms), applied to Y's and V's rows alike.
template <class Ctx>
SLIMFAST_BLOCK void times_arrowhead_inverse(Ctx& ctx, int rows, int nf, int nc, bool border, const double* src,
                                            const double* d, const double* e, double sigma, double* xe, double* dst) {
  if (border) row_dots(ctx, rows, nc, src, nf, e, xe);
  ctx.par([&](int tid, int nthr) {
    for_items(tid, nthr, rows, nf, [&](int t, int j, long i) {
      if (j < nc) {
        dst[i] = src[i] * d[j];
        if (border) dst[i] -= ((src[(long)t * nf + nc] - xe[t]) / sigma) * e[j];
      } else {
        dst[i] = (src[i] - xe[t]) / sigma;
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// _BlockProjections of one problem (core = the n_c block features, the border last).
// ---------------------------------------------------------------------------------------------
struct BlockProj {
  BlockDims bd;
  int n_f, n_t;
  const double* s;   // [n_c] block eigenvalues, clipped, null ones exactly 0
  const double* K;   // blockdiag(U_pᵀ G_p U_p) of the batch, rows nmax long, null rows/columns 0
  const double* kd;  // [n_c] its diagonal
  const double *z, *kb;  // [n_c] Uᵀ g (memory border), Uᵀ g_batch (0 without a border)
  const double *Bt, *Wt;  // [n_t, n_f] (W G − H)P (null columns 0) and W P
  double alpha, gamma, res0;
};

// _block_sgcv_eval for select_mu (points / point, as DenseSgcv). Up to block_points_chunk(n_t)
// trial points are evaluated together: their products with the blocks of K (K e and Y G')
// are then one ctx.blockdiag_times over all their rows (on the CPU one dgemm per block instead of
// one dgemv per point and block); everything else is per point, as the twin's _block_terms.
// Scratch per point k: d, e, Ke + k·n_c; X, Y, YG + k·n_t·n_f; M and rows are shared.
// point() leaves Y(μ) in Y.
struct BlockSgcv {
  const BlockProj& p;
  double m, Lambda_prev;
  double *d, *e, *Ke, *X, *Y, *YG, *M, *rows;

  // (f, R, g) at mu[0..cnt), cnt <= block_points_chunk(n_t), with all threads; Y(mu[k]) left in
  // Y + k·n_t·n_f.
  template <class Ctx>
  SLIMFAST_BLOCK void evaluate(Ctx& ctx, int cnt, const double* mu, SgcvPoint* out) const {
    const BlockDims& bd = p.bd;
    const int nc = bd.n_c, nf = p.n_f, nt = p.n_t;
    const long ntf = (long)nt * nf;
    const bool border = bd.border;
    ctx.par([&](int tid, int nthr) {
      for_items(tid, nthr, cnt, nc, [&](int k, int j, long i) {
        d[i] = 1.0 / (p.s[j] + mu[k]);
        e[i] = border ? d[i] * p.z[j] : 0.0;
      });
      for (int k = 0; k < cnt; ++k) {
        const double lam = mu[k] - Lambda_prev;
        double* Xk = X + k * ntf;
        for (long i = tid; i < ntf; i += nthr) Xk[i] = p.Bt[i] + lam * p.Wt[i];
      }
    });
    if (border) ctx.blockdiag_times(bd, cnt, e, nc, p.K, bd.nmax, false, Ke, nc);  // K e of every point
    // T = Σ d K_jj (+ uᵀG'u/σ), T' and σ from the sums of the twin's _block_terms.
    double T[SLIMFAST_BLOCK_POINTS], T_der[SLIMFAST_BLOCK_POINTS], sigma[SLIMFAST_BLOCK_POINTS];
    double* xe = rows;        // [n_t] X_core·e, then (W' − Y)_core·e
    double* ykb = rows + nt;  // [n_t] Y_core·k_b
    for (int k = 0; k < cnt; ++k) {
      const double *dk = d + (long)k * nc, *ek = e + (long)k * nc, *Kek = Ke + (long)k * nc;
      double acc[7];
      ctx.template sums<7>(
          [&](int tid, int nthr, double* a) {
            for (int j = tid; j < nc; j += nthr) {
              const double dj = dk[j], kj = p.kd[j];
              a[0] += dj * kj;
              a[1] += dj * dj * kj;
              if (border) {
                const double ej = ek[j];
                a[2] += p.z[j] * ej;
                a[3] += ej * Kek[j];
                a[4] += ej * p.kb[j];
                a[5] += dj * ej * (p.kb[j] - Kek[j]);
                a[6] += ej * ej;
              }
            }
          },
          acc);
      T[k] = acc[0];
      T_der[k] = -acc[1];
      sigma[k] = 1.0;
      if (border) {
        sigma[k] = p.alpha + mu[k] - acc[2];
        const double uGu = acc[3] - 2.0 * acc[4] + p.gamma;
        const double dDu_Gu = -acc[5];  // (D̂u)ᵀ G'u
        const double uu = acc[6] + 1.0;
        T[k] = T[k] + uGu / sigma[k];
        T_der[k] = T_der[k] - (2.0 * dDu_Gu / sigma[k] + uu * uGu / (sigma[k] * sigma[k]));
      }
      // Y = X (D̂ + u uᵀ/σ) (times_arrowhead_inverse).
      times_arrowhead_inverse(ctx, nt, nf, nc, border, X + k * ntf, dk, ek, sigma[k], xe, Y + k * ntf);
    }
    // Y G' of every point: core Y_core K + y_b k_b, border Y_core·k_b + y_b γ.
    ctx.blockdiag_times(bd, cnt * nt, Y, nf, p.K, bd.nmax, false, YG, nf);
    for (int k = 0; k < cnt; ++k) {
      const double *dk = d + (long)k * nc, *ek = e + (long)k * nc, *Yk = Y + k * ntf;
      double* YGk = YG + k * ntf;
      if (border) row_dots(ctx, nt, nc, Yk, nf, p.kb, ykb);
      ctx.par([&](int tid, int nthr) {
        for_items(tid, nthr, nt, nf, [&](int t, int j, long i) {
          if (j < nc) {
            if (border) YGk[i] += Yk[(long)t * nf + nc] * p.kb[j];
          } else {
            YGk[i] = ykb[t] + Yk[i] * p.gamma;
          }
          M[i] = p.Wt[i] - Yk[i];
        });
      });
      // V = (W' − Y) A into X's slot of this point (not read again).
      double* V = X + k * ntf;
      times_arrowhead_inverse(ctx, nt, nf, nc, border, M, dk, ek, sigma[k], xe, V);
      double r[3];  // ⟨Y, B'⟩, ⟨Y, Y G'⟩, ⟨V, Y G' − B'⟩
      ctx.template sums<3>(
          [&](int tid, int nthr, double* a) {
            for (long i = tid; i < ntf; i += nthr) {
              a[0] += Yk[i] * p.Bt[i];
              a[1] += Yk[i] * YGk[i];
              a[2] += V[i] * (YGk[i] - p.Bt[i]);
            }
          },
          r);
      const double R = p.res0 - 2.0 * r[0] + r[1];
      out[k] = sgcv_point(R, 2.0 * r[2], m - nt * T[k], -nt * T_der[k], m);
    }
  }

  // (f, R, g) at μ with all threads; Y(μ) left in Y.
  template <class Ctx>
  SLIMFAST_BLOCK SgcvPoint point(Ctx& ctx, double mu) const {
    SgcvPoint pt;
    evaluate(ctx, 1, &mu, &pt);
    return pt;
  }

  // f, g [npts] at mu [npts]; with `admissible_only` points outside [mu_lo, mu_hi] (or NaN) get
  // f = +inf, g = NaN unevaluated (as sgcv_eval_points). The others in groups of `chunk`.
  template <class Ctx>
  SLIMFAST_BLOCK void points(Ctx& ctx, int npts, const double* mu, bool admissible_only, double mu_lo, double mu_hi,
                             double* f, double* g) const {
    double group_mu[SLIMFAST_BLOCK_POINTS];
    int group_index[SLIMFAST_BLOCK_POINTS];
    SgcvPoint group_pt[SLIMFAST_BLOCK_POINTS];
    const int chunk = block_points_chunk(p.n_t);
    int cnt = 0;
    for (int i = 0; i < npts; ++i) {
      const double mi = mu[i];
      if (admissible_only && !(mi >= mu_lo && mi <= mu_hi)) {
        ctx.par([&](int tid, int) {
          if (tid == 0) {
            f[i] = slim_inf();
            g[i] = slim_nan();
          }
        });
      } else {
        group_mu[cnt] = mi;
        group_index[cnt++] = i;
      }
      if (cnt == chunk || (i == npts - 1 && cnt > 0)) {
        evaluate(ctx, cnt, group_mu, group_pt);
        ctx.par([&](int tid, int) {
          if (tid == 0)
            for (int k = 0; k < cnt; ++k) {
              f[group_index[k]] = group_pt[k].f;
              g[group_index[k]] = group_pt[k].g;
            }
        });
        cnt = 0;
      }
    }
  }
};

}  // namespace slimfast
