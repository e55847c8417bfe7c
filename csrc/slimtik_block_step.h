// The block-structured slimTik step for one problem (method.md §6 "Phase blocks"; twin:
// slimfast._torch_block._slimtik_block_step), composed once as templates over the execution
// contexts of csrc/slimtik_step.h (same ctx.par / ctx.sums / hooks and the same three rules), so
// the CPU launcher (csrc/cpu/block_step_cpu.cpp), the CUDA kernel (csrc/cuda/slimtik_step_cuda.cu)
// and its host emulation (csrc/cpu/slimtik_step_emulate.cpp) run this one composition.
//
// Features come in P contiguous diagonal blocks (offsets off[0..P], n_c = off[P]) and, with a
// border, one last feature that couples to all of them:
//   G_mem = [[blockdiag(G_1, …, G_P), g], [gᵀ, α]]   (G the same, with k_b and γ).
// Entries between blocks are never read. Per block G_p = U_p diag(s_p) U_pᵀ (ctx.eigh of order
// n_p); in the basis P = blockdiag(U_p) ⊕ 1 the inverse of G_mem + μI is a diagonal plus rank one,
//   A(μ) = P (D̂ + u uᵀ/σ) Pᵀ,  d = 1/(s + μ),  e = d∘z,  u = (−e, 1),  σ = α + μ − z·e,
// so one trial μ costs O(n_t Σ n_p² + n_t n_f) (the twin's module docstring has every formula).
// The λ search is the dense step's select_mu, with the evaluator BlockSgcv (csrc/slimtik_block_sgcv.h).
//
// Hooks this step adds to a context (CPU: csrc/cpu/cpu_context.h; blocks: block_context.cuh):
//   ctx.project_gram(n, Ut, G, K, T)       K = Uᵀ G U [n, n] of one block (T: n² scratch)
//   ctx.blockdiag_times(bd, rows, X, ldx, M, ldm, shifted, out, ldo)
//                                          out[r, :n_c] = X[r, :n_c] blockdiag(M_p), block p's
//                                          element (i, j) at M[(lo + i)·ldm + (shifted ? lo : 0) + j]
// Storage: K of block p in rows of length nmax (K[(lo + i)·nmax + j]); the eigenvectors packed,
// block after block, each n_p × n_p with the eigenvectors as rows (as Ut in csrc/slimtik_loops.h).
#pragma once

#include "slimtik_block_sgcv.h"
#include "slimtik_step.h"

namespace slimfast {

// Workspace of one problem (doubles).
struct BlockStepLayout {
  long s, Ut, K, kd, z, kb, Bt, Wt;  // what every trial μ reads: s, kd, z, kb [n_c], Ut, K [n_c·nmax]
  long A, T, Kp, Xg, Og, eig;        // one block's scratch: [nmax²] ×3, [(2 n_t + 2)·nmax] ×2, eigensolver
  long d, e, Ke, X, Y, YG, M, rows;  // a group of trial points: [g, n_c] ×3, [g, n_t, n_f] ×3, [n_t, n_f], [2 n_t]
  long pt_t, pt_mu, pt_f, pt_g;      // trial points [step_points(n_grid)] each
  long total;
};

SLIMFAST_HD inline BlockStepLayout block_step_layout(const BlockDims& bd, int n_f, int n_t, int n_grid) {
  const long nc = bd.n_c, nm = bd.nmax, ntf = (long)n_t * n_f, npts = step_points(n_grid);
  const long chunk = block_points_chunk(n_t);
  const long rg = (2L * n_t + 2) * nm;
  BlockStepLayout L;
  L.s = 0;
  L.Ut = L.s + nc;
  L.K = L.Ut + nc * nm;
  L.kd = L.K + nc * nm;
  L.z = L.kd + nc;
  L.kb = L.z + nc;
  L.Bt = L.kb + nc;
  L.Wt = L.Bt + ntf;
  L.A = L.Wt + ntf;
  L.T = L.A + nm * nm;
  L.Kp = L.T + nm * nm;
  L.Xg = L.Kp + nm * nm;
  L.Og = L.Xg + rg;
  L.eig = L.Og + rg;
  L.d = L.eig + jacobi_layout(bd.nmax).total;
  L.e = L.d + chunk * nc;
  L.Ke = L.e + chunk * nc;
  L.X = L.Ke + chunk * nc;
  L.Y = L.X + chunk * ntf;
  L.YG = L.Y + chunk * ntf;
  L.M = L.YG + chunk * ntf;
  L.rows = L.M + ntf;
  L.pt_t = L.rows + 2L * n_t;
  L.pt_mu = L.pt_t + npts;
  L.pt_f = L.pt_mu + npts;
  L.pt_g = L.pt_f + npts;
  L.total = L.pt_g + npts;
  return L;
}

// ---------------------------------------------------------------------------------------------
// The block hooks as ctx.par loops (what a CUDA block runs; the CPU has BLAS/axpy versions).
// ---------------------------------------------------------------------------------------------
template <class Ctx>
SLIMFAST_BLOCK void loop_project_gram(Ctx& ctx, int n, const double* Ut, const double* G, double* K, double* T) {
  loop_times_transposed(ctx, n, n, n, Ut, G, T);  // T = Uᵀ Gᵀ
  loop_times_transposed(ctx, n, n, n, Ut, T, K);  // K = Uᵀ (G U)
}

// One work item per output element; consecutive threads read consecutive columns of M.
template <class Ctx>
SLIMFAST_BLOCK void loop_blockdiag_times(Ctx& ctx, const BlockDims& bd, int rows, const double* X, int ldx,
                                         const double* M, int ldm, bool shifted, double* out, int ldo) {
  ctx.par([&](int tid, int nthr) {
    for_items(tid, nthr, rows, bd.n_c, [&](int r, int j, long) {
      const int q = block_of(bd, j);
      const int lo = bd.off[q], np = bd.off[q + 1] - lo;
      const double* x = X + (long)r * ldx + lo;
      const double* col = M + (long)lo * ldm + (shifted ? lo : 0) + (j - lo);
      double acc = 0.0;
      for (int i = 0; i < np; ++i) acc += x[i] * col[(long)i * ldm];
      out[(long)r * ldo + j] = acc;
    });
  });
}


// ---------------------------------------------------------------------------------------------
// One problem b of a batched block step.
// ---------------------------------------------------------------------------------------------
struct BlockStepArgs {
  StepArgs step;  // U0, s_in, U_in, U_out unused (the block step keeps no eigenvectors)
  BlockDims bd;
};

// The block step's arguments with ws_stride = block_step_layout(...).total (one workspace per
// problem); shared_level as StepArgs (where the block contexts keep their Jacobi matrices).
inline BlockStepArgs block_step_args(int n_f, int n_t, const double* G_mem, const double* G, const double* H,
                                     const double* c, const double* m, const double* W, const double* Lambda_prev,
                                     const BlockDims& bd, const StepOptions& opts, double* W_out, double* info,
                                     double* workspace, double jacobi_tol, int max_sweeps, int shared_level) {
  BlockStepArgs a;
  a.step = step_args(n_f, n_t, G_mem, G, H, c, m, W, Lambda_prev, false, opts, nullptr, nullptr, nullptr, W_out, info,
                     nullptr, workspace, jacobi_tol, max_sweeps, shared_level);
  a.step.ws_stride = block_step_layout(bd, n_f, n_t, opts.n_grid).total;
  a.bd = bd;
  return a;
}

// Returns 0, or the eigensolver's failure code of the first failing block (nothing written).
template <class Ctx>
SLIMFAST_BLOCK int slimtik_block_problem(Ctx& ctx, const BlockStepArgs& args, long b) {
  const StepArgs& a = args.step;
  const BlockDims& bd = args.bd;
  const int nf = a.n, nt = a.nt, nc = bd.n_c, nmax = bd.nmax;
  const bool border = bd.border;
  const long nn = (long)nf * nf, ntf = (long)nt * nf;
  const BlockStepLayout L = block_step_layout(bd, nf, nt, a.opts.n_grid);
  double* ws = a.ws + b * a.ws_stride;
  const double *Gm = a.G_mem + b * nn, *G = a.G + b * nn, *H = a.H + b * ntf, *W = a.W + b * ntf;
  double *s = ws + L.s, *Ut = ws + L.Ut, *K = ws + L.K, *kd = ws + L.kd, *z = ws + L.z, *kb = ws + L.kb;
  double *Bt = ws + L.Bt, *Wt = ws + L.Wt, *A = ws + L.A, *Xg = ws + L.Xg, *Og = ws + L.Og;

  // Eigenpairs of every diagonal block of G_mem (copied to contiguous scratch first).
  long uoff = 0;
  for (int q = 0; q < bd.P; ++q) {
    const int lo = bd.off[q], np = bd.off[q + 1] - lo;
    ctx.par([&](int tid, int nthr) {
      for_items(tid, nthr, np, np, [&](int i, int j, long e) { A[e] = Gm[(long)(lo + i) * nf + lo + j]; });
    });
    const int failed = ctx.eigh(np, A, nullptr, s + lo, Ut + uoff, ws + L.eig, a.jacobi_tol, a.max_sweeps);
    if (failed != 0) return failed;
    uoff += (long)np * np;
  }
  // Largest and smallest raw eigenvalue (each block ascending), through a reduction so every
  // thread holds them before any thread clips s.
  const double alpha = border ? Gm[(long)nc * nf + nc] : 0.0;
  const double gamma = border ? G[(long)nc * nf + nc] : 0.0;
  double ends[2];
  ctx.template sums<2>(
      [&](int tid, int, double* acc) {
        if (tid == 0) {
          double hi = s[bd.off[1] - 1], lo = s[0];
          for (int q = 1; q < bd.P; ++q) {
            hi = nan_max(hi, s[bd.off[q + 1] - 1]);
            lo = nan_min(lo, s[bd.off[q]]);
          }
          acc[0] = hi;
          acc[1] = lo;
        }
      },
      ends);
  const double top = nan_max(ends[0], alpha);  // the corner α counts as one more 1 × 1 block
  const double scale = nan_max(top, -ends[1]);
  const double low = border ? nan_min(ends[1], alpha) : ends[1];
  const double eig_min = scale > 0 ? low / scale : 0.0;
  const double thr = null_threshold(nf, top);
  ctx.par([&](int tid, int nthr) {
    for (int j = tid; j < nc; j += nthr) s[j] = clipped_eigenvalue(s[j], thr);
  });

  // W G by blocks into Bt, res0 = Σ (W G)∘W − 2 Σ W∘H + c, then B' = W G − H and W' = W.
  ctx.blockdiag_times(bd, nt, W, nf, G, nf, true, Bt, nf);
  ctx.par([&](int tid, int nthr) {
    for_items(tid, nthr, nt, nf, [&](int t, int j, long e) {
      const double* w = W + (long)t * nf;
      if (j < nc) {
        if (border) Bt[e] += w[nc] * G[(long)nc * nf + j];
      } else {
        double acc = 0.0;
        for (int i = 0; i < nc; ++i) acc += w[i] * G[(long)i * nf + nc];
        Bt[e] = acc + w[nc] * gamma;
      }
    });
  });
  double r[2];
  ctx.template sums<2>(
      [&](int tid, int nthr, double* acc) {
        for (long e = tid; e < ntf; e += nthr) {
          acc[0] += Bt[e] * W[e];
          acc[1] += W[e] * H[e];
        }
      },
      r);
  const double c = a.c[b], m = a.m[b], Lambda_prev = a.Lambda_prev[b];
  const double res0 = r[0] - 2.0 * r[1] + c;
  ctx.par([&](int tid, int nthr) {
    for (long e = tid; e < ntf; e += nthr) {
      Bt[e] -= H[e];
      Wt[e] = W[e];
    }
  });

  // Per block: [B'_p; W_p; g_mem,p; g_p] U_p in one product, K_p = U_pᵀ G_p U_p, null space masked.
  const int rg = 2 * nt + (border ? 2 : 0);
  uoff = 0;
  for (int q = 0; q < bd.P; ++q) {
    const int lo = bd.off[q], np = bd.off[q + 1] - lo;
    const double* Uq = Ut + uoff;
    ctx.par([&](int tid, int nthr) {
      for_items(tid, nthr, rg, np, [&](int row, int j, long e) {
        const int col = lo + j;
        Xg[e] = row < nt        ? Bt[(long)row * nf + col]
                : row < 2 * nt  ? W[(long)(row - nt) * nf + col]
                : row == 2 * nt ? Gm[(long)col * nf + nc]
                                : G[(long)col * nf + nc];
      });
      for_items(tid, nthr, np, np, [&](int i, int j, long e) { A[e] = G[(long)(lo + i) * nf + lo + j]; });
    });
    ctx.to_eigenbasis(rg, np, Xg, Uq, Og);
    ctx.project_gram(np, Uq, A, ws + L.Kp, ws + L.T);
    const double* Kp = ws + L.Kp;
    ctx.par([&](int tid, int nthr) {
      for_items(tid, nthr, nt, np, [&](int t, int j, long e) {
        const long o = (long)t * nf + lo + j;
        Bt[o] = s[lo + j] == 0.0 ? 0.0 : Og[e];
        Wt[o] = Og[(long)nt * np + e];
      });
      for (int j = tid; j < np; j += nthr) {
        const bool keep = s[lo + j] != 0.0;
        z[lo + j] = border && keep ? Og[(long)2 * nt * np + j] : 0.0;
        kb[lo + j] = border && keep ? Og[(long)(2 * nt + 1) * np + j] : 0.0;
      }
      for_items(tid, nthr, np, np, [&](int i, int j, long e) {
        const double k = s[lo + i] == 0.0 || s[lo + j] == 0.0 ? 0.0 : Kp[e];
        K[(long)(lo + i) * nmax + j] = k;
        if (i == j) kd[lo + i] = k;
      });
    });
    uoff += (long)np * np;
  }

  // λ search (the dense step's select_mu), then Y at the chosen μ.
  const BlockProj p{bd, nf, nt, s, K, kd, z, kb, Bt, Wt, alpha, gamma, res0};
  const BlockSgcv eval{p, m, Lambda_prev, ws + L.d, ws + L.e, ws + L.Ke, ws + L.X, ws + L.Y, ws + L.YG, ws + L.M,
                       ws + L.rows};
  const double mu = select_mu(ctx, eval, Lambda_prev, a.opts, ws + L.pt_t, ws + L.pt_mu, ws + L.pt_f, ws + L.pt_g);
  const SgcvPoint pt = eval.point(ctx, mu);
  const double* Y = eval.Y;

  // W_new = W − Y Pᵀ: per block W_p − Y_p U_pᵀ, the border W_b − y_b.
  double* W_out = a.W_out + b * ntf;
  uoff = 0;
  for (int q = 0; q < bd.P; ++q) {
    const int lo = bd.off[q], np = bd.off[q + 1] - lo;
    const long ntp = (long)nt * np;
    ctx.par([&](int tid, int nthr) {
      for_items(tid, nthr, nt, np, [&](int t, int j, long e) {
        Xg[e] = Y[(long)t * nf + lo + j];
        Xg[ntp + e] = W[(long)t * nf + lo + j];
      });
      if (q == 0 && border)
        for (int t = tid; t < nt; t += nthr) W_out[(long)t * nf + nc] = W[(long)t * nf + nc] - Y[(long)t * nf + nc];
    });
    ctx.from_eigenbasis(nt, np, Xg, Ut + uoff, Xg + ntp, Og);
    ctx.par([&](int tid, int nthr) {
      for_items(tid, nthr, nt, np, [&](int t, int j, long e) { W_out[(long)t * nf + lo + j] = Og[e]; });
    });
    uoff += (long)np * np;
  }

  // Info row: cond and eig_min of the blocks with α as one more 1 × 1 block.
  double s_first[1];
  ctx.template sums<1>(
      [&](int tid, int, double* acc) {
        if (tid == 0) {
          double lo = s[0];
          for (int q = 1; q < bd.P; ++q) lo = nan_min(lo, s[bd.off[q]]);
          acc[0] = lo;
        }
      },
      s_first);
  const double s_low = border ? nan_min(s_first[0], alpha) : s_first[0];
  double* info = a.info + b * SLIMFAST_N_INFO;
  ctx.par([&](int tid, int) {
    if (tid == 0) {
      info[0] = mu - Lambda_prev;
      info[1] = mu;
      info[2] = pt.f;
      info[3] = c > 0 ? sqrt(clamp_min(pt.R, 0.0) / c) : 0.0;
      info[4] = (top + mu) / (clamp_min(s_low, 0.0) + mu);
      info[5] = eig_min;
    }
  });
  return 0;
}

}  // namespace slimfast
