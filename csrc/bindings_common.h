// Argument checks shared by both pybind11 modules (csrc/cpu/bindings_cpu.cpp, csrc/cuda/bindings_cuda.cpp).
// Host code only. Every check throws std::invalid_argument, which pybind11 raises as ValueError.
//
// The modules are a pointer API: the caller guarantees that each buffer holds the sizes it passes
// (slimfast/backends/*.py do); what can be checked here — sizes against the kernels' integer
// limits, options, null and misaligned pointers — is checked once, by these functions.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "slimtik_block_step.h"

namespace slimfast {

// Most grid points a step accepts (scratch is allocated per point in both launchers).
inline constexpr int SLIMFAST_MAX_GRID = 100000;

inline void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// 46340² < 2³¹: one n × n matrix is indexed with 32-bit ints in places (LAPACK, CUDA kernels).
inline void require_size(long long value, const char* name, long long max_value = 46340) {
  require(value >= 1 && value <= max_value,
          std::string(name) + " must be in [1, " + std::to_string(max_value) + "], got " + std::to_string(value));
}

inline void check_step_sizes(long long B, long long n_f, long long n_t) {
  require_size(B, "B", 1LL << 30);
  require_size(n_f, "n_f");
  require_size(n_t, "n_t", 1LL << 30);
  require(n_t * n_f <= (1LL << 31) - 1, "n_t * n_f must fit in a 32-bit int");
}

inline void check_n_grid(int n_grid) {
  require(n_grid >= 2 && n_grid <= SLIMFAST_MAX_GRID,
          "n_grid must be in [2, " + std::to_string(SLIMFAST_MAX_GRID) + "], got " + std::to_string(n_grid));
}

// The one validation of the step options (slimfast.config.SolverConfig), for both modules.
inline StepOptions step_options(int mode, double lambda_const, double Lambda_min, double Lambda_max,
                                double lambda_min, double lambda_max, int n_grid, double root_tol, int max_root_iter) {
  require(mode == SLIMFAST_MODE_SGCV || mode == SLIMFAST_MODE_CONSTANT || mode == SLIMFAST_MODE_REFERENCE,
          "mode must be 0 (sgcv), 1 (constant) or 2 (reference), got " + std::to_string(mode));
  require(std::isfinite(lambda_const), "lambda_const must be finite");
  require(std::isfinite(Lambda_min) && std::isfinite(Lambda_max) && Lambda_min > 0 && Lambda_min <= Lambda_max,
          "Lambda_min, Lambda_max must satisfy 0 < Lambda_min <= Lambda_max < inf");
  require(!std::isnan(lambda_min) && !std::isnan(lambda_max) && lambda_min < lambda_max && lambda_max > 0,
          "lambda_min, lambda_max must satisfy lambda_min < lambda_max and lambda_max > 0");
  check_n_grid(n_grid);
  require(root_tol > 0 && root_tol < 1, "root_tol must lie in (0, 1)");
  require(max_root_iter >= 1, "max_root_iter must be positive, got " + std::to_string(max_root_iter));
  return StepOptions{mode, lambda_const, Lambda_min, Lambda_max, lambda_min, lambda_max, n_grid, root_tol,
                     max_root_iter};
}

// slimfast._cpu.StepOptions / slimfast._cuda.StepOptions: the step options as one bound struct,
// constructed (and so validated) only through step_options. Module-local: each module has its own.
inline void bind_step_options(pybind11::module_& mod) {
  namespace py = pybind11;
  py::class_<StepOptions>(mod, "StepOptions", py::module_local(),
                          "Validated options of one step (slimfast.config.SolverConfig.kernel_options()).")
      .def(py::init(&step_options), py::arg("mode"), py::arg("lambda_const"), py::arg("Lambda_min"),
           py::arg("Lambda_max"), py::arg("lambda_min"), py::arg("lambda_max"), py::arg("n_grid"), py::arg("root_tol"),
           py::arg("max_root_iter"))
      .def_readonly("mode", &StepOptions::mode)
      .def_readonly("lambda_const", &StepOptions::lambda_const)
      .def_readonly("Lambda_min", &StepOptions::Lambda_min)
      .def_readonly("Lambda_max", &StepOptions::Lambda_max)
      .def_readonly("lambda_min", &StepOptions::lambda_min)
      .def_readonly("lambda_max", &StepOptions::lambda_max)
      .def_readonly("n_grid", &StepOptions::n_grid)
      .def_readonly("root_tol", &StepOptions::root_tol)
      .def_readonly("max_root_iter", &StepOptions::max_root_iter);
}

inline void check_jacobi_options(double tol, int max_sweeps) {
  require(std::isfinite(tol) && tol >= 0, "tol must be finite and >= 0");
  require(max_sweeps >= 1, "max_sweeps must be positive, got " + std::to_string(max_sweeps));
}

template <class T>
T* as_ptr(std::uintptr_t value, const char* name) {
  require(value != 0, std::string(name) + " must be a non-null data pointer");
  require(value % alignof(T) == 0, std::string(name) + " must be aligned to " + std::to_string(alignof(T)) + " bytes");
  return reinterpret_cast<T*>(value);
}

template <class T>
T* as_optional_ptr(std::uintptr_t value, const char* name) {
  return value == 0 ? nullptr : as_ptr<T>(value, name);
}

// The arrays of one step call (slimfast._cpu.StepBuffers / slimfast._cuda.StepBuffers), checked
// once, here, for every launcher: sizes against the kernels' integer limits, required pointers
// non-null and aligned, optional ones 0 or aligned. Constructed only through step_buffers, so a
// step binding never sees an unchecked pointer.
struct StepBuffers {
  long long B;
  int n_f, n_t;
  bool memory_empty;
  const double *G_mem, *G, *H, *c, *m, *W, *Lambda_prev;
  double *W_out, *info;
  // Optional (nullptr when not given): scratch of the block code, its Jacobi warm start and
  // eigenvector output, and an eigendecomposition of G_mem computed elsewhere.
  double* workspace;
  const double* U0;
  double* U_out;
  const double *s_in, *U_in;
};

inline StepBuffers step_buffers(long long B, long long n_f, long long n_t, bool memory_empty, std::uintptr_t G_mem,
                                std::uintptr_t G, std::uintptr_t H, std::uintptr_t c, std::uintptr_t m,
                                std::uintptr_t W, std::uintptr_t Lambda_prev, std::uintptr_t W_out,
                                std::uintptr_t info, std::uintptr_t workspace, std::uintptr_t U0,
                                std::uintptr_t U_out, std::uintptr_t s_in, std::uintptr_t U_in) {
  check_step_sizes(B, n_f, n_t);
  StepBuffers p;
  p.B = B;
  p.n_f = (int)n_f;
  p.n_t = (int)n_t;
  p.memory_empty = memory_empty;
  p.G_mem = as_ptr<const double>(G_mem, "G_mem_ptr");
  p.G = as_ptr<const double>(G, "G_ptr");
  p.H = as_ptr<const double>(H, "H_ptr");
  p.c = as_ptr<const double>(c, "c_ptr");
  p.m = as_ptr<const double>(m, "m_ptr");
  p.W = as_ptr<const double>(W, "W_ptr");
  p.Lambda_prev = as_ptr<const double>(Lambda_prev, "Lambda_prev_ptr");
  p.W_out = as_ptr<double>(W_out, "W_out_ptr");
  p.info = as_ptr<double>(info, "info_ptr");
  p.workspace = as_optional_ptr<double>(workspace, "workspace_ptr");
  p.U0 = as_optional_ptr<const double>(U0, "U0_ptr");
  p.U_out = as_optional_ptr<double>(U_out, "U_out_ptr");
  p.s_in = as_optional_ptr<const double>(s_in, "s_in_ptr");
  p.U_in = as_optional_ptr<const double>(U_in, "U_in_ptr");
  require((p.s_in == nullptr) == (p.U_in == nullptr), "s_in_ptr and U_in_ptr must be given together");
  require(p.W_out != p.W, "W_out_ptr must not alias W_ptr");
  return p;
}

// slimfast._cpu.StepBuffers / slimfast._cuda.StepBuffers (module-local, like StepOptions).
inline void bind_step_buffers(pybind11::module_& mod) {
  namespace py = pybind11;
  const std::uintptr_t null = 0;
  py::class_<StepBuffers>(mod, "StepBuffers", py::module_local(),
                          "Checked data pointers and sizes of one step (slimfast.backends.boundary.step_buffers).")
      .def(py::init(&step_buffers), py::arg("B"), py::arg("n_f"), py::arg("n_t"), py::arg("memory_empty"),
           py::arg("G_mem_ptr"), py::arg("G_ptr"), py::arg("H_ptr"), py::arg("c_ptr"), py::arg("m_ptr"),
           py::arg("W_ptr"), py::arg("Lambda_prev_ptr"), py::arg("W_out_ptr"), py::arg("info_ptr"),
           py::arg("workspace_ptr") = null, py::arg("U0_ptr") = null, py::arg("U_out_ptr") = null,
           py::arg("s_in_ptr") = null, py::arg("U_in_ptr") = null)
      .def_readonly("B", &StepBuffers::B)
      .def_readonly("n_f", &StepBuffers::n_f)
      .def_readonly("n_t", &StepBuffers::n_t)
      .def_readonly("memory_empty", &StepBuffers::memory_empty);
}

// The block layout of a block-structured step (slimfast._cpu.BlockOffsets / _cuda.BlockOffsets;
// Python's boundary.BlockLayout): P + 1 increasing offsets from 0 to n_f − border, checked once
// here. `device_offsets` is the same offsets in device memory for the CUDA kernel (the caller
// guarantees they equal `offsets`; 0 for the host launchers, which read `offsets`).
struct BlockOffsets {
  std::vector<int> offsets;
  bool border;
  int n_f;
  const int* device_offsets;

  int P() const { return (int)offsets.size() - 1; }
  // The kernels' view, reading the offsets at `off` (offsets.data() or device_offsets).
  BlockDims dims(const int* off) const {
    BlockDims bd = block_dims(offsets.data(), P(), border);  // sizes from the host copy
    bd.off = off;
    return bd;
  }
};

inline BlockOffsets block_offsets(const std::vector<long long>& offsets, bool border, long long n_f,
                                  std::uintptr_t device_offsets) {
  require_size(n_f, "n_f");
  require(offsets.size() >= 2, "block offsets must have at least 2 entries (one block), got " +
                                   std::to_string(offsets.size()));
  require(offsets[0] == 0, "block offsets must start at 0, got " + std::to_string(offsets[0]));
  for (size_t i = 1; i < offsets.size(); ++i)
    require(offsets[i] > offsets[i - 1], "block offsets must be strictly increasing, got " +
                                             std::to_string(offsets[i - 1]) + " then " + std::to_string(offsets[i]));
  const long long n_core = n_f - (border ? 1 : 0);
  require(offsets.back() == n_core, "the last block offset must be n_f - border = " + std::to_string(n_core) +
                                        ", got " + std::to_string(offsets.back()));
  BlockOffsets b;
  b.offsets.assign(offsets.begin(), offsets.end());
  b.border = border;
  b.n_f = (int)n_f;
  b.device_offsets = as_optional_ptr<const int>(device_offsets, "offsets_ptr");
  return b;
}

inline void bind_block_offsets(pybind11::module_& mod) {
  namespace py = pybind11;
  const std::uintptr_t null = 0;
  py::class_<BlockOffsets>(mod, "BlockOffsets", py::module_local(),
                           "Checked block layout of a block-structured step (boundary.BlockLayout.offsets()).")
      .def(py::init(&block_offsets), py::arg("offsets"), py::arg("border"), py::arg("n_f"),
           py::arg("offsets_ptr") = null)
      .def_readonly("border", &BlockOffsets::border)
      .def_readonly("n_f", &BlockOffsets::n_f)
      .def_property_readonly("P", &BlockOffsets::P);
}

// A step's buffers and its layout describe the same features.
inline void check_blocks_match(const StepBuffers& p, const BlockOffsets& blocks) {
  require(blocks.n_f == p.n_f, "blocks describe n_f = " + std::to_string(blocks.n_f) + " features, the buffers " +
                                   std::to_string(p.n_f));
}

// The block code's scratch is the caller's (it never allocates): required by its launchers.
inline void require_workspace(const StepBuffers& p) {
  require(p.workspace != nullptr, "workspace_ptr must be a non-null data pointer");
}

// Workspace size queries of the block code (device and emulation alike): the arguments checked
// once, then `size(...)` (the launcher's own count).
template <class Size>
long long step_workspace_query(Size size, long long B, long long n_f, long long n_t, int n_grid, bool memory_empty) {
  check_step_sizes(B, n_f, n_t);
  check_n_grid(n_grid);
  return size(B, (int)n_f, (int)n_t, n_grid, memory_empty);
}

// The block step's workspace query: the layout must describe n_f features, then
// `size(B, n_f, n_t, n_grid, bd)` (the launcher's own count) on its host offsets.
template <class Size>
long long block_workspace_query(Size size, long long B, long long n_f, long long n_t, int n_grid,
                                const BlockOffsets& blocks) {
  require(blocks.n_f == n_f, "blocks describe n_f = " + std::to_string(blocks.n_f) + " features, not " +
                                 std::to_string(n_f));
  const BlockDims bd = blocks.dims(blocks.offsets.data());
  return step_workspace_query([&](long long b, int nf, int nt, int ng, bool) { return size(b, nf, nt, ng, bd); }, B,
                              n_f, n_t, n_grid, false);
}

template <class Size>
long long jacobi_workspace_query(Size size, long long B, long long n) {
  require_size(B, "B", 1LL << 30);
  require_size(n, "n");
  return size(B, (int)n);
}

// Arrays of one Jacobi call of the block code (device and emulation alike), checked once.
struct JacobiBuffers {
  const double *A, *U0;
  double *s, *U, *workspace;
  int* sweeps;
};

inline JacobiBuffers jacobi_buffers(long long B, long long n, std::uintptr_t A, std::uintptr_t U0, std::uintptr_t s,
                                    std::uintptr_t U, double tol, int max_sweeps, std::uintptr_t workspace,
                                    std::uintptr_t sweeps) {
  require_size(B, "B", 1LL << 30);
  require_size(n, "n");
  check_jacobi_options(tol, max_sweeps);
  return JacobiBuffers{as_ptr<const double>(A, "A_ptr"), as_optional_ptr<const double>(U0, "U0_ptr"),
                       as_ptr<double>(s, "s_ptr"), as_ptr<double>(U, "U_ptr"), as_ptr<double>(workspace, "workspace_ptr"),
                       as_optional_ptr<int>(sweeps, "sweeps_ptr")};
}

}  // namespace slimfast
