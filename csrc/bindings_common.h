// Argument checks shared by both pybind11 modules (csrc/cpu/bindings_cpu.cpp, csrc/cuda/bindings_cuda.cpp).
// Host code only. Every check throws std::invalid_argument, which pybind11 raises as ValueError.
//
// The modules are a pointer API: the caller guarantees that each buffer holds the sizes it passes
// (slimfast/backends/*.py do); what can be checked here — sizes against the kernels' integer
// limits, options, null and misaligned pointers — is checked once, by these functions.
#pragma once

#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "slimfast_math.h"

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

// Pointers of one step call: required ones non-null and aligned, optional ones 0 or aligned.
struct StepPointers {
  const double *G_mem, *G, *H, *c, *m, *W, *Lambda_prev, *U0, *s_in, *U_in;
  double *W_out, *info, *U_out, *workspace;
};

inline StepPointers step_pointers(std::uintptr_t G_mem_ptr, std::uintptr_t G_ptr, std::uintptr_t H_ptr, std::uintptr_t c_ptr,
                           std::uintptr_t m_ptr, std::uintptr_t W_ptr, std::uintptr_t Lambda_prev_ptr,
                           std::uintptr_t W_out_ptr, std::uintptr_t info_ptr, std::uintptr_t workspace_ptr,
                           std::uintptr_t U0_ptr, std::uintptr_t U_out_ptr, std::uintptr_t s_in_ptr,
                           std::uintptr_t U_in_ptr) {
  StepPointers p;
  p.G_mem = as_ptr<const double>(G_mem_ptr, "G_mem_ptr");
  p.G = as_ptr<const double>(G_ptr, "G_ptr");
  p.H = as_ptr<const double>(H_ptr, "H_ptr");
  p.c = as_ptr<const double>(c_ptr, "c_ptr");
  p.m = as_ptr<const double>(m_ptr, "m_ptr");
  p.W = as_ptr<const double>(W_ptr, "W_ptr");
  p.Lambda_prev = as_ptr<const double>(Lambda_prev_ptr, "Lambda_prev_ptr");
  p.W_out = as_ptr<double>(W_out_ptr, "W_out_ptr");
  p.info = as_ptr<double>(info_ptr, "info_ptr");
  p.workspace = as_ptr<double>(workspace_ptr, "workspace_ptr");
  p.U0 = as_optional_ptr<const double>(U0_ptr, "U0_ptr");
  p.U_out = as_optional_ptr<double>(U_out_ptr, "U_out_ptr");
  p.s_in = as_optional_ptr<const double>(s_in_ptr, "s_in_ptr");
  p.U_in = as_optional_ptr<const double>(U_in_ptr, "U_in_ptr");
  require((p.s_in == nullptr) == (p.U_in == nullptr), "s_in_ptr and U_in_ptr must be given together");
  require(p.W_out != p.W, "W_out_ptr must not alias W_ptr");
  return p;
}

}  // namespace slimfast
