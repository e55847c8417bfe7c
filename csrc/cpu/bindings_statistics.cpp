// slimfast._cpu.conv_head_statistics: lagged statistics of a convolutional head
// (conv_statistics_cpu.h) on raw pointers, and gather_block_entries (block_gather_cpu.h), which
// takes such a head's statistics into block order. Registered into the _cpu module by bind_conv_statistics
// (called from bindings_cpu.cpp). The geometry is checked here so that no pixel or output index
// can leave its image; the extent of the memory behind a pointer cannot be checked, so
// slimfast/compiled_statistics.py guarantees it.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "bindings_common.h"
#include "block_gather_cpu.h"
#include "conv_statistics_cpu.h"

namespace py = pybind11;
using namespace slimfast;

namespace {

const Lapack* g_stats_lapack = nullptr;

// (n, step, out_stride, phase, start, count, base) → a checked axis of `pixels` input pixels whose
// taps feed `outputs` output pixels (out_stride > 0) or none (out_stride = 0).
TapAxisCpu make_axis(const py::tuple& desc, int pixels, int outputs, const std::string& name) {
  require(desc.size() == 7, name + " must be (n, step, out_stride, phase, start, count, base)");
  TapAxisCpu ax;
  ax.n = desc[0].cast<int>();
  ax.step = desc[1].cast<int>();
  ax.out_stride = desc[2].cast<int>();
  ax.phase = desc[3].cast<std::vector<int>>();
  ax.start = desc[4].cast<std::vector<int>>();
  ax.count = desc[5].cast<std::vector<int>>();
  ax.base = desc[6].cast<std::vector<int>>();
  const int k = ax.taps();
  require(ax.n == pixels, name + ": n must equal the features' size " + std::to_string(pixels));
  require(ax.step >= 1 && ax.out_stride >= 0, name + ": step must be >= 1 and out_stride >= 0");
  require(k >= 1 && k <= 4096 && (int)ax.start.size() == k && (int)ax.count.size() == k && (int)ax.base.size() == k,
          name + ": phase, start, count and base must be lists of the same length in [1, 4096]");
  for (int t = 0; t < k; ++t) {
    require(ax.count[t] >= 0 && ax.start[t] >= 0, name + ": start and count must be >= 0");
    if (ax.count[t] == 0) continue;
    require(ax.start[t] + (long long)ax.step * (ax.count[t] - 1) < pixels,
            name + ": tap " + std::to_string(t) + " reads past the image");
    require(ax.base[t] > -(1 << 20) && ax.base[t] < (1 << 20) && ax.phase[t] >= 0 && ax.phase[t] < (1 << 20),
            name + ": base and phase must lie in (-2^20, 2^20)");
    if (ax.out_stride > 0) {
      require(ax.step == 1, name + ": an axis with outputs must have step 1");
      const long long first = ax.phase[t] + (long long)ax.out_stride * (ax.start[t] - ax.base[t]);
      const long long last = first + (long long)ax.out_stride * (ax.count[t] - 1);
      require(first >= 0 && last < outputs, name + ": tap " + std::to_string(t) + " feeds outputs past the target");
    }
  }
  return ax;
}

double py_conv_head_statistics(std::uintptr_t x, int x_dtype, int n_b, int C, int H, int W, std::uintptr_t y,
                               int y_dtype, int n_t, int H_out, int W_out, const py::tuple& axis_h,
                               const py::tuple& axis_w, bool bias, double rows, double beta2, std::uintptr_t G,
                               std::uintptr_t H_ptr, std::uintptr_t c) {
  require(x_dtype == STATS_F64 || x_dtype == STATS_F32, "x_dtype must be 0 (float64) or 1 (float32)");
  require_size(n_b, "n_b", 1 << 24);
  require_size(C, "C", 1 << 16);
  require_size(H, "H", 1 << 16);
  require_size(W, "W", 1 << 16);
  const bool targets = y != 0;
  if (targets) {
    require(y_dtype == STATS_F64 || y_dtype == STATS_F32, "y_dtype must be 0 (float64) or 1 (float32)");
    require_size(n_t, "n_t", 1 << 16);
    require_size(H_out, "H_out", 1 << 16);
    require_size(W_out, "W_out", 1 << 16);
  }
  const TapAxisCpu ax_h = make_axis(axis_h, H, targets ? H_out : 0, "axis_h");
  const TapAxisCpu ax_w = make_axis(axis_w, W, targets ? W_out : 0, "axis_w");
  require(ax_w.step == 1, "axis_w: step must be 1");
  require(!targets || (ax_h.out_stride > 0 && ax_w.out_stride > 0), "targets need axes with out_stride > 0");
  // The kernel's dgemm sizes are ints: K = n_b·(W + 2M) columns per row, M ≤ the spread of the bases.
  const auto spread = [](const std::vector<int>& v) {
    return (long long)*std::max_element(v.begin(), v.end()) - *std::min_element(v.begin(), v.end());
  };
  const long long margin = std::max(spread(ax_w.base), 0LL), columns = (long long)n_b * (W + 2 * margin) + 2 * margin;
  const long long product_columns = (long long)ax_h.taps() * ax_w.taps() * (targets ? n_t : 1);
  require(columns * C < (1LL << 31) && product_columns * columns < (1LL << 31),
          "features too large for the lagged statistics: n_b * (W + 2 * lag) * C must stay below 2^31");
  const long long n_f = (long long)C * ax_h.taps() * ax_w.taps() + (bias ? 1 : 0);
  require_size(n_f, "n_f");
  const void* xp = reinterpret_cast<const void*>(x);
  require(x != 0 && x % (x_dtype == STATS_F64 ? 8 : 4) == 0, "x_ptr must be a non-null aligned data pointer");
  require(!targets || y % (y_dtype == STATS_F64 ? 8 : 4) == 0, "y_ptr must be aligned");
  double* Gp = as_ptr<double>(G, "G_ptr");
  double* Hp = targets ? as_ptr<double>(H_ptr, "H_ptr") : nullptr;
  double* cp = targets ? as_ptr<double>(c, "c_ptr") : nullptr;
  py::gil_scoped_release release;
  return conv_head_statistics_cpu(*g_stats_lapack, xp, x_dtype, n_b, C, H, W, reinterpret_cast<const void*>(y),
                                  y_dtype, n_t, H_out, W_out, ax_h, ax_w, bias, rows, beta2, Gp, Hp, cp);
}

void py_gather_block_entries(std::uintptr_t G, std::uintptr_t src, std::uintptr_t dst, long long K,
                             std::uintptr_t packed, int n_stored, std::uintptr_t batch, std::uintptr_t G_blk,
                             std::uintptr_t G_mem_blk, std::uintptr_t H, std::uintptr_t perm, int n_t, int n_f,
                             std::uintptr_t H_blk, std::uintptr_t c, std::uintptr_t c_blk) {
  require(K >= 1 && K < (1LL << 40), "K must be positive");
  require(n_stored >= 0 && n_stored <= (1 << 20), "n_stored must be in [0, 2^20]");
  require(n_t >= 1 && n_f >= 1 && (long long)n_t * n_f < (1LL << 40), "n_t and n_f must be positive");
  const double* H_p = as_ptr<const double>(H, "H_ptr");
  const auto* perm_p = as_ptr<const std::int64_t>(perm, "perm_ptr");
  double* H_blk_p = as_ptr<double>(H_blk, "H_blk_ptr");
  const double* c_p = as_ptr<const double>(c, "c_ptr");
  double* c_blk_p = as_ptr<double>(c_blk, "c_blk_ptr");
  const double* packed_p = n_stored > 0 ? as_ptr<const double>(packed, "packed_ptr") : nullptr;
  const auto* src_p = as_ptr<const std::int64_t>(src, "src_ptr");
  const auto* dst_p = as_ptr<const std::int64_t>(dst, "dst_ptr");
  const double* G_p = as_ptr<const double>(G, "G_ptr");
  double* batch_p = as_ptr<double>(batch, "batch_ptr");
  double* blk_p = as_ptr<double>(G_blk, "G_blk_ptr");
  double* mem_p = as_ptr<double>(G_mem_blk, "G_mem_blk_ptr");
  py::gil_scoped_release release;
  gather_block_entries_cpu(G_p, src_p, dst_p, K, packed_p, n_stored, batch_p, blk_p, mem_p, H_p, perm_p, n_t, n_f,
                           H_blk_p, c_p, c_blk_p);
}

void require_parameters(int dtype, long long n_w, long long n_p) {
  require(dtype == PARAM_F64 || dtype == PARAM_F32, "dtype must be 0 (float64) or 1 (float32)");
  require(n_w >= 1 && n_p >= n_w && n_p < (1LL << 40), "n_w must be positive and n_p at least n_w");
}

// A parameter pointer, checked for null and for the alignment of its dtype.
void* parameter_ptr(std::uintptr_t value, int dtype, const char* name) {
  return dtype == PARAM_F32 ? static_cast<void*>(as_ptr<float>(value, name)) : as_ptr<double>(value, name);
}

double py_gather_parameters(std::uintptr_t weight, std::uintptr_t bias, int dtype, long long n_w, long long n_p,
                            std::uintptr_t src, std::uintptr_t W) {
  require_parameters(dtype, n_w, n_p);
  const void* w_p = parameter_ptr(weight, dtype, "weight_ptr");
  const void* b_p = n_p > n_w ? parameter_ptr(bias, dtype, "bias_ptr") : nullptr;
  const auto* src_p = as_ptr<const std::int64_t>(src, "src_ptr");
  double* W_p = as_ptr<double>(W, "W_ptr");
  py::gil_scoped_release release;
  return gather_parameters_cpu(w_p, b_p, dtype, n_w, n_p, src_p, W_p);
}

bool py_scatter_parameters(std::uintptr_t W, std::uintptr_t dst, int dtype, long long n_w, long long n_p,
                           std::uintptr_t weight, std::uintptr_t bias) {
  require_parameters(dtype, n_w, n_p);
  const double* W_p = as_ptr<const double>(W, "W_ptr");
  const auto* dst_p = as_ptr<const std::int64_t>(dst, "dst_ptr");
  void* w_p = parameter_ptr(weight, dtype, "weight_ptr");
  void* b_p = n_p > n_w ? parameter_ptr(bias, dtype, "bias_ptr") : nullptr;
  py::gil_scoped_release release;
  return scatter_parameters_cpu(W_p, dst_p, dtype, n_w, n_p, w_p, b_p);
}

}  // namespace

void bind_conv_statistics(py::module_& mod, const Lapack& lapack) {
  g_stats_lapack = &lapack;
  mod.def("conv_head_statistics", &py_conv_head_statistics, py::arg("x_ptr"), py::arg("x_dtype"), py::arg("n_b"),
          py::arg("C"), py::arg("H"), py::arg("W"), py::arg("y_ptr"), py::arg("y_dtype"), py::arg("n_t"),
          py::arg("H_out"), py::arg("W_out"), py::arg("axis_h"), py::arg("axis_w"), py::arg("bias"), py::arg("rows"),
          py::arg("beta2"), py::arg("G_ptr"), py::arg("H_ptr"), py::arg("c_ptr"),
          "Lagged statistics G (and H, c) of a convolutional head's batch; returns their largest magnitude, NaN "
          "when not finite (see slimfast/_cpu.pyi).");
  mod.def("gather_block_entries", &py_gather_block_entries, py::arg("G_ptr"), py::arg("src_ptr"), py::arg("dst_ptr"),
          py::arg("K"), py::arg("packed_ptr"), py::arg("n_stored"), py::arg("batch_ptr"), py::arg("G_blk_ptr"),
          py::arg("G_mem_blk_ptr"), py::arg("H_ptr"), py::arg("perm_ptr"), py::arg("n_t"), py::arg("n_f"),
          py::arg("H_blk_ptr"), py::arg("c_ptr"), py::arg("c_blk_ptr"),
          "The phase-block fast path's gathers into block order (see slimfast/_cpu.pyi).");
  mod.def("gather_parameters", &py_gather_parameters, py::arg("weight_ptr"), py::arg("bias_ptr"), py::arg("dtype"),
          py::arg("n_w"), py::arg("n_p"), py::arg("src_ptr"), py::arg("W_ptr"),
          "A head's parameters into block order as float64; returns their largest magnitude, NaN when not finite "
          "(see slimfast/_cpu.pyi).");
  mod.def("scatter_parameters", &py_scatter_parameters, py::arg("W_ptr"), py::arg("dst_ptr"), py::arg("dtype"),
          py::arg("n_w"), py::arg("n_p"), py::arg("weight_ptr"), py::arg("bias_ptr"),
          "Block-order float64 weights back into a head's parameters when all fit their dtype "
          "(see slimfast/_cpu.pyi).");
}
