// slimfast._cpu.FusedLinearStep: the fused small-head step (fused_head_cpu.h) on raw pointers.
// Registered into the _cpu module by bind_fused_head (called from bindings_cpu.cpp). As in the
// rest of the module, sizes, options, null and misaligned pointers are checked here; the extent
// of the memory behind a pointer cannot be, so slimfast/fused_head.py guarantees it.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bindings_common.h"
#include "fused_head_cpu.h"

namespace py = pybind11;
using namespace slimfast;

namespace {

const Lapack* g_fused_lapack = nullptr;

int element_size(int dtype) { return dtype == FUSED_F64 ? 8 : dtype == FUSED_F32 ? 4 : 2; }

void check_dtype(int dtype, const char* name, bool head) {
  const bool ok = head ? (dtype == FUSED_F64 || dtype == FUSED_F32) : (dtype >= FUSED_F64 && dtype <= FUSED_F16);
  require(ok, std::string(name) + (head ? " must be 0 (float64) or 1 (float32)"
                                        : " must be 0 (float64), 1 (float32), 2 (bfloat16) or 3 (float16)") +
                  ", got " + std::to_string(dtype));
}

// A pointer to elements of `dtype`: non-null and aligned to the element size.
const void* data_ptr(std::uintptr_t value, int dtype, const char* name) {
  require(value != 0, std::string(name) + " must be a non-null data pointer");
  require(value % element_size(dtype) == 0,
          std::string(name) + " must be aligned to " + std::to_string(element_size(dtype)) + " bytes");
  return reinterpret_cast<const void*>(value);
}

FusedLinearStep* make_plan(long long rows, long long n_in, long long n_t, bool bias, bool mean, long long memory_depth,
                           int x_dtype, long long x_rs, long long x_cs, int y_dtype, long long y_rs, long long y_cs,
                           int w_dtype, long long w_rs, long long w_cs, long long b_stride, double max_abs,
                           double indefinite_rtol, const StepOptions& opts) {
  require_size(rows, "rows", (1LL << 31) - 1);
  require_size(n_in, "n_in");
  check_step_sizes(1, n_in + (bias ? 1 : 0), n_t);
  require(memory_depth >= 0 && memory_depth <= (1 << 20), "memory_depth must be in [0, 2^20]");
  check_dtype(x_dtype, "x_dtype", false);
  check_dtype(y_dtype, "y_dtype", false);
  check_dtype(w_dtype, "w_dtype", true);
  require(max_abs > 0 && indefinite_rtol >= 0, "max_abs must be positive and indefinite_rtol >= 0");
  FusedLinearLayout L;
  L.rows = (int)rows;
  L.n_in = (int)n_in;
  L.n_t = (int)n_t;
  L.memory_depth = (int)memory_depth;
  L.bias = bias;
  L.mean = mean;
  L.x = {x_dtype, x_rs, x_cs};
  L.y = {y_dtype, y_rs, y_cs};
  L.w = {w_dtype, w_rs, w_cs};
  L.w_dtype = w_dtype;
  L.b_stride = b_stride;
  L.max_abs = max_abs;
  L.indefinite_rtol = indefinite_rtol;
  return new FusedLinearStep(L, opts);
}

// (fault,) on a fault (nothing written), else (0, λ_k, Λ_k, sGCV, rel_residual, cond, eig_min).
py::tuple py_step(FusedLinearStep& self, std::uintptr_t x, std::uintptr_t y, std::uintptr_t w, std::uintptr_t b,
                  std::uintptr_t memory, int n_stored, int slot, std::uintptr_t Lambda, std::uintptr_t w_out,
                  std::uintptr_t b_out) {
  const FusedLinearLayout& L = self.layout();
  FusedLinearCall call;
  call.x = data_ptr(x, L.x.dtype, "x_ptr");
  call.y = data_ptr(y, L.y.dtype, "y_ptr");
  call.w = data_ptr(w, L.w_dtype, "w_ptr");
  call.b = L.bias ? data_ptr(b, L.w_dtype, "b_ptr") : nullptr;
  require(n_stored >= 0 && n_stored <= L.memory_depth,
          "n_stored must be in [0, memory_depth=" + std::to_string(L.memory_depth) + "], got " + std::to_string(n_stored));
  require(slot >= 0 && slot < std::max(L.memory_depth, 1), "slot must be a slot of the memory, got " + std::to_string(slot));
  call.memory = L.memory_depth > 0 ? as_ptr<double>(memory, "memory_ptr") : nullptr;
  call.n_stored = n_stored;
  call.slot = slot;
  call.Lambda = as_ptr<double>(Lambda, "Lambda_ptr");
  call.w_out = const_cast<void*>(data_ptr(w_out, L.w_dtype, "w_out_ptr"));
  call.b_out = L.bias ? const_cast<void*>(data_ptr(b_out, L.w_dtype, "b_out_ptr")) : nullptr;
  double info[SLIMFAST_N_INFO];
  int fault;
  {
    py::gil_scoped_release release;
    fault = self.step(*g_fused_lapack, call, info);
  }
  if (fault != FUSED_OK) return py::make_tuple(fault);
  return py::make_tuple(0, info[0], info[1], info[2], info[3], info[4], info[5]);
}

int py_statistics(const FusedLinearStep& self, std::uintptr_t x, std::uintptr_t y, std::uintptr_t G, std::uintptr_t H,
                  std::uintptr_t c) {
  const FusedLinearLayout& L = self.layout();
  return self.statistics(data_ptr(x, L.x.dtype, "x_ptr"), data_ptr(y, L.y.dtype, "y_ptr"), as_ptr<double>(G, "G_ptr"),
                         as_ptr<double>(H, "H_ptr"), as_ptr<double>(c, "c_ptr"));
}

}  // namespace

void bind_fused_head(py::module_& mod, const Lapack& lapack) {
  g_fused_lapack = &lapack;
  py::class_<FusedLinearStep>(mod, "FusedLinearStep",
                              "Fused slimTik step of one nn.Linear head layout (csrc/cpu/fused_head_cpu.h).")
      .def(py::init(&make_plan), py::arg("rows"), py::arg("n_in"), py::arg("n_t"), py::arg("bias"), py::arg("mean"),
           py::arg("memory_depth"), py::arg("x_dtype"), py::arg("x_row_stride"), py::arg("x_col_stride"),
           py::arg("y_dtype"), py::arg("y_row_stride"), py::arg("y_col_stride"), py::arg("w_dtype"),
           py::arg("w_row_stride"), py::arg("w_col_stride"), py::arg("b_stride"), py::arg("max_abs"),
           py::arg("indefinite_rtol"), py::arg("options"))
      .def("step", &py_step, py::arg("x_ptr"), py::arg("y_ptr"), py::arg("w_ptr"), py::arg("b_ptr"),
           py::arg("memory_ptr"), py::arg("n_stored"), py::arg("slot"), py::arg("Lambda_ptr"), py::arg("w_out_ptr"),
           py::arg("b_out_ptr"))
      .def("statistics", &py_statistics, py::arg("x_ptr"), py::arg("y_ptr"), py::arg("G_ptr"), py::arg("H_ptr"),
           py::arg("c_ptr"))
      .def_property_readonly("n_features", &FusedLinearStep::n_features);
  py::dict dtypes;
  dtypes["float64"] = (int)FUSED_F64;
  dtypes["float32"] = (int)FUSED_F32;
  dtypes["bfloat16"] = (int)FUSED_BF16;
  dtypes["float16"] = (int)FUSED_F16;
  mod.attr("FUSED_DTYPES") = dtypes;
  py::dict faults;
  faults["ok"] = (int)FUSED_OK;
  faults["data_nonfinite"] = (int)FUSED_DATA_NONFINITE;
  faults["statistics_invalid"] = (int)FUSED_STATS_INVALID;
  faults["weights_invalid"] = (int)FUSED_WEIGHTS_INVALID;
  faults["bounds"] = (int)FUSED_BOUNDS;
  faults["lapack_failed"] = (int)FUSED_LAPACK_FAILED;
  faults["result_invalid"] = (int)FUSED_RESULT_INVALID;
  mod.attr("FUSED_FAULTS") = faults;
}
