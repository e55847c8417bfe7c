// The Jacobi eigensolver of every backend that does not call LAPACK: a cyclic Jacobi in the
// round-robin ("circle method") parallel ordering, written once as a template over an execution
// context (csrc/slimtik_step.h states the context rules). The CUDA kernels run it with a thread
// block, their host emulation with simulated threads, the CPU launcher with one thread
// (SerialCtx). Part of csrc/slimfast_math.h, which includes this file (same device rules).
#pragma once

#include "slimfast_math.h"

namespace slimfast {

// Rutishauser's rotation zeroing a_pq of the symmetric 2×2 block [[a_pp, a_pq], [a_pq, a_qq]]:
// t = tan φ of the smaller angle, c = cos φ, s = sin φ. Applied as
//   row_p ← c·row_p − s·row_q,  row_q ← s·row_p + c·row_q  (and the same on columns),
// it gives a_pp' = a_pp − t·a_pq, a_qq' = a_qq + t·a_pq, a_pq' = 0. Exactly the identity
// (c = 1, s = t = 0) when a_pq == 0, so a zero row/column (padding) stays exactly zero, and when
// a_pq is negligible, |a_pq| <= ε·√|a_pp|·√|a_qq|: then a_pq is set to 0 without a rotation (a
// change below the rounding of the diagonal). Rotating by such an entry of an exactly repeated
// eigenvalue's cluster turns by an arbitrary angle, set by rounding, and keeps moving the other
// off-diagonal entries between rows: the sweeps then stall (observed with ±1 of multiplicity
// 21 and 43 at n = 64: linear convergence, 60 sweeps to 6e-11; with the threshold, 10–14 sweeps).
struct JacobiRotation {
  double c, s, t;
};

// ε of float64: the threshold of a negligible a_pq relative to the diagonal (see above).
inline constexpr double kJacobiNegligible = 2.220446049250313e-16;

SLIMFAST_HD inline bool jacobi_negligible(double app, double aqq, double apq) {
  // √|a_pp|·√|a_qq| rather than √|a_pp·a_qq|: the product may overflow.
  return fabs(apq) <= kJacobiNegligible * sqrt(fabs(app)) * sqrt(fabs(aqq));
}

SLIMFAST_HD inline JacobiRotation jacobi_rotation(double app, double aqq, double apq) {
  JacobiRotation r;
  if (apq == 0.0 || jacobi_negligible(app, aqq, apq)) {
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

SLIMFAST_HD inline double sym_lower(const double* A, int n, int i, int j) {
  return j <= i ? A[(long)i * n + j] : A[(long)j * n + i];
}

SLIMFAST_HD inline int padded_order(int n) { return n + (n & 1); }

// Doubles per pair of one round in the rotation buffer: c, s, t, p, q.
inline constexpr int kRotDoubles = 5;

// Workspace of one Jacobi problem (doubles): the working matrix M and the eigenvectors Vt
// [np, np] each, the rotations of one round (kRotDoubles·np/2), the sort permutation (n).
struct JacobiLayout {
  long jac_M, jac_Vt, rot, perm, total;
};

SLIMFAST_HD inline JacobiLayout jacobi_layout(int n) {
  const long np = padded_order(n);
  JacobiLayout L;
  L.jac_M = 0;
  L.jac_Vt = L.jac_M + np * np;
  L.rot = L.jac_Vt + np * np;
  L.perm = L.rot + kRotDoubles * (np / 2);
  L.total = L.perm + n;
  return L;
}

// Apply the rotations of one round (rot as jacobi_block writes it: c, s, t, p, q per pair) to M
// and Vt. The pairs of a round are disjoint, so the rotations commute: a block applies them at
// once (jacobi_round_block: every 2×2 block (pair k, pair l) of M replaced by R_kᵀ M_kl R_l by one
// work item, blocks k < l also written transposed, so M stays exactly symmetric; the rows p, q of
// Vt rotated), one thread one after another (jacobi_round_serial: rows p, q of M rotated as
// contiguous rows and mirrored into the columns, as vectorisable loops). Same rotations, same
// order of rounds; the two differ by rounding in the order of the products only.
template <class Ctx>
SLIMFAST_BLOCK void jacobi_round_block(Ctx& ctx, int np, int P, double* M, double* Vt, const double* rot) {
  ctx.par([&](int tid, int nthr) {
    for_items(tid, nthr, P, P, [&](int k, int l, long) {
      if (k > l) return;
      const double* rk = rot + kRotDoubles * k;
      const int pk = (int)rk[3], qk = (int)rk[4];
      double* rpk = M + (long)pk * np;
      double* rqk = M + (long)qk * np;
      if (k == l) {
        const double app = rpk[pk], aqq = rqk[qk], apq = rpk[qk], t = rk[2];
        rpk[pk] = app - t * apq;
        rqk[qk] = aqq + t * apq;
        rpk[qk] = 0.0;
        rqk[pk] = 0.0;
        return;
      }
      const double* rl = rot + kRotDoubles * l;
      const int pl = (int)rl[3], ql = (int)rl[4];
      const double ck = rk[0], sk = rk[1], cl = rl[0], sl = rl[1];
      const double x_pp = rpk[pl], x_pq = rpk[ql], x_qp = rqk[pl], x_qq = rqk[ql];
      // Rows (pair k): row_p ← c·row_p − s·row_q, row_q ← s·row_p + c·row_q.
      const double y_pp = ck * x_pp - sk * x_qp, y_pq = ck * x_pq - sk * x_qq;
      const double y_qp = sk * x_pp + ck * x_qp, y_qq = sk * x_pq + ck * x_qq;
      // Columns (pair l), the same rule.
      const double z_pp = cl * y_pp - sl * y_pq, z_pq = sl * y_pp + cl * y_pq;
      const double z_qp = cl * y_qp - sl * y_qq, z_qq = sl * y_qp + cl * y_qq;
      rpk[pl] = z_pp;
      rpk[ql] = z_pq;
      rqk[pl] = z_qp;
      rqk[ql] = z_qq;
      M[(long)pl * np + pk] = z_pp;
      M[(long)ql * np + pk] = z_pq;
      M[(long)pl * np + qk] = z_qp;
      M[(long)ql * np + qk] = z_qq;
    });
    for_items(tid, nthr, P, np, [&](int k, int j, long) {  // rows p, q of Vt
      const double* rk = rot + kRotDoubles * k;
      double* vp = Vt + (long)rk[3] * np;
      double* vq = Vt + (long)rk[4] * np;
      const double x = vp[j], y = vq[j];
      vp[j] = rk[0] * x - rk[1] * y;
      vq[j] = rk[1] * x + rk[0] * y;
    });
  });
}

SLIMFAST_HD inline void jacobi_round_serial(int np, int P, double* M, double* Vt, const double* rot) {
  for (int k = 0; k < P; ++k) {
    const double* rk = rot + kRotDoubles * k;
    const int p = (int)rk[3], q = (int)rk[4];
    double* rp = M + (long)p * np;
    double* rq = M + (long)q * np;
    const double app = rp[p], aqq = rq[q], apq = rp[q];
    if (apq == 0.0) continue;  // the identity rotation (jacobi_rotation)
    if (rk[1] == 0.0) {        // a negligible a_pq: zeroed, no rotation (jacobi_rotation)
      rp[q] = rq[p] = 0.0;
      continue;
    }
    const double c = rk[0], sn = rk[1], t = rk[2];
    for (int j = 0; j < np; ++j) {  // rows p, q of Rᵀ M ...
      const double x = rp[j], y = rq[j];
      rp[j] = c * x - sn * y;
      rq[j] = sn * x + c * y;
    }
    for (int j = 0; j < np; ++j) {  // ... mirrored into columns p, q (M stays symmetric)
      M[(long)j * np + p] = rp[j];
      M[(long)j * np + q] = rq[j];
    }
    rp[p] = app - t * apq;
    rq[q] = aqq + t * apq;
    rp[q] = rq[p] = 0.0;
    double* vp = Vt + (long)p * np;
    double* vq = Vt + (long)q * np;
    for (int j = 0; j < np; ++j) {
      const double x = vp[j], y = vq[j];
      vp[j] = c * x - sn * y;
      vq[j] = sn * x + c * y;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Block-parallel cyclic Jacobi (round-robin ordering) for a symmetric A [n, n], lower triangle read.
// M [np, np] and Vt [np, np] (eigenvectors as rows) are left diagonalised: A = Vtᵀ diag(M) Vt.
// rot: kRotDoubles·np/2 doubles. Warm start U0 [n, n] (orthogonal, eigenvectors as columns): M = U0ᵀ A U0,
// Vt = U0ᵀ. Stops when off(M) <= tol·‖A‖_F (checked before each sweep) or after max_sweeps;
// returns the sweeps run. One round = np/2 disjoint rotations: one thread per pair computes the
// rotation (jacobi_rotation), then the context applies them all (ctx.jacobi_round: a block with
// jacobi_round_block, one thread with jacobi_round_serial); the diagonal block of each pair gets
// a_pp − t·a_pq, a_qq + t·a_pq, 0 as jacobi_rotation says.
// ---------------------------------------------------------------------------------------------
template <class Ctx>
SLIMFAST_BLOCK int jacobi_block(Ctx& ctx, int n, const double* A, const double* U0, double* M, double* Vt,
                                double* rot, double tol, int max_sweeps) {
  const int np = padded_order(n);
  const int P = np / 2;
  const long nn = (long)n * n, npnp = (long)np * np;
  double norm2;
  ctx.template sums<1>(
      [&](int tid, int nthr, double* acc) {
        for_items(tid, nthr, n, n, [&](int i, int j, long) {
          const double x = sym_lower(A, n, i, j);
          acc[0] += x * x;
        });
      },
      &norm2);
  if (U0 == nullptr) {
    ctx.par([&](int tid, int nthr) {
      for_items(tid, nthr, np, np, [&](int i, int j, long e) {
        M[e] = (i < n && j < n) ? sym_lower(A, n, i, j) : 0.0;
        Vt[e] = i == j ? 1.0 : 0.0;
      });
    });
  } else {
    double* T = Vt;  // T = A U0 [n, n] (leading dim n) in Vt's storage until Vt is set
    ctx.par([&](int tid, int nthr) {
      for (long e = tid; e < nn; e += nthr) {
        const int i = (int)(e / n), j = (int)(e % n);
        double acc = 0.0;
        for (int l = 0; l < n; ++l) acc += sym_lower(A, n, i, l) * U0[(long)l * n + j];
        T[e] = acc;
      }
    });
    // M = U0ᵀ T; both (i, j) and (j, i) take the lower entry, computed identically, so M is
    // exactly symmetric although U0ᵀ A U0 is symmetric only up to rounding.
    ctx.par([&](int tid, int nthr) {
      for (long e = tid; e < npnp; e += nthr) {
        const int i = (int)(e / np), j = (int)(e % np);
        if (i >= n || j >= n) {
          M[e] = 0.0;
          continue;
        }
        const int r = i > j ? i : j, c = i > j ? j : i;
        double acc = 0.0;
        for (int l = 0; l < n; ++l) acc += U0[(long)l * n + r] * T[(long)l * n + c];
        M[e] = acc;
      }
    });
    ctx.par([&](int tid, int nthr) {
      for (long e = tid; e < npnp; e += nthr) {
        const int i = (int)(e / np), j = (int)(e % np);
        Vt[e] = (i < n && j < n) ? U0[(long)j * n + i] : (i == j ? 1.0 : 0.0);
      }
    });
  }
  const double thresh = tol * sqrt(norm2);
  int sweep = 0;
  for (; sweep < max_sweeps; ++sweep) {
    double off2;
    ctx.template sums<1>(
        [&](int tid, int nthr, double* acc) {
            for_items(tid, nthr, np, np, [&](int i, int j, long e) {
            if (i != j) acc[0] += M[e] * M[e];
          });
        },
        &off2);
    if (sqrt(off2) <= thresh) break;
    for (int r = 0; r < np - 1; ++r) {
      // rot[5k .. 5k+4] = c, s, t, p, q of pair k, so the update below needs no index arithmetic.
      ctx.par([&](int tid, int nthr) {
        for (int k = tid; k < P; k += nthr) {
          int p, q;
          round_robin_pair(np, r, k, &p, &q);
          const JacobiRotation rt = jacobi_rotation(M[(long)p * np + p], M[(long)q * np + q], M[(long)p * np + q]);
          double* rk = rot + kRotDoubles * k;
          rk[0] = rt.c;
          rk[1] = rt.s;
          rk[2] = rt.t;
          rk[3] = p;
          rk[4] = q;
        }
      });
      ctx.jacobi_round(np, P, M, Vt, rot);
    }
  }
  return sweep;
}

// Strict total order of (value, index) used to sort eigenvalues ascending: NaNs last, ties by
// index (so the ranks are a permutation whatever the values).
SLIMFAST_HD inline bool eig_before(double a, int i, double b, int j) {
  const bool an = a != a, bn = b != b;
  if (an != bn) return bn;
  if (!an && a != b) return a < b;
  return i < j;
}

// s_out [n] = diag(M) ascending and the matching eigenvectors: as columns of U_out [n, n]
// (torch.linalg.eigh's layout), or with `as_rows` as its rows (U_out = Uᵀ, LAPACK's column-major
// output read row-major: the layout of the step, csrc/slimtik_step.h). perm [n] scratch (doubles
// holding indices).
template <class Ctx>
SLIMFAST_BLOCK void jacobi_extract(Ctx& ctx, int n, const double* M, const double* Vt, double* s_out,
                                   double* U_out, double* perm, bool as_rows = false) {
  const int np = padded_order(n);
  ctx.par([&](int tid, int nthr) {
    for (int i = tid; i < n; i += nthr) {
      const double di = M[(long)i * np + i];
      int rank = 0;
      for (int j = 0; j < n; ++j) rank += eig_before(M[(long)j * np + j], j, di, i) ? 1 : 0;
      s_out[rank] = di;
      perm[rank] = (double)i;
    }
  });
  ctx.par([&](int tid, int nthr) {
    for_items(tid, nthr, n, n, [&](int i, int r, long e) {
      if (as_rows)
        U_out[e] = Vt[(long)perm[i] * np + r];
      else
        U_out[e] = Vt[(long)perm[r] * np + i];
    });
  });
}

// The whole eigensolver (twin: torch.linalg.eigh): A [n, n] → s [n] ascending and U (layout as
// jacobi_extract, `as_rows`). M, Vt [np, np], rot [kRotDoubles·np/2] and perm [n] are scratch
// (jacobi_layout regions, or shared memory for M, Vt, rot). Returns the sweeps run.
template <class Ctx>
SLIMFAST_BLOCK int jacobi_eigh(Ctx& ctx, int n, const double* A, const double* U0, double* M, double* Vt, double* rot,
                               double* perm, double tol, int max_sweeps, double* s, double* U, bool as_rows) {
  const int sweeps = jacobi_block(ctx, n, A, U0, M, Vt, rot, tol, max_sweeps);
  jacobi_extract(ctx, n, M, Vt, s, U, perm, as_rows);
  return sweeps;
}

}  // namespace slimfast
