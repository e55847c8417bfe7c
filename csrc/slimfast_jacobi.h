// Serial cyclic Jacobi eigensolver and the rotation / round-robin pieces the CUDA block Jacobi
// shares: part of csrc/slimfast_math.h, which includes this file (same device rules).
#pragma once

#include "slimfast_math.h"

namespace slimfast {

// ---------------------------------------------------------------------------------------------
// Cyclic Jacobi eigensolver for a symmetric A [n, n] (lower triangle read, as torch.linalg.eigh).
// Output: s_out [n] ascending, U_out [n, n] with eigenvectors as columns.
// Warm start: with U0 (e.g. the previous step's eigenvectors) the rotations start from
// A' = U0ᵀ A U0 and V = U0, which is nearly diagonal when A changed little, so far fewer sweeps
// are needed. Stops when off(A') = ‖A' − diag(A')‖_F <= tol·‖A‖_F or after max_sweeps sweeps.
// Returns the number of sweeps run. scratch: jacobi_doubles(n).
// ---------------------------------------------------------------------------------------------
// Rutishauser's rotation zeroing a_pq of the symmetric 2×2 block [[a_pp, a_pq], [a_pq, a_qq]]:
// t = tan φ of the smaller angle, c = cos φ, s = sin φ (jacobi_eigh's inline formula). Applied as
//   row_p ← c·row_p − s·row_q,  row_q ← s·row_p + c·row_q  (and the same on columns),
// it gives a_pp' = a_pp − t·a_pq, a_qq' = a_qq + t·a_pq, a_pq' = 0. Exactly the identity
// (c = 1, s = t = 0) when a_pq == 0, so a zero row/column (padding) stays exactly zero.
struct JacobiRotation {
  double c, s, t;
};

SLIMFAST_HD inline JacobiRotation jacobi_rotation(double app, double aqq, double apq) {
  JacobiRotation r;
  if (apq == 0.0) {
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

SLIMFAST_HD inline long jacobi_doubles(int n) { return 3L * n * n; }

SLIMFAST_HD inline double sym_lower(const double* A, int n, int i, int j) {
  return j <= i ? A[(long)i * n + j] : A[(long)j * n + i];
}

SLIMFAST_HD inline int jacobi_eigh(int n, const double* A, const double* U0, double* s_out, double* U_out, double tol,
                                   int max_sweeps, double* scratch) {
  double* M = scratch;               // working matrix, full symmetric storage
  double* Vt = M + (long)n * n;      // eigenvectors as ROWS, so rotations touch contiguous rows
  double* T = Vt + (long)n * n;      // warm start: A U0
  double norm2 = 0.0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      const double x = sym_lower(A, n, i, j);
      norm2 += x * x;
    }
  if (U0 == nullptr) {
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        M[(long)i * n + j] = sym_lower(A, n, i, j);
        Vt[(long)i * n + j] = i == j ? 1.0 : 0.0;
      }
  } else {
    // T = A U0 (axpy rows), M = U0ᵀ T, Vt = U0ᵀ.
    for (long i = 0; i < (long)n * n; ++i) T[i] = M[i] = 0.0;
    for (int i = 0; i < n; ++i)
      for (int l = 0; l < n; ++l) {
        const double a = sym_lower(A, n, i, l);
        for (int j = 0; j < n; ++j) T[(long)i * n + j] += a * U0[(long)l * n + j];
      }
    for (int l = 0; l < n; ++l)
      for (int i = 0; i < n; ++i) {
        const double u = U0[(long)l * n + i];
        for (int j = 0; j < n; ++j) M[(long)i * n + j] += u * T[(long)l * n + j];
      }
    // U0ᵀ A U0 is symmetric only up to rounding; keep its lower triangle.
    for (int i = 0; i < n; ++i)
      for (int j = i + 1; j < n; ++j) M[(long)i * n + j] = M[(long)j * n + i];
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) Vt[(long)i * n + j] = U0[(long)j * n + i];
  }
  const double thresh = tol * sqrt(norm2);
  int sweep = 0;
  for (; sweep < max_sweeps; ++sweep) {
    double off2 = 0.0;
    for (int i = 0; i < n; ++i)
      for (int j = i + 1; j < n; ++j) off2 += 2.0 * M[(long)i * n + j] * M[(long)i * n + j];
    if (sqrt(off2) <= thresh) break;
    for (int p = 0; p < n - 1; ++p)
      for (int q = p + 1; q < n; ++q) {
        const double apq = M[(long)p * n + q];
        if (apq == 0.0) continue;
        const double app = M[(long)p * n + p], aqq = M[(long)q * n + q];
        const JacobiRotation r = jacobi_rotation(app, aqq, apq);
        const double t = r.t, cs = r.c, sn = r.s;
        double* rp = M + (long)p * n;
        double* rq = M + (long)q * n;
        for (int k = 0; k < n; ++k) {  // rows p, q of Jᵀ M (contiguous) ...
          const double x = rp[k], y = rq[k];
          rp[k] = cs * x - sn * y;
          rq[k] = sn * x + cs * y;
        }
        for (int k = 0; k < n; ++k) {  // ... mirrored into columns p, q (M stays symmetric)
          M[(long)k * n + p] = rp[k];
          M[(long)k * n + q] = rq[k];
        }
        rp[p] = app - t * apq;
        rq[q] = aqq + t * apq;
        rp[q] = rq[p] = 0.0;
        double* vp = Vt + (long)p * n;
        double* vq = Vt + (long)q * n;
        for (int k = 0; k < n; ++k) {
          const double x = vp[k], y = vq[k];
          vp[k] = cs * x - sn * y;
          vq[k] = sn * x + cs * y;
        }
      }
  }
  // Ascending order by selection sort (n swaps of rows of Vt), then transpose into U_out.
  for (int i = 0; i < n; ++i) s_out[i] = M[(long)i * n + i];
  for (int i = 0; i < n; ++i) {
    int jm = i;
    for (int j = i + 1; j < n; ++j)
      if (s_out[j] < s_out[jm]) jm = j;
    if (jm != i) {
      const double tmp = s_out[i];
      s_out[i] = s_out[jm];
      s_out[jm] = tmp;
      for (int k = 0; k < n; ++k) {
        const double v = Vt[(long)i * n + k];
        Vt[(long)i * n + k] = Vt[(long)jm * n + k];
        Vt[(long)jm * n + k] = v;
      }
    }
  }
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) U_out[(long)i * n + j] = Vt[(long)j * n + i];
  return sweep;
}

}  // namespace slimfast
