// The product hooks of the step (csrc/slimtik_step.h) written as ctx.par loops: what a CUDA
// thread block runs (DeviceCtx, and HostCtx in its host emulation). One work item per output
// element, so a block spreads every product over its threads; every inner loop runs over a
// contiguous row where the layout allows. (The CPU's context has BLAS and row-axpy versions:
// csrc/cpu/cpu_context.h.)
//
// Layouts: row-major; Ut [n, n] holds the eigenvectors of G_mem as ROWS (Ut[j*n + i] = component
// i of eigenvector j), which is LAPACK's column-major output read row-major.
#pragma once

#include "slimfast_math.h"

namespace slimfast {

// out = base + alpha·X M: X [rows, n], M [n, n], base (or null: 0) and out [rows, n]. The
// products W G (times_gram) and W − Y Uᵀ (from_eigenbasis, M = Ut) are both this.
template <class Ctx>
SLIMFAST_BLOCK void loop_times_matrix(Ctx& ctx, int rows, int n, const double* X, const double* M, double alpha,
                                      const double* base, double* out) {
  ctx.par([&](int tid, int nthr) {
    for_items(tid, nthr, rows, n, [&](int r, int i, long e) {
      const double* x = X + (long)r * n;
      double acc = 0.0;
      for (int l = 0; l < n; ++l) acc += x[l] * M[(long)l * n + i];
      out[e] = base ? base[e] + alpha * acc : alpha * acc;
    });
  });
}

// out = A Bᵀ: A [rows, n], B [cols, n], out [rows, cols]; both inner loops contiguous. With
// B = Ut this is X U (coordinates in the eigenbasis: to_eigenbasis).
template <class Ctx>
SLIMFAST_BLOCK void loop_times_transposed(Ctx& ctx, int rows, int cols, int n, const double* A, const double* B,
                                          double* out) {
  ctx.par([&](int tid, int nthr) {
    for_items(tid, nthr, rows, cols, [&](int r, int c, long e) {
      const double* x = A + (long)r * n;
      const double* y = B + (long)c * n;
      double acc = 0.0;
      for (int l = 0; l < n; ++l) acc += x[l] * y[l];
      out[e] = acc;
    });
  });
}

// Full memory: K̃ = Uᵀ G U into K [n, n] (T [n, n] scratch: (G U)ᵀ), then Q0..Q2 = K̃∘(products of
// B̃, W̃) and k = diag(K̃), null space masked (masked_gram, as q_from_products).
template <class Ctx>
SLIMFAST_BLOCK void loop_form_q(Ctx& ctx, Projections& p, const double* Ut, const double* G, double* K, double* T) {
  const int nf = p.n_f, nt = p.n_t;
  loop_times_transposed(ctx, nf, nf, nf, Ut, G, T);  // T = Uᵀ Gᵀ = (G U)ᵀ
  loop_times_transposed(ctx, nf, nf, nf, Ut, T, K);  // K = Uᵀ (G U)
  ctx.par([&](int tid, int nthr) {
    for_items(tid, nthr, nf, nf, [&](int i, int j, long e) {
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
    });
  });
}

// QD [npts, 3 n] = (Q0 d | Q1 d | Q2 d) for each row d of D [npts, n] (full memory only).
template <class Ctx>
SLIMFAST_BLOCK void loop_q_times_d(Ctx& ctx, const Projections& p, int npts, const double* D, double* QD) {
  const int nf = p.n_f;
  ctx.par([&](int tid, int nthr) {
    for_items(tid, nthr, npts, nf, [&](int i, int row, long) {
      double* qd = QD + 3L * i * nf;
      q_row_times_d(p, row, D + (long)i * nf, qd, qd + nf, qd + 2 * nf);
    });
  });
}

}  // namespace slimfast
