// The product hooks of the step (csrc/slimtik_step.h) written as ctx.par loops: what a CUDA
// thread block runs (DeviceCtx, and HostCtx in its host emulation), and what the CPU launcher runs
// below its BLAS threshold (SerialCtx: one thread, the same loops). One work item per output
// element, so a block spreads every product over its threads; every inner loop runs over a
// contiguous row where the layout allows.
//
// Layouts: row-major; Ut [n, n] holds the eigenvectors of G_mem as ROWS (Ut[j*n + i] = component
// i of eigenvector j), which is LAPACK's column-major output read row-major.
#pragma once

#include "slimfast_math.h"

namespace slimfast {

// WG = W G: W [nt, n], G [n, n], WG [nt, n].
template <class Ctx>
SLIMFAST_BLOCK void loop_times_gram(Ctx& ctx, int nt, int n, const double* W, const double* G, double* WG) {
  const long ntf = (long)nt * n;
  ctx.par([&](int tid, int nthr) {
    for (long e = tid; e < ntf; e += nthr) {
      const int t = (int)(e / n), i = (int)(e % n);
      const double* w = W + (long)t * n;
      double acc = 0.0;
      for (int l = 0; l < n; ++l) acc += w[l] * G[(long)l * n + i];
      WG[e] = acc;
    }
  });
}

// out = X U: X [rows, n], out [rows, n] (coordinates in the eigenbasis).
template <class Ctx>
SLIMFAST_BLOCK void loop_to_eigenbasis(Ctx& ctx, int rows, int n, const double* X, const double* Ut, double* out) {
  const long total = (long)rows * n;
  ctx.par([&](int tid, int nthr) {
    for (long e = tid; e < total; e += nthr) {
      const double* x = X + (e / n) * n;
      const double* u = Ut + (e % n) * n;
      double acc = 0.0;
      for (int i = 0; i < n; ++i) acc += x[i] * u[i];
      out[e] = acc;
    }
  });
}

// W_out = W − Y Uᵀ: Y [nt, n] in the eigenbasis, W, W_out [nt, n].
template <class Ctx>
SLIMFAST_BLOCK void loop_from_eigenbasis(Ctx& ctx, int nt, int n, const double* Y, const double* Ut, const double* W,
                                         double* W_out) {
  const long ntf = (long)nt * n;
  ctx.par([&](int tid, int nthr) {
    for (long e = tid; e < ntf; e += nthr) {
      const int t = (int)(e / n), i = (int)(e % n);
      const double* y = Y + (long)t * n;
      double acc = 0.0;
      for (int j = 0; j < n; ++j) acc += y[j] * Ut[(long)j * n + i];
      W_out[e] = W[e] - acc;
    }
  });
}

// Full memory: K̃ = Uᵀ G U into K [n, n] (T [n, n] scratch: (G U)ᵀ), then Q0..Q2 = K̃∘(products of
// B̃, W̃) and k = diag(K̃), null space masked (masked_gram, as q_from_products).
template <class Ctx>
SLIMFAST_BLOCK void loop_form_q(Ctx& ctx, Projections& p, const double* Ut, const double* G, double* K, double* T) {
  const int nf = p.n_f, nt = p.n_t;
  const long nn = (long)nf * nf;
  ctx.par([&](int tid, int nthr) {  // T[j, i] = (G U)_ij = Σ_l G_il U_lj
    for (long e = tid; e < nn; e += nthr) {
      const double* u = Ut + (e / nf) * nf;
      const double* g = G + (e % nf) * nf;
      double acc = 0.0;
      for (int l = 0; l < nf; ++l) acc += g[l] * u[l];
      T[e] = acc;
    }
  });
  ctx.par([&](int tid, int nthr) {  // K_ij = Σ_l U_li (G U)_lj
    for (long e = tid; e < nn; e += nthr) {
      const double* u = Ut + (e / nf) * nf;
      const double* tr = T + (e % nf) * nf;
      double acc = 0.0;
      for (int l = 0; l < nf; ++l) acc += u[l] * tr[l];
      K[e] = acc;
    }
  });
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

// QD [npts, 3 n] = (Q0 d | Q1 d | Q2 d) for each row d of D [npts, n] (full memory only).
template <class Ctx>
SLIMFAST_BLOCK void loop_q_times_d(Ctx& ctx, const Projections& p, int npts, const double* D, double* QD) {
  const int nf = p.n_f;
  const long nd = (long)npts * nf;
  ctx.par([&](int tid, int nthr) {
    for (long e = tid; e < nd; e += nthr) {
      const long i = e / nf;
      double* qd = QD + 3L * i * nf;
      q_row_times_d(p, (int)(e % nf), D + i * nf, qd, qd + nf, qd + 2 * nf);
    }
  });
}

}  // namespace slimfast
