// Block-parallel slimTik step: what ONE thread block does for ONE problem. Twin of the per-problem
// loop body of csrc/cpu/slimtik_step_cpu.cpp; the scalar mathematics is csrc/slimfast_math.h.
//
// Every function here is a template over an execution context `ctx` with three operations:
//   ctx.par(f)            every thread runs f(tid, nthr), then a block barrier;
//   ctx.sums<K>(f, out)   every thread adds its terms to acc[K] in f(tid, nthr, acc); the block
//                         reduces, and every thread receives the totals in out[K];
// Code outside these calls is run by every thread with identical values ("uniform"), so a block
// never diverges at a barrier. Two contexts exist:
//   DeviceCtx (CUDA, slimtik_step_cuda.cu): threadIdx.x, __syncthreads, warp-shuffle reduction;
//   HostCtx (here): a serial emulation that runs the simulated threads one after another, in
//     forward or reverse order. bindings_cuda.cpp exposes it, so CPU tests run this exact code;
//     a result that changes with the order would expose a data race between threads.
// Rules the code below keeps, so that the serial emulation is faithful to the GPU:
//   1. Inside one ctx.par, no work item reads what another work item of the same par writes.
//   2. Memory read outside a par (uniform reads) is never written afterwards by the same block.
//   3. Only ctx.par writes memory.
//
// Layout: row-major float64. The Jacobi working matrices are padded to an even order np
// (n odd: one extra zero row/column, which the rotations leave exactly zero), leading dim np.
#pragma once

#include "block_context.cuh"  // layouts, HostCtx / DeviceCtx, SLIMFAST_BLOCK
#include "jacobi_block.cuh"   // jacobi_block, jacobi_extract

namespace slimfast {

// ---------------------------------------------------------------------------------------------
// sgcv_precompute, block-parallel. p bound (projections_bind) with p.s = s, p.U = U. s is clipped
// in place as by clip_spectrum, and the null space masked as in sgcv_precompute. With a full memory
// T, K [n, n] are scratch (K = Uᵀ G U, T = G U). work: n_t × n
// (W G on return, free afterwards).
// ---------------------------------------------------------------------------------------------
template <class Ctx>
SLIMFAST_BLOCK void precompute_block(const Ctx& ctx, Projections& p, double* s, const double* G, const double* H,
                                     double c, const double* W, double* T, double* K, double* work) {
  const int nf = p.n_f, nt = p.n_t;
  const long ntf = (long)nt * nf, nn = (long)nf * nf;
  const double* U = p.U;
  double* WG = work;
  // s_first, s_last through a reduction: every thread holds them before any thread clips s.
  double ends[2];
  ctx.template sums<2>(
      [&](int tid, int, double* acc) {
        if (tid == 0) {
          acc[0] = s[0];
          acc[1] = s[nf - 1];
        }
      },
      ends);
  p.eig_min = eig_min_ratio(ends[0], ends[1]);
  const double thr = null_threshold(nf, ends[1]);
  ctx.par([&](int tid, int nthr) {
    for (int j = tid; j < nf; j += nthr) s[j] = clipped_eigenvalue(s[j], thr);
    for (long e = tid; e < ntf; e += nthr) {
      const int t = (int)(e / nf), i = (int)(e % nf);
      double acc = 0.0;
      for (int l = 0; l < nf; ++l) acc += W[(long)t * nf + l] * G[(long)l * nf + i];
      WG[e] = acc;
    }
  });
  double r[2];
  ctx.template sums<2>(
      [&](int tid, int nthr, double* acc) {
        for (long e = tid; e < ntf; e += nthr) {
          acc[0] += WG[e] * W[e];
          acc[1] += W[e] * H[e];
        }
      },
      r);
  p.res0 = r[0] - 2.0 * r[1] + c;
  // B̃ = (W G − H) U, W̃ = W U; with a full memory also T = G U.
  ctx.par([&](int tid, int nthr) {
    for (long e = tid; e < ntf; e += nthr) {
      const int t = (int)(e / nf), j = (int)(e % nf);
      const double* wg = WG + (long)t * nf;
      const double* h = H + (long)t * nf;
      const double* w = W + (long)t * nf;
      double bt = 0.0, wt = 0.0;
      for (int i = 0; i < nf; ++i) {
        const double u = U[(long)i * nf + j];
        bt += (wg[i] - h[i]) * u;
        wt += w[i] * u;
      }
      p.Bt[e] = s[j] == 0.0 ? 0.0 : bt;  // null-space column (zero_null_columns)
      p.Wt[e] = wt;
    }
    if (!p.diagonal)
      for (long e = tid; e < nn; e += nthr) {
        const int i = (int)(e / nf), j = (int)(e % nf);
        double acc = 0.0;
        for (int l = 0; l < nf; ++l) acc += G[(long)i * nf + l] * U[(long)l * nf + j];
        T[e] = acc;
      }
  });
  // a, b (and the diagonal-memory Q's); with a full memory K = Uᵀ T.
  ctx.par([&](int tid, int nthr) {
    for (int j = tid; j < nf; j += nthr) {
      double a = 0.0, b = 0.0;
      for (int t = 0; t < nt; ++t) {
        const double bt = p.Bt[(long)t * nf + j], wt = p.Wt[(long)t * nf + j];
        a += bt * bt;
        b += bt * wt;
      }
      p.a[j] = a;
      p.b[j] = b;
      if (p.diagonal) q_diagonal_at(p, s, j);  // reads a_j, b_j of this work item only
    }
    if (!p.diagonal)
      for (long e = tid; e < nn; e += nthr) {
        const int i = (int)(e / nf), j = (int)(e % nf);
        double acc = 0.0;
        for (int l = 0; l < nf; ++l) acc += U[(long)l * nf + i] * T[(long)l * nf + j];
        K[e] = acc;
      }
  });
  if (p.diagonal) return;
  ctx.par([&](int tid, int nthr) {
    for (long e = tid; e < nn; e += nthr) {
      const int i = (int)(e / nf), j = (int)(e % nf);
      double q0 = 0.0, q1 = 0.0, q2 = 0.0;
      for (int t = 0; t < nt; ++t) {
        const double* bt = p.Bt + (long)t * nf;
        const double* wt = p.Wt + (long)t * nf;
        q0 += bt[i] * bt[j];
        q1 += bt[i] * wt[j] + wt[i] * bt[j];
        q2 += wt[i] * wt[j];
      }
      const double k = masked_gram(p, K, i, j);
      p.Q0[e] = q0 * k;
      p.Q1[e] = q1 * k;
      p.Q2[e] = q2 * k;
      if (i == j) p.k[i] = k;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// sGCV at npts trial points mu [npts] in parallel: f, g [npts]. With `admissible_only`, points
// outside [mu_lo, mu_hi] (or NaN) get f = +inf, g = NaN without evaluation (reference mode).
// D [npts, n] and (full memory) QD [npts, 3, n] are scratch.
// ---------------------------------------------------------------------------------------------
template <class Ctx>
SLIMFAST_BLOCK void eval_points(const Ctx& ctx, const Projections& p, double m, double Lambda_prev, int npts,
                                const double* mu, bool admissible_only, double mu_lo, double mu_hi, double* D,
                                double* QD, double* f, double* g) {
  const int nf = p.n_f;
  const long nd = (long)npts * nf;
  ctx.par([&](int tid, int nthr) {
    for (long e = tid; e < nd; e += nthr) D[e] = 1.0 / (p.s[e % nf] + mu[e / nf]);
  });
  if (!p.diagonal)
    ctx.par([&](int tid, int nthr) {
      for (long e = tid; e < nd; e += nthr) {
        const int i = (int)(e / nf), row = (int)(e % nf);
        const double* d = D + (long)i * nf;
        const double* q0 = p.Q0 + (long)row * nf;
        const double* q1 = p.Q1 + (long)row * nf;
        const double* q2 = p.Q2 + (long)row * nf;
        double x0 = 0.0, x1 = 0.0, x2 = 0.0;
        for (int j = 0; j < nf; ++j) {
          x0 += q0[j] * d[j];
          x1 += q1[j] * d[j];
          x2 += q2[j] * d[j];
        }
        double* qd = QD + 3L * i * nf;
        qd[row] = x0;
        qd[nf + row] = x1;
        qd[2 * nf + row] = x2;
      }
    });
  ctx.par([&](int tid, int nthr) {
    for (int i = tid; i < npts; i += nthr) {
      if (admissible_only && !(mu[i] >= mu_lo && mu[i] <= mu_hi)) {
        f[i] = slim_inf();
        g[i] = slim_nan();
        continue;
      }
      const double* qd = p.diagonal ? nullptr : QD + 3L * i * nf;
      const SgcvPoint pt = sgcv_eval_qd(mu[i], p, m, Lambda_prev, D + (long)i * nf, qd, p.diagonal ? nullptr : qd + nf,
                                        p.diagonal ? nullptr : qd + 2 * nf);
      f[i] = pt.f;
      g[i] = pt.g;
    }
  });
}

// sGCV at one μ with the whole block: ev [4, n] scratch (on return ev[0..n) = d = 1/(s + μ)).
template <class Ctx>
SLIMFAST_BLOCK SgcvPoint eval_point(const Ctx& ctx, const Projections& p, double m, double Lambda_prev, double mu,
                                    double* ev) {
  const int nf = p.n_f;
  double* d = ev;
  double* Q0d = ev + nf;
  double* Q1d = Q0d + nf;
  double* Q2d = Q1d + nf;
  ctx.par([&](int tid, int nthr) {
    for (int j = tid; j < nf; j += nthr) d[j] = 1.0 / (p.s[j] + mu);
  });
  if (!p.diagonal)
    ctx.par([&](int tid, int nthr) {
      for (int i = tid; i < nf; i += nthr) q_row_times_d(p, i, d, Q0d, Q1d, Q2d);
    });
  const double lam = mu - Lambda_prev;
  double acc[SLIMFAST_SGCV_NSUMS];
  ctx.template sums<SLIMFAST_SGCV_NSUMS>(
      [&](int tid, int nthr, double* a) {
        for (int j = tid; j < nf; j += nthr) {
          if (p.diagonal)
            sgcv_accumulate(p, lam, j, d[j], 0.0, 0.0, 0.0, a);
          else
            sgcv_accumulate(p, lam, j, d[j], Q0d[j], Q1d[j], Q2d[j], a);
        }
      },
      acc);
  return sgcv_from_sums(p, m, acc);
}

// select_mu, block-parallel: grid / candidates evaluated in parallel, then the bracket and the
// Illinois iteration (every thread holds the same iteration state; g(c) comes from eval_point).
template <class Ctx>
SLIMFAST_BLOCK double select_mu_block(const Ctx& ctx, const Projections& p, double m, double Lambda_prev,
                                      const StepOptions& o, double* pt_t, double* pt_mu, double* pt_f, double* pt_g,
                                      double* D, double* QD, double* ev) {
  double mu_lo, mu_hi;
  admissible_interval(Lambda_prev, o, &mu_lo, &mu_hi);
  if (o.mode == SLIMFAST_MODE_CONSTANT) return constant_mu(Lambda_prev, mu_lo, mu_hi, o);
  if (o.mode == SLIMFAST_MODE_REFERENCE) {
    const int n = 2 * SLIMFAST_N_REFERENCE_POINTS;
    ctx.par([&](int tid, int nthr) {
      for (int i = tid; i < n; i += nthr) pt_mu[i] = Lambda_prev + reference_candidate(i, Lambda_prev, o);
    });
    eval_points(ctx, p, m, Lambda_prev, n, pt_mu, true, mu_lo, mu_hi, D, QD, pt_f, pt_g);
    return reference_pick(pt_mu, pt_f, Lambda_prev, mu_lo, mu_hi);
  }
  const int n = o.n_grid;
  ctx.par([&](int tid, int nthr) {
    for (int i = tid; i < n; i += nthr) {
      pt_t[i] = grid_t(mu_lo, mu_hi, n, i);
      pt_mu[i] = exp(pt_t[i]);
    }
  });
  eval_points(ctx, p, m, Lambda_prev, n, pt_mu, false, mu_lo, mu_hi, D, QD, pt_f, pt_g);
  const GridBracket br = grid_bracket(pt_t, pt_f, pt_g, n, mu_lo, mu_hi);
  double t_star = br.t_best;
  if (br.bracketed) {
    IllinoisState st = illinois_start(br.t_other, br.t_best, br.g_other, br.g_best);
    for (int it = 0; it < o.max_root_iter; ++it) {
      const double c = illinois_next(st);
      const SgcvPoint pt = eval_point(ctx, p, m, Lambda_prev, exp(c), ev);
      if (illinois_feed(st, pt.g, o)) break;
    }
    t_star = st.c;
  }
  return clamp_max(clamp_min(exp(t_star), mu_lo), mu_hi);
}

// finish_step, block-parallel: W_out = W − ((B̃ + λW̃)∘d) Uᵀ and the info row. y: n_t × n scratch.
template <class Ctx>
SLIMFAST_BLOCK void finish_block(const Ctx& ctx, const Projections& p, double mu, double m, double Lambda_prev,
                                 double c, const double* W, double* W_out, double* info, double* ev, double* y) {
  const int nf = p.n_f;
  const long ntf = (long)p.n_t * nf;
  const SgcvPoint pt = eval_point(ctx, p, m, Lambda_prev, mu, ev);
  const double lam = mu - Lambda_prev;
  const double* d = ev;
  ctx.par([&](int tid, int nthr) {
    for (long e = tid; e < ntf; e += nthr) y[e] = (p.Bt[e] + lam * p.Wt[e]) * d[e % nf];
  });
  ctx.par([&](int tid, int nthr) {
    for (long e = tid; e < ntf; e += nthr) {
      const int t = (int)(e / nf), i = (int)(e % nf);
      const double* yt = y + (long)t * nf;
      const double* u = p.U + (long)i * nf;
      double acc = 0.0;
      for (int j = 0; j < nf; ++j) acc += yt[j] * u[j];
      W_out[e] = W[e] - acc;
    }
    if (tid == 0) info_row(p, mu, Lambda_prev, pt, c, info);
  });
}

// ---------------------------------------------------------------------------------------------
// One problem b of a batched launch.
// ---------------------------------------------------------------------------------------------
struct StepArgs {
  int n, nt;
  bool memory_empty;
  StepOptions opts;
  const double *G_mem, *G, *H, *c, *m, *W, *Lambda_prev;
  const double* U0;  // [B, n, n] warm start or null
  // Eigenpairs of G_mem computed elsewhere (e.g. cuSOLVER), or null: s_in [B, n] ascending,
  // U_in [B, n, n] eigenvectors as columns. Given, the block skips its Jacobi sweeps.
  const double *s_in, *U_in;
  double *W_out, *info;
  double* U_out;  // [B, n, n] eigenvectors of G_mem (for the next warm start) or null
  double* ws;     // [B, ws_stride]
  long ws_stride;
  double jacobi_tol;
  int max_sweeps;
  int shared_level;  // jacobi_storage level; `smem` holds jacobi_shared_doubles(n, shared_level)
};

// The launch arguments of one step (the CUDA launcher and the host emulation both use this).
inline StepArgs step_args(int n_f, int n_t, const double* G_mem, const double* G, const double* H, const double* c,
                          const double* m, const double* W, const double* Lambda_prev, bool memory_empty,
                          const StepOptions& opts, const double* U0, const double* s_in, const double* U_in,
                          double* W_out, double* info, double* U_out, double* workspace, double jacobi_tol,
                          int max_sweeps, int shared_level) {
  StepArgs a{};
  a.n = n_f;
  a.nt = n_t;
  a.memory_empty = memory_empty;
  a.opts = opts;
  a.G_mem = G_mem;
  a.G = G;
  a.H = H;
  a.c = c;
  a.m = m;
  a.W = W;
  a.Lambda_prev = Lambda_prev;
  a.U0 = U0;
  a.s_in = s_in;
  a.U_in = U_in;
  a.W_out = W_out;
  a.info = info;
  a.U_out = U_out;
  a.ws = workspace;
  a.ws_stride = step_layout(n_f, n_t, opts.n_grid, memory_empty).total;
  a.jacobi_tol = jacobi_tol;
  a.max_sweeps = max_sweeps;
  a.shared_level = U_in != nullptr ? 0 : shared_level;  // given eigenpairs: no Jacobi matrices
  return a;
}

template <class Ctx>
SLIMFAST_BLOCK void slimtik_problem(const Ctx& ctx, const StepArgs& a, long b, double* smem) {
  const int n = a.n;
  const long nn = (long)n * n, ntf = (long)a.nt * n;
  const StepLayout L = step_layout(n, a.nt, a.opts.n_grid, a.memory_empty);
  double* ws = a.ws + b * a.ws_stride;
  const JacobiStorage J = jacobi_storage(n, a.shared_level, smem, ws + L.jac_M, ws + L.jac_Vt, ws + L.rot);
  double* U = ws + L.U;
  double* s = ws + L.s;
  if (a.U_in != nullptr) {
    const double* s_in = a.s_in + b * n;
    const double* U_in = a.U_in + b * nn;
    ctx.par([&](int tid, int nthr) {
      for (int j = tid; j < n; j += nthr) s[j] = s_in[j];
      for (long e = tid; e < nn; e += nthr) U[e] = U_in[e];
    });
  } else {
    jacobi_block(ctx, n, a.G_mem + b * nn, a.U0 ? a.U0 + b * nn : nullptr, J.M, J.Vt, J.rot, a.jacobi_tol,
                 a.max_sweeps);
    jacobi_extract(ctx, n, J.M, J.Vt, s, U, ws + L.perm);
  }
  if (a.U_out) {
    double* U_out = a.U_out + b * nn;
    ctx.par([&](int tid, int nthr) {
      for (long e = tid; e < nn; e += nthr) U_out[e] = U[e];
    });
  }
  Projections p;
  double* work = projections_bind(p, n, a.nt, a.memory_empty, ws + L.proj);
  p.s = s;
  p.U = U;
  const double c = a.c[b], m = a.m[b], Lambda_prev = a.Lambda_prev[b];
  // M's and Vt's global regions are free now (the eigenpairs are in U, s): T and K go there.
  precompute_block(ctx, p, s, a.G + b * nn, a.H + b * ntf, c, a.W + b * ntf, ws + L.jac_M, ws + L.jac_Vt, work);
  const double mu = select_mu_block(ctx, p, m, Lambda_prev, a.opts, ws + L.pt_t, ws + L.pt_mu, ws + L.pt_f,
                                    ws + L.pt_g, ws + L.D, a.memory_empty ? nullptr : ws + L.QD, ws + L.ev);
  finish_block(ctx, p, mu, m, Lambda_prev, c, a.W + b * ntf, a.W_out + b * ntf, a.info + b * SLIMFAST_N_INFO,
               ws + L.ev, work);
}

struct JacobiArgs {
  int n;
  const double* A;   // [B, n, n]
  const double* U0;  // [B, n, n] or null
  double *s, *U;     // [B, n], [B, n, n]
  int* sweeps;       // [B] or null
  double* ws;        // [B, ws_stride]
  long ws_stride;
  double tol;
  int max_sweeps;
  int shared_level;  // as StepArgs
};

inline JacobiArgs jacobi_args(int n, const double* A, const double* U0, double* s, double* U, int* sweeps,
                              double* workspace, double tol, int max_sweeps, int shared_level) {
  JacobiArgs a{};
  a.n = n;
  a.A = A;
  a.U0 = U0;
  a.s = s;
  a.U = U;
  a.sweeps = sweeps;
  a.ws = workspace;
  a.ws_stride = jacobi_layout(n).total;
  a.tol = tol;
  a.max_sweeps = max_sweeps;
  a.shared_level = shared_level;
  return a;
}

template <class Ctx>
SLIMFAST_BLOCK void jacobi_problem(const Ctx& ctx, const JacobiArgs& a, long b, double* smem) {
  const int n = a.n;
  const long nn = (long)n * n;
  const JacobiLayout L = jacobi_layout(n);
  double* ws = a.ws + b * a.ws_stride;
  const JacobiStorage J = jacobi_storage(n, a.shared_level, smem, ws + L.jac_M, ws + L.jac_Vt, ws + L.rot);
  const int sw =
      jacobi_block(ctx, n, a.A + b * nn, a.U0 ? a.U0 + b * nn : nullptr, J.M, J.Vt, J.rot, a.tol, a.max_sweeps);
  jacobi_extract(ctx, n, J.M, J.Vt, a.s + b * n, a.U + b * nn, ws + L.perm);
  if (a.sweeps)
    ctx.par([&](int tid, int) {
      if (tid == 0) a.sweeps[b] = sw;
    });
}

}  // namespace slimfast
