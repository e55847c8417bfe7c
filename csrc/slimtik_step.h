// The slimTik step for one problem (method.md §2–4; twin: slimfast._torch_impl._slimtik_step),
// composed once from the leaf functions of csrc/slimfast_math.h as templates over an execution
// context. Every backend in C++ runs this composition: the CPU launcher
// (csrc/cpu/slimtik_step_cpu.cpp) with one thread and BLAS/LAPACK hooks, the CUDA kernel
// (csrc/cuda/slimtik_step_cuda.cu) with one thread block per problem, and the CUDA kernel's host
// emulation (csrc/cpu/slimtik_step_emulate.cpp, in every CPU build) with simulated threads.
//
// A context `ctx` provides
//   ctx.par(f)            every thread runs f(tid, nthr), then a block barrier;
//   ctx.sums<K>(f, out)   every thread adds its terms to acc[K] in f(tid, nthr, acc); the totals
//                         reach every thread in out[K];
// and the hooks that hold the O(n³) and O(n²) work (where the CPU calls BLAS/LAPACK and a block
// runs the ctx.par loops of csrc/slimtik_loops.h):
//   ctx.eigh(n, A, U0, s, Ut, scratch, tol, max_sweeps)  G_mem = U diag(s) Uᵀ, s ascending; 0 or
//                                                        the eigensolver's failure code (the
//                                                        Jacobi's own hook: ctx.jacobi_round)
//   ctx.times_gram(nt, n, W, G, WG)                      WG = W G
//   ctx.to_eigenbasis(rows, n, X, Ut, out)               out = X U
//   ctx.form_q(p, Ut, G, K, T)                           full memory: p.k and what q_times_d needs
//                                                        (Q0..Q2, or a factor of K̃ = Uᵀ G U)
//   ctx.q_times_d(p, npts, D, QD)                        QD[i] = (Q0 d_i | Q1 d_i | Q2 d_i)
//   ctx.from_eigenbasis(nt, n, Y, Ut, W, W_out)          W_out = W − Y Uᵀ
// Code outside par/sums/hooks is run by every thread with identical values ("uniform"), so a
// block never diverges at a barrier. Rules that keep the host emulation faithful to the GPU:
//   1. Inside one ctx.par, no work item reads what another work item of the same par writes.
//   2. Memory read outside a par (uniform reads) is never written afterwards by the same block.
//   3. Only ctx.par (and the hooks) write memory.
// Ut [n, n] holds the eigenvectors as rows (csrc/slimtik_loops.h).
#pragma once

#include "slimfast_math.h"
#include "slimtik_loops.h"

namespace slimfast {

// The context of a single thread: par and sums run their body once, and a Jacobi round applies
// its rotations one after another. The CPU launcher's context adds BLAS/LAPACK hooks to it.
struct SerialCtx {
  template <class F>
  void par(F&& f) const {
    f(0, 1);
  }
  template <int K, class F>
  void sums(F&& f, double* out) const {
    for (int k = 0; k < K; ++k) out[k] = 0.0;
    f(0, 1, out);
  }
  void jacobi_round(int np, int P, double* M, double* Vt, const double* rot) const {
    jacobi_round_serial(np, P, M, Vt, rot);
  }
};

// Trial points a workspace must hold: the sGCV grid or the 60 reference candidates.
SLIMFAST_HD inline int step_points(int n_grid) {
  return n_grid > 2 * SLIMFAST_N_REFERENCE_POINTS ? n_grid : 2 * SLIMFAST_N_REFERENCE_POINTS;
}

// Workspace of one problem (doubles). `eig` is the eigensolver's scratch (jacobi_layout), reused
// afterwards for K = Uᵀ G U and its intermediate T (n² each).
struct StepLayout {
  long eig, U, s, proj;          // eigensolver scratch, Ut [n, n], s [n], Projections buffer
  long pt_t, pt_mu, pt_f, pt_g;  // trial points [npts] each
  long D, QD;                    // [npts, n], [npts, 3, n] (QD only with a full memory)
  long ev;                       // one-point evaluation: d, Q0d, Q1d, Q2d [4, n]
  long total;
};

SLIMFAST_HD inline StepLayout step_layout(int n, int nt, int n_grid, bool memory_empty) {
  const long npts = step_points(n_grid);
  StepLayout L;
  L.eig = 0;
  L.U = L.eig + jacobi_layout(n).total;
  L.s = L.U + (long)n * n;
  L.proj = L.s + n;
  L.pt_t = L.proj + projections_doubles(n, nt, memory_empty);
  L.pt_mu = L.pt_t + npts;
  L.pt_f = L.pt_mu + npts;
  L.pt_g = L.pt_f + npts;
  L.D = L.pt_g + npts;
  L.QD = L.D + npts * n;
  L.ev = L.QD + (memory_empty ? 0L : 3L * npts * n);
  L.total = L.ev + 4L * n;
  return L;
}

// ---------------------------------------------------------------------------------------------
// _sgcv_precompute after the eigendecomposition. p bound (projections_bind) with p.s = s; s is
// clipped in place (G_mem is PSD, rounding is not) and the null space masked. With a full memory
// K, T [n, n] are scratch for form_q. work: 2 n_t × n.
// ---------------------------------------------------------------------------------------------
template <class Ctx>
SLIMFAST_BLOCK void sgcv_precompute(Ctx& ctx, Projections& p, double* s, const double* Ut, const double* G,
                                    const double* H, double c, const double* W, double* K, double* T, double* work) {
  const int nf = p.n_f, nt = p.n_t;
  const long ntf = (long)nt * nf;
  double* X = work;  // [W G − H; W]
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
  });
  ctx.times_gram(nt, nf, W, G, X);
  double r[2];  // res0 = Σ (W G)∘W − 2 Σ W∘H + c
  ctx.template sums<2>(
      [&](int tid, int nthr, double* acc) {
        for (long e = tid; e < ntf; e += nthr) {
          acc[0] += X[e] * W[e];
          acc[1] += W[e] * H[e];
        }
      },
      r);
  p.res0 = r[0] - 2.0 * r[1] + c;
  ctx.par([&](int tid, int nthr) {
    for (long e = tid; e < ntf; e += nthr) {
      X[e] -= H[e];
      X[ntf + e] = W[e];
    }
  });
  ctx.to_eigenbasis(2 * nt, nf, X, Ut, p.Bt);  // B̃ = (W G − H) U and W̃ = W U (adjacent)
  // Null-space columns of B̃, then a_j = Σ_t B̃_tj², b_j = Σ_t B̃_tj W̃_tj (and the diagonal Q's).
  ctx.par([&](int tid, int nthr) {
    for (int j = tid; j < nf; j += nthr) {
      double a = 0.0, b = 0.0;
      for (int t = 0; t < nt; ++t) {
        double& bt = p.Bt[(long)t * nf + j];
        if (s[j] == 0.0) bt = 0.0;
        a += bt * bt;
        b += bt * p.Wt[(long)t * nf + j];
      }
      p.a[j] = a;
      p.b[j] = b;
      if (p.diagonal) q_diagonal_at(p, s, j);  // reads a_j, b_j of this work item only
    }
  });
  if (!p.diagonal) ctx.form_q(p, Ut, G, K, T);
}

// ---------------------------------------------------------------------------------------------
// _sgcv_eval at npts trial points mu [npts]: f, g [npts]. With `admissible_only`, points outside
// [mu_lo, mu_hi] (or NaN) get f = +inf, g = NaN without evaluation (reference mode, as the
// twin's masking). D [npts, n] and (full memory) QD [npts, 3, n] are scratch.
// ---------------------------------------------------------------------------------------------
template <class Ctx>
SLIMFAST_BLOCK void sgcv_eval_points(Ctx& ctx, const Projections& p, double m, double Lambda_prev, int npts,
                                     const double* mu, bool admissible_only, double mu_lo, double mu_hi, double* D,
                                     double* QD, double* f, double* g) {
  const int nf = p.n_f;
  ctx.par([&](int tid, int nthr) {
    for_items(tid, nthr, npts, nf, [&](int i, int j, long e) { D[e] = 1.0 / (p.s[j] + mu[i]); });
  });
  if (!p.diagonal) ctx.q_times_d(p, npts, D, QD);
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

// _sgcv_eval at one μ with all threads: ev [4, n] scratch (on return ev[0..n) = d = 1/(s + μ)).
template <class Ctx>
SLIMFAST_BLOCK SgcvPoint sgcv_eval(Ctx& ctx, const Projections& p, double m, double Lambda_prev, double mu, double* ev) {
  const int nf = p.n_f;
  double* d = ev;
  double* qd = ev + nf;  // Q0 d | Q1 d | Q2 d
  ctx.par([&](int tid, int nthr) {
    for (int j = tid; j < nf; j += nthr) d[j] = 1.0 / (p.s[j] + mu);
  });
  if (!p.diagonal) ctx.q_times_d(p, 1, d, qd);
  const double lam = mu - Lambda_prev;
  double acc[SLIMFAST_SGCV_NSUMS];
  ctx.template sums<SLIMFAST_SGCV_NSUMS>(
      [&](int tid, int nthr, double* a) {
        for (int j = tid; j < nf; j += nthr) {
          if (p.diagonal)
            sgcv_accumulate(p, lam, j, d[j], 0.0, 0.0, 0.0, a);
          else
            sgcv_accumulate(p, lam, j, d[j], qd[j], qd[nf + j], qd[2 * nf + j], a);
        }
      },
      acc);
  return sgcv_from_sums(p, m, acc);
}

// The dense step's sGCV evaluator for select_mu (the block step has its own in
// csrc/slimtik_block_step.h): points() evaluates a set of trial points (sgcv_eval_points), point()
// one μ with all threads (sgcv_eval). D, QD as sgcv_eval_points, ev as sgcv_eval.
struct DenseSgcv {
  const Projections& p;
  double m, Lambda_prev;
  double *D, *QD, *ev;

  template <class Ctx>
  SLIMFAST_BLOCK void points(Ctx& ctx, int npts, const double* mu, bool admissible_only, double mu_lo, double mu_hi,
                             double* f, double* g) const {
    sgcv_eval_points(ctx, p, m, Lambda_prev, npts, mu, admissible_only, mu_lo, mu_hi, D, QD, f, g);
  }
  template <class Ctx>
  SLIMFAST_BLOCK SgcvPoint point(Ctx& ctx, double mu) const {
    return sgcv_eval(ctx, p, m, Lambda_prev, mu, ev);
  }
};

// _illinois_root: root of g(t) = eval.point(exp t).g on [ta, tb] (g(ta), g(tb) of opposite signs),
// every thread holding the same iteration state. Eval: DenseSgcv or the block step's BlockSgcv.
template <class Ctx, class Eval>
SLIMFAST_BLOCK double illinois_root(Ctx& ctx, double ta, double tb, double ga, double gb, const Eval& eval,
                                    const StepOptions& o) {
  IllinoisState st = illinois_start(ta, tb, ga, gb);
  for (int it = 0; it < o.max_root_iter; ++it) {
    const double c = illinois_next(st);
    if (illinois_feed(st, eval.point(ctx, exp(c)).g, o)) break;
  }
  return st.c;
}

// _select_mu (with its `evaluate=`): the new Λ_k by config mode, the one λ search of the dense and
// the block step. Trial points pt_* [npts]; `eval` evaluates sGCV (points / point, as DenseSgcv).
template <class Ctx, class Eval>
SLIMFAST_BLOCK double select_mu(Ctx& ctx, const Eval& eval, double Lambda_prev, const StepOptions& o, double* pt_t,
                                double* pt_mu, double* pt_f, double* pt_g) {
  double mu_lo, mu_hi;
  admissible_interval(Lambda_prev, o, &mu_lo, &mu_hi);
  if (o.mode == SLIMFAST_MODE_CONSTANT) return constant_mu(Lambda_prev, mu_lo, mu_hi, o);
  if (o.mode == SLIMFAST_MODE_REFERENCE) {
    const int n = 2 * SLIMFAST_N_REFERENCE_POINTS;
    ctx.par([&](int tid, int nthr) {
      for (int i = tid; i < n; i += nthr) pt_mu[i] = Lambda_prev + reference_candidate(i, Lambda_prev, o);
    });
    eval.points(ctx, n, pt_mu, true, mu_lo, mu_hi, pt_f, pt_g);
    return reference_pick(pt_mu, pt_f, Lambda_prev, mu_lo, mu_hi);
  }
  const int n = o.n_grid;
  ctx.par([&](int tid, int nthr) {
    for (int i = tid; i < n; i += nthr) {
      pt_t[i] = grid_t(mu_lo, mu_hi, n, i);
      pt_mu[i] = exp(pt_t[i]);
    }
  });
  eval.points(ctx, n, pt_mu, false, mu_lo, mu_hi, pt_f, pt_g);
  const GridBracket br = grid_bracket(pt_t, pt_f, pt_g, n, mu_lo, mu_hi);
  const double t_star =
      br.bracketed ? illinois_root(ctx, br.t_other, br.t_best, br.g_other, br.g_best, eval, o) : br.t_best;
  return clamp_max(clamp_min(exp(t_star), mu_lo), mu_hi);
}

// End of _slimtik_step, μ = Λ_k chosen: W_out = W − ((B̃ + λW̃)∘d) Uᵀ and the info row.
// Y: n_t × n scratch.
template <class Ctx>
SLIMFAST_BLOCK void finish_step(Ctx& ctx, const Projections& p, const double* Ut, double mu, double m,
                                double Lambda_prev, double c, const double* W, double* W_out, double* info, double* ev,
                                double* Y) {
  const SgcvPoint pt = sgcv_eval(ctx, p, m, Lambda_prev, mu, ev);
  const double lam = mu - Lambda_prev;
  ctx.par([&](int tid, int nthr) {
    for_items(tid, nthr, p.n_t, p.n_f, [&](int, int j, long e) { Y[e] = update_direction_at(p, lam, ev[j], e); });
  });
  ctx.from_eigenbasis(p.n_t, p.n_f, Y, Ut, W, W_out);
  ctx.par([&](int tid, int) {
    if (tid == 0) info_row(p, mu, Lambda_prev, pt, c, info);
  });
}

// ---------------------------------------------------------------------------------------------
// One problem b of a batched step.
// ---------------------------------------------------------------------------------------------
struct StepArgs {
  int n, nt;
  bool memory_empty;
  StepOptions opts;
  const double *G_mem, *G, *H, *c, *m, *W, *Lambda_prev;  // [B, ...] as _slimtik_step
  const double* U0;  // [B, n, n] warm start of the Jacobi eigensolver (columns) or null
  // Eigenpairs of G_mem computed elsewhere (cuSOLVER, LAPACK), or null: s_in [B, n] ascending,
  // U_in [B, n, n] eigenvectors as columns, or as rows with U_in_rows. Given, eigh is skipped.
  const double *s_in, *U_in;
  bool U_in_rows;
  double *W_out, *info;  // [B, n_t, n], [B, SLIMFAST_N_INFO]
  double* U_out;         // [B, n, n] eigenvectors of G_mem as columns (the next warm start) or null
  double* ws;            // workspace of problem b: ws + b·ws_stride, step_layout(...).total doubles
  long ws_stride;        // 0 when the caller hands each thread its own ws
  double jacobi_tol;
  int max_sweeps;
  int shared_level;  // block contexts: where their Jacobi matrices live (csrc/cuda/block_context.cuh)
};

// The step's arguments with ws_stride = step_layout(...).total (one workspace per problem).
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
  a.U_in_rows = false;
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

// The whole step for problem b. Returns 0, or the eigensolver's failure code (nothing written).
template <class Ctx>
SLIMFAST_BLOCK int slimtik_problem(Ctx& ctx, const StepArgs& a, long b) {
  const int n = a.n;
  const long nn = (long)n * n, ntf = (long)a.nt * n;
  const StepLayout L = step_layout(n, a.nt, a.opts.n_grid, a.memory_empty);
  double* ws = a.ws + b * a.ws_stride;
  double* Ut = ws + L.U;
  double* s = ws + L.s;
  if (a.U_in != nullptr) {
    const double* s_in = a.s_in + b * n;
    const double* U_in = a.U_in + b * nn;
    ctx.par([&](int tid, int nthr) {
      for (int j = tid; j < n; j += nthr) s[j] = s_in[j];
      for_items(tid, nthr, n, n, [&](int i, int j, long e) { Ut[e] = a.U_in_rows ? U_in[e] : U_in[(long)j * n + i]; });
    });
  } else {
    const int failed = ctx.eigh(n, a.G_mem + b * nn, a.U0 ? a.U0 + b * nn : nullptr, s, Ut, ws + L.eig,
                                a.jacobi_tol, a.max_sweeps);
    if (failed != 0) return failed;
  }
  if (a.U_out) {
    double* U_out = a.U_out + b * nn;
    ctx.par([&](int tid, int nthr) {
      for_items(tid, nthr, n, n, [&](int i, int j, long e) { U_out[e] = Ut[(long)j * n + i]; });
    });
  }
  Projections p;
  double* work = projections_bind(p, n, a.nt, a.memory_empty, ws + L.proj);
  p.s = s;
  const double c = a.c[b], m = a.m[b], Lambda_prev = a.Lambda_prev[b];
  // The eigensolver's scratch is free now: K and T go there (jacobi_layout: two n² regions first).
  sgcv_precompute(ctx, p, s, Ut, a.G + b * nn, a.H + b * ntf, c, a.W + b * ntf, ws + L.eig, ws + L.eig + nn, work);
  const DenseSgcv eval{p, m, Lambda_prev, ws + L.D, a.memory_empty ? nullptr : ws + L.QD, ws + L.ev};
  const double mu = select_mu(ctx, eval, Lambda_prev, a.opts, ws + L.pt_t, ws + L.pt_mu, ws + L.pt_f, ws + L.pt_g);
  finish_step(ctx, p, Ut, mu, m, Lambda_prev, c, a.W + b * ntf, a.W_out + b * ntf, a.info + b * SLIMFAST_N_INFO,
              ws + L.ev, work);
  return 0;
}

}  // namespace slimfast
