// Lagged statistics of convolutional heads on the CPU (see conv_statistics_cpu.h).
#include "conv_statistics_cpu.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <utility>

#include "cpu_threads.h"

namespace slimfast {

namespace {

// A Gram block: taps a = (ah, aw) and b = (bh, bw) of one phase, b's pixels lie `lag` from a's.
struct TapPair {
  int ah, aw, bh, bw, lag;
};

// The blocks with b's lag not behind a's (the others are their transposes) and their lags.
void tap_pairs(const TapAxisCpu& ax_h, const TapAxisCpu& ax_w, std::vector<TapPair>& pairs,
               std::vector<std::pair<int, int>>& lags) {
  for (int ah = 0; ah < ax_h.taps(); ++ah)
    for (int bh = 0; bh < ax_h.taps(); ++bh) {
      if (ax_h.phase[ah] != ax_h.phase[bh]) continue;
      const int dh = ax_h.base[bh] - ax_h.base[ah];
      for (int aw = 0; aw < ax_w.taps(); ++aw)
        for (int bw = 0; bw < ax_w.taps(); ++bw) {
          if (ax_w.phase[aw] != ax_w.phase[bw]) continue;
          const int dw = ax_w.base[bw] - ax_w.base[aw];
          if (!(dh > 0 || (dh == 0 && dw >= 0))) continue;
          const std::pair<int, int> lag{dh, dw};
          auto it = std::find(lags.begin(), lags.end(), lag);
          if (it == lags.end()) it = lags.insert(lags.end(), lag);
          pairs.push_back({ah, aw, bh, bw, (int)(it - lags.begin())});
        }
    }
}

// The features as float64 rows [H + h_pad][n·width + 2M][C]: pixel (n, c, i_h, i_w) at column
// M + n·width + M + i_w of row i_h, width = W + 2M, zero elsewhere. A shift by δ_w ≤ M is then a
// shift of the flattened (sample, column) axis that never reaches a neighbouring sample.
struct LagRows {
  int C = 0, width = 0, M = 0, K = 0;   // K = n·width: the columns a lag field sums over
  std::size_t row_len = 0;               // (K + 2M)·C
  double* data = nullptr;

  double* at(int i_h, int sample, int i_w) const {
    return data + (std::size_t)i_h * row_len + (std::size_t)(M + sample * width + M + i_w) * C;
  }
};

// Fills the rows' image pixels and pixel [H, W, C] = Σ_n x[n, :, i_h, i_w] (for the bias column),
// one (sample, image row) tile [C, W] at a time so that the writes run along the channels.
template <class T>
void fill_rows(const T* x, int n, int C, int H, int W, const LagRows& R, double* pixel) {
  const std::size_t plane = (std::size_t)H * W;
  for (int s = 0; s < n; ++s)
    for (int i = 0; i < H; ++i) {
      const T* src = x + (std::size_t)s * C * plane + (std::size_t)i * W;
      double* dst = R.at(i, s, 0);
      double* sum = pixel + (std::size_t)i * W * C;
      for (int j = 0; j < W; ++j)
        for (int c = 0; c < C; ++c) {
          const double v = (double)src[c * plane + j];
          dst[(std::size_t)j * C + c] = v;
          sum[(std::size_t)j * C + c] += v;
        }
    }
}

template <class T>
double sum_squares_and_bias(const T* y, int n, int n_t, int plane, double* y_sum) {
  double total = 0.0;
  for (int t = 0; t < n_t; ++t) y_sum[t] = 0.0;
  for (int s = 0; s < n; ++s)
    for (int t = 0; t < n_t; ++t) {
      const T* p = y + ((std::size_t)s * n_t + t) * plane;
      double acc = 0.0, sq = 0.0;
      for (int k = 0; k < plane; ++k) {
        const double v = (double)p[k];
        acc += v;
        sq += v * v;
      }
      y_sum[t] += acc;
      total += sq;
    }
  return total;
}

// Y [kt·n_t, K] for image row i_h: column (n, i_w) of tap t's slot holds y[n, target, o_t(i_h, i_w)]
// for the pixels tap t reads in this row, zero elsewhere; then the cross term of the row is one
// product X_{i_h}ᵀ Yᵀ [C, kt·n_t].
// A tap's slot is written at the same columns in every row that it reads (they depend on its
// column range only), so Y is cleared once per call (`written` all 0) and afterwards only the
// slots of row taps that fall idle: written[th] says whether row tap th's slots hold values.
template <class T>
void cross_targets_of_row(const T* y, int n, int n_t, int H_out, int W_out, const TapAxisCpu& ax_h,
                          const TapAxisCpu& ax_w, const LagRows& R, int i_h, double* Y, char* written) {
  const int kw = ax_w.taps();
  const std::size_t row_tap_len = (std::size_t)kw * n_t * R.K;
  for (int th = 0; th < ax_h.taps(); ++th) {
    const int jh = i_h - ax_h.start[th];
    if (jh < 0 || jh >= ax_h.count[th]) {
      if (written[th]) std::fill_n(Y + th * row_tap_len, row_tap_len, 0.0);
      written[th] = 0;
      continue;
    }
    written[th] = 1;
    const int o_h = ax_h.phase[th] + ax_h.out_stride * (i_h - ax_h.base[th]);
    for (int tw = 0; tw < kw; ++tw)
      for (int t = 0; t < n_t; ++t) {
        double* col = Y + ((std::size_t)(th * kw + tw) * n_t + t) * R.K + R.M;
        for (int s = 0; s < n; ++s) {
          const T* row = y + (((std::size_t)s * n_t + t) * H_out + o_h) * W_out;
          for (int jw = 0; jw < ax_w.count[tw]; ++jw) {
            const int i_w = ax_w.start[tw] + jw;
            col[(std::size_t)s * R.width + i_w] = (double)row[ax_w.phase[tw] + ax_w.out_stride * (i_w - ax_w.base[tw])];
          }
        }
      }
  }
}

// The features' layout that the rows' zero margins were cleared for.
struct RowsGeometry {
  int n = -1, C = 0, H = 0, W = 0, h_pad = 0, M = 0;
  bool operator==(const RowsGeometry& o) const {
    return n == o.n && C == o.C && H == o.H && W == o.W && h_pad == o.h_pad && M == o.M;
  }
};

// Scratch kept per thread across calls: fresh buffers of this size are mapped from the system and
// fault on every page each call (see slimfast/workspace.py).
struct Scratch {
  std::vector<double> rows, fields, columns, sums, Y, acc, pixel;
  std::vector<char> have, Y_written;
  RowsGeometry rows_geometry;   // what `rows` holds the zero margins of
};
thread_local Scratch scratch;

// Passes each written value through, keeping the largest magnitude and whether all were finite.
struct Measure {
  double largest = 0.0;
  bool finite = true;
  double operator()(double v) {
    const double a = std::fabs(v);
    largest = a > largest ? a : largest;
    finite = finite && a <= DBL_MAX;
    return v;
  }
};

}  // namespace

double conv_head_statistics_cpu(const Lapack& L, const void* x, int x_dtype, int n, int C, int H, int W,
                                const void* y, int y_dtype, int n_t, int H_out, int W_out, const TapAxisCpu& ax_h,
                                const TapAxisCpu& ax_w, bool bias, double rows, double beta2, double* G, double* Hout,
                                double* c) {
  std::vector<TapPair> pairs;
  std::vector<std::pair<int, int>> lags;
  tap_pairs(ax_h, ax_w, pairs, lags);
  const int kh = ax_h.taps(), kw = ax_w.taps(), kt = kh * kw, nz = C * kt, n_f = nz + (bias ? 1 : 0);
  const int nl = (int)lags.size(), CC = C * C;
  int M = 0, h_pad = 0;
  for (const auto& lag : lags) {
    h_pad = std::max(h_pad, lag.first);
    M = std::max(M, std::abs(lag.second));
  }
  const BlasThreads one_thread(L, 1);   // C × C products: BLAS threads never pay
  const double one = 1.0, zero = 0.0;
  int ldc = C;

  LagRows R;
  R.C = C;
  R.M = M;
  R.width = W + 2 * M;
  R.K = n * R.width;
  R.row_len = (std::size_t)(R.K + 2 * M) * C;
  // The margins stay zero between calls of one geometry and fill_rows rewrites every image
  // pixel, so the ~1 MB buffer (MNIST shape) is only cleared when the geometry changes.
  const RowsGeometry geometry{n, C, H, W, h_pad, M};
  if (!(scratch.rows_geometry == geometry)) {   // the geometry fixes the buffer's size too
    scratch.rows.assign((std::size_t)(H + h_pad) * R.row_len, 0.0);
    scratch.rows_geometry = geometry;
  }
  scratch.pixel.assign((std::size_t)H * W * C, 0.0);
  R.data = scratch.rows.data();
  if (x_dtype == STATS_F64)
    fill_rows(static_cast<const double*>(x), n, C, H, W, R, scratch.pixel.data());
  else
    fill_rows(static_cast<const float*>(x), n, C, H, W, R, scratch.pixel.data());

  // Row fields A_l[i_h] [C, C] (row-major), one dgemm per image row over the columns the lag
  // reaches: a row is Xᵀ [C, K] column-major (ld C) and A = X_{i_h}ᵀ X_{i_h+δ} is stored as its
  // transpose's column-major form. Then their running sums over the rows, so that a block's sum
  // over a range of rows is one difference (axes of step 1).
  std::vector<double>& fields = scratch.fields;   // [nl, H + 1, CC]: Σ_{i' < i} A_l[i']
  fields.resize((std::size_t)nl * (H + 1) * CC);   // every prefix after the first is written below
  for (int l = 0; l < nl; ++l) std::fill_n(fields.data() + (std::size_t)l * (H + 1) * CC, CC, 0.0);
  {
    int K = R.K;
    std::vector<double> field(CC);
    for (int l = 0; l < nl; ++l)
      for (int i_h = 0; i_h < H; ++i_h) {
        const double* left = R.at(i_h, 0, -M);
        const double* right = R.at(i_h + lags[l].first, 0, -M + lags[l].second);
        double* before = fields.data() + ((std::size_t)l * (H + 1) + i_h) * CC;
        L.dgemm("N", "T", &ldc, &ldc, &K, &one, right, &ldc, left, &ldc, &zero, field.data(), &ldc);
        for (int k = 0; k < CC; ++k) before[CC + k] = before[k] + field[k];
      }
  }

  // Edge columns: those outside some tap's column range. A block whose row taps miss column e
  // subtracts Σ_{i_h ∈ R_h} Σ_n x[n, :, i_h, e] x[n, :, i_h + δ_h, e + δ_w]ᵀ, one dgemm over the
  // rows of R_h once both columns are gathered as [H + h_pad, n, C].
  std::vector<char> inside((std::size_t)kw * W, 0);
  for (int tw = 0; tw < kw; ++tw)
    for (int j = 0; j < ax_w.count[tw]; ++j) inside[(std::size_t)tw * W + ax_w.start[tw] + j] = 1;
  std::vector<int> edges;
  for (int e = 0; e < W; ++e)
    for (int tw = 0; tw < kw; ++tw)
      if (!inside[(std::size_t)tw * W + e]) {
        edges.push_back(e);
        break;
      }
  const int ne = (int)edges.size();
  const std::size_t column_len = (std::size_t)(H + h_pad) * n * C;
  std::vector<int> gathered(W, -1);   // column → its slot in scratch.columns
  int n_gathered = 0;
  if (ne > 0) {
    for (int e : edges)
      for (const auto& lag : lags)
        for (int u : {e, e + lag.second})
          if (u >= 0 && u < W && gathered[u] < 0) gathered[u] = n_gathered++;
    scratch.columns.assign(n_gathered * column_len, 0.0);
    for (int u = 0; u < W; ++u) {
      if (gathered[u] < 0) continue;
      double* col = scratch.columns.data() + gathered[u] * column_len;
      for (int i_h = 0; i_h < H; ++i_h)
        for (int s = 0; s < n; ++s) std::copy_n(R.at(i_h, s, u), C, col + ((std::size_t)i_h * n + s) * C);
    }
  }
  // Σ over R_h(ah) of the edge field (l, e), computed when a block first needs it.
  scratch.sums.resize((std::size_t)nl * std::max(ne, 1) * kh * CC);
  scratch.have.assign((std::size_t)nl * std::max(ne, 1) * kh, 0);
  auto edge_sum = [&](int l, int k, int ah) -> const double* {
    const std::size_t key = ((std::size_t)l * ne + k) * kh + ah;
    double* q = scratch.sums.data() + key * CC;
    if (scratch.have[key]) return q;
    scratch.have[key] = 1;
    std::fill(q, q + CC, 0.0);
    const int e = edges[k], dh = lags[l].first, u = e + lags[l].second;
    if (u < 0 || u >= W || ax_h.count[ah] == 0) return q;   // the partner column is off the image
    const double* a = scratch.columns.data() + gathered[e] * column_len;
    const double* b = scratch.columns.data() + gathered[u] * column_len;
    int K = ax_h.step == 1 ? ax_h.count[ah] * n : n;
    for (int j = 0; j < (ax_h.step == 1 ? 1 : ax_h.count[ah]); ++j) {
      const int i_h = ax_h.start[ah] + ax_h.step * j;
      L.dgemm("N", "T", &ldc, &ldc, &K, &one, b + (std::size_t)(i_h + dh) * n * C, &ldc,
              a + (std::size_t)i_h * n * C, &ldc, &one, q, &ldc);
    }
    return q;
  };

  // Blocks: Σ_{i_h ∈ R_h(ah)} A_l[i_h] − Σ_{e ∉ R_w(aw)} (edge sums), scaled by β² and written at
  // (a, b) and (b, a); everything else is a structural zero.
  std::fill(G, G + (std::size_t)n_f * n_f, 0.0);
  Measure measure;
  std::vector<double> block(CC);
  for (const TapPair& p : pairs) {
    const double* prefix = fields.data() + (std::size_t)p.lag * (H + 1) * CC;
    const int first = ax_h.start[p.ah], count = ax_h.count[p.ah];
    std::fill(block.begin(), block.end(), 0.0);
    if (ax_h.step == 1) {
      const double *hi = prefix + (std::size_t)(first + count) * CC, *lo = prefix + (std::size_t)first * CC;
      for (int k = 0; k < CC; ++k) block[k] = hi[k] - lo[k];
    } else {
      for (int j = 0; j < count; ++j) {
        const int i_h = first + ax_h.step * j;
        const double *hi = prefix + (std::size_t)(i_h + 1) * CC, *lo = prefix + (std::size_t)i_h * CC;
        for (int k = 0; k < CC; ++k) block[k] += hi[k] - lo[k];
      }
    }
    for (int k = 0; k < ne; ++k) {
      if (inside[(std::size_t)p.aw * W + edges[k]]) continue;
      const double* q = edge_sum(p.lag, k, p.ah);
      for (int m = 0; m < CC; ++m) block[m] -= q[m];
    }
    const int a = p.ah * kw + p.aw, b = p.bh * kw + p.bw;
    for (int ci = 0; ci < C; ++ci)
      for (int cj = 0; cj < C; ++cj) {
        // A diagonal block comes from one lag-0 field: mirror its mean, so that G is symmetric.
        const double entry = a == b ? 0.5 * (block[ci * C + cj] + block[cj * C + ci]) : block[ci * C + cj];
        const double v = measure(beta2 * entry);
        G[(std::size_t)(ci * kt + a) * n_f + cj * kt + b] = v;
        G[(std::size_t)(cj * kt + b) * n_f + ci * kt + a] = v;
      }
  }

  if (bias) {   // the bias column: each feature's sum over its taps' pixels
    std::vector<double> sum(C);
    for (int th = 0; th < kh; ++th)
      for (int tw = 0; tw < kw; ++tw) {
        std::fill(sum.begin(), sum.end(), 0.0);
        for (int jh = 0; jh < ax_h.count[th]; ++jh)
          for (int jw = 0; jw < ax_w.count[tw]; ++jw) {
            const double* p = scratch.pixel.data() +
                              ((std::size_t)(ax_h.start[th] + ax_h.step * jh) * W + ax_w.start[tw] + jw) * C;
            for (int ci = 0; ci < C; ++ci) sum[ci] += p[ci];
          }
        for (int ci = 0; ci < C; ++ci) {
          const std::size_t f = (std::size_t)ci * kt + th * kw + tw;
          G[f * n_f + nz] = G[(std::size_t)nz * n_f + f] = measure(beta2 * sum[ci]);
        }
      }
    G[(std::size_t)nz * n_f + nz] = measure(beta2 * rows);
  }

  if (y != nullptr) {
    // H: per image row one product of the row's features with the targets its taps reach.
    const int cols = kt * n_t;
    scratch.Y.assign((std::size_t)cols * R.K, 0.0);
    scratch.Y_written.assign(kh, 0);
    scratch.acc.assign((std::size_t)cols * C, 0.0);   // [kt·n_t, C] column-major C × (kt·n_t)
    int K = R.K, ncols = cols;
    for (int i_h = 0; i_h < H; ++i_h) {
      if (y_dtype == STATS_F64)
        cross_targets_of_row(static_cast<const double*>(y), n, n_t, H_out, W_out, ax_h, ax_w, R, i_h,
                             scratch.Y.data(), scratch.Y_written.data());
      else
        cross_targets_of_row(static_cast<const float*>(y), n, n_t, H_out, W_out, ax_h, ax_w, R, i_h,
                             scratch.Y.data(), scratch.Y_written.data());
      L.dgemm("N", "N", &ldc, &ncols, &K, &one, R.at(i_h, 0, -M), &ldc, scratch.Y.data(), &K, &one,
              scratch.acc.data(), &ldc);
    }
    std::vector<double> y_sum(n_t);
    const int plane = H_out * W_out;
    const double squares = y_dtype == STATS_F64
                               ? sum_squares_and_bias(static_cast<const double*>(y), n, n_t, plane, y_sum.data())
                               : sum_squares_and_bias(static_cast<const float*>(y), n, n_t, plane, y_sum.data());
    for (int t = 0; t < n_t; ++t) {
      double* h = Hout + (std::size_t)t * n_f;
      for (int ci = 0; ci < C; ++ci)
        for (int tap = 0; tap < kt; ++tap)
          h[ci * kt + tap] = measure(beta2 * scratch.acc[((std::size_t)tap * n_t + t) * C + ci]);
      if (bias) h[nz] = measure(beta2 * y_sum[t]);
    }
    *c = measure(beta2 * squares);
  }
  return measure.finite ? measure.largest : NAN;
}

}  // namespace slimfast
