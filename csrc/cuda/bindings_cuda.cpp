// pybind11 module slimfast._cuda (built by the host compiler; twin of csrc/cpu/bindings_cpu.cpp).
// Device arrays cross as data pointers (Python ints), the stream as an int
// (torch.cuda.current_stream().cuda_stream), so the module never links libtorch and survives torch
// upgrades; slimfast/backends/cuda.py owns the tensors. What can be checked (sizes, options, null
// and misaligned pointers) is checked by csrc/bindings_common.h, shared with the CPU module; the
// extent of the memory behind a pointer cannot be, so the caller guarantees it.
//
// Also exposes the host emulation of the same kernels (emulate_*: host pointers) and two header
// helpers, so that machines without a GPU can test the kernels' arithmetic.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "bindings_common.h"
#include "slimtik_step_cuda.cuh"
#include "slimtik_step_cuda.h"

namespace py = pybind11;
using namespace slimfast;

namespace {

CudaLaunch launch_options(int device, std::uintptr_t stream, int n_threads, int shared) {
  require(device >= 0, "device must be a CUDA device index >= 0, got " + std::to_string(device));
  require(n_threads == 0 || (n_threads >= 32 && n_threads <= 512 && n_threads % 32 == 0),
          "n_threads must be 0 (automatic) or a multiple of 32 in [32, 512], got " + std::to_string(n_threads));
  require(shared >= SHARED_AUTO && shared <= SHARED_ON,
          "shared must be -1 (auto), 0 (off), 1 (matrix) or 2 (on), got " + std::to_string(shared));
  return CudaLaunch{device, stream, n_threads, shared};
}

struct StepPointers {
  const double *G_mem, *G, *H, *c, *m, *W, *Lambda_prev, *U0, *s_in, *U_in;
  double *W_out, *info, *U_out, *workspace;
};

StepPointers step_pointers(std::uintptr_t G_mem_ptr, std::uintptr_t G_ptr, std::uintptr_t H_ptr, std::uintptr_t c_ptr,
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

long long py_workspace_doubles(long long B, long long n_f, long long n_t, int n_grid, bool memory_empty) {
  check_step_sizes(B, n_f, n_t);
  check_n_grid(n_grid);
  return step_workspace_doubles(B, (int)n_f, (int)n_t, n_grid, memory_empty);
}

long long py_jacobi_workspace_doubles(long long B, long long n) {
  require_size(B, "B", 1LL << 30);
  require_size(n, "n");
  return jacobi_workspace_doubles(B, (int)n);
}

void py_slimtik_step(long long B, long long n_f, long long n_t, std::uintptr_t G_mem_ptr, std::uintptr_t G_ptr,
                     std::uintptr_t H_ptr, std::uintptr_t c_ptr, std::uintptr_t m_ptr, std::uintptr_t W_ptr,
                     std::uintptr_t Lambda_prev_ptr, bool memory_empty, int mode, double lambda_const,
                     double Lambda_min, double Lambda_max, double lambda_min, double lambda_max, int n_grid,
                     double root_tol, int max_root_iter, std::uintptr_t W_out_ptr, std::uintptr_t info_ptr,
                     std::uintptr_t workspace_ptr, std::uintptr_t U0_ptr, std::uintptr_t U_out_ptr,
                     std::uintptr_t stream, int device, double jacobi_tol, int max_sweeps, int n_threads,
                     int shared, std::uintptr_t s_in_ptr, std::uintptr_t U_in_ptr) {
  check_step_sizes(B, n_f, n_t);
  const StepOptions opts = step_options(mode, lambda_const, Lambda_min, Lambda_max, lambda_min, lambda_max, n_grid,
                                        root_tol, max_root_iter);
  check_jacobi_options(jacobi_tol, max_sweeps);
  const CudaLaunch launch = launch_options(device, stream, n_threads, shared);
  const StepPointers p = step_pointers(G_mem_ptr, G_ptr, H_ptr, c_ptr, m_ptr, W_ptr, Lambda_prev_ptr, W_out_ptr,
                                       info_ptr, workspace_ptr, U0_ptr, U_out_ptr, s_in_ptr, U_in_ptr);
  py::gil_scoped_release release;
  slimtik_step_cuda(B, (int)n_f, (int)n_t, p.G_mem, p.G, p.H, p.c, p.m, p.W, p.Lambda_prev, memory_empty, opts, p.U0,
                    p.s_in, p.U_in, p.W_out, p.info, p.U_out, p.workspace, jacobi_tol, max_sweeps, launch);
}

void py_jacobi_eigh(long long B, long long n, std::uintptr_t A_ptr, std::uintptr_t U0_ptr, std::uintptr_t s_ptr,
                    std::uintptr_t U_ptr, double tol, int max_sweeps, std::uintptr_t workspace_ptr,
                    std::uintptr_t stream, int device, std::uintptr_t sweeps_ptr, int n_threads, int shared) {
  require_size(B, "B", 1LL << 30);
  require_size(n, "n");
  check_jacobi_options(tol, max_sweeps);
  const CudaLaunch launch = launch_options(device, stream, n_threads, shared);
  const double* A = as_ptr<const double>(A_ptr, "A_ptr");
  const double* U0 = as_optional_ptr<const double>(U0_ptr, "U0_ptr");
  double* s = as_ptr<double>(s_ptr, "s_ptr");
  double* U = as_ptr<double>(U_ptr, "U_ptr");
  double* ws = as_ptr<double>(workspace_ptr, "workspace_ptr");
  int* sweeps = as_optional_ptr<int>(sweeps_ptr, "sweeps_ptr");
  py::gil_scoped_release release;
  jacobi_eigh_cuda(B, (int)n, A, U0, s, U, sweeps, ws, tol, max_sweeps, launch);
}

void py_emulate_slimtik_step(long long B, long long n_f, long long n_t, std::uintptr_t G_mem_ptr, std::uintptr_t G_ptr,
                             std::uintptr_t H_ptr, std::uintptr_t c_ptr, std::uintptr_t m_ptr, std::uintptr_t W_ptr,
                             std::uintptr_t Lambda_prev_ptr, bool memory_empty, int mode, double lambda_const,
                             double Lambda_min, double Lambda_max, double lambda_min, double lambda_max, int n_grid,
                             double root_tol, int max_root_iter, std::uintptr_t W_out_ptr, std::uintptr_t info_ptr,
                             std::uintptr_t workspace_ptr, std::uintptr_t U0_ptr, std::uintptr_t U_out_ptr,
                             double jacobi_tol, int max_sweeps, int n_threads, bool reverse, int shared,
                             std::uintptr_t s_in_ptr, std::uintptr_t U_in_ptr) {
  check_step_sizes(B, n_f, n_t);
  const StepOptions opts = step_options(mode, lambda_const, Lambda_min, Lambda_max, lambda_min, lambda_max, n_grid,
                                        root_tol, max_root_iter);
  check_jacobi_options(jacobi_tol, max_sweeps);
  require(n_threads >= 1, "n_threads must be positive, got " + std::to_string(n_threads));
  require(shared >= SHARED_OFF && shared <= SHARED_ON, "shared must be 0 (off), 1 (matrix) or 2 (on)");
  const StepPointers p = step_pointers(G_mem_ptr, G_ptr, H_ptr, c_ptr, m_ptr, W_ptr, Lambda_prev_ptr, W_out_ptr,
                                       info_ptr, workspace_ptr, U0_ptr, U_out_ptr, s_in_ptr, U_in_ptr);
  py::gil_scoped_release release;
  slimtik_step_emulate(B, (int)n_f, (int)n_t, p.G_mem, p.G, p.H, p.c, p.m, p.W, p.Lambda_prev, memory_empty, opts,
                       p.U0, p.s_in, p.U_in, p.W_out, p.info, p.U_out, p.workspace, jacobi_tol, max_sweeps,
                       n_threads, reverse, shared);
}

void py_emulate_jacobi_eigh(long long B, long long n, std::uintptr_t A_ptr, std::uintptr_t U0_ptr, std::uintptr_t s_ptr,
                            std::uintptr_t U_ptr, double tol, int max_sweeps, std::uintptr_t workspace_ptr,
                            std::uintptr_t sweeps_ptr, int n_threads, bool reverse, int shared) {
  require_size(B, "B", 1LL << 30);
  require_size(n, "n");
  check_jacobi_options(tol, max_sweeps);
  require(n_threads >= 1, "n_threads must be positive, got " + std::to_string(n_threads));
  require(shared >= SHARED_OFF && shared <= SHARED_ON, "shared must be 0 (off), 1 (matrix) or 2 (on)");
  const double* A = as_ptr<const double>(A_ptr, "A_ptr");
  const double* U0 = as_optional_ptr<const double>(U0_ptr, "U0_ptr");
  double* s = as_ptr<double>(s_ptr, "s_ptr");
  double* U = as_ptr<double>(U_ptr, "U_ptr");
  double* ws = as_ptr<double>(workspace_ptr, "workspace_ptr");
  int* sweeps = as_optional_ptr<int>(sweeps_ptr, "sweeps_ptr");
  py::gil_scoped_release release;
  jacobi_eigh_emulate(B, (int)n, A, U0, s, U, sweeps, ws, tol, max_sweeps, n_threads, reverse, shared);
}

// Pairs (p, q) of every round of the round-robin ordering for an even n_pad (header helper).
py::list py_round_robin_schedule(int n_pad) {
  require(n_pad >= 2 && n_pad % 2 == 0 && n_pad <= 100000, "n_pad must be even and in [2, 100000]");
  py::list rounds;
  for (int r = 0; r < n_pad - 1; ++r) {
    py::list pairs;
    for (int k = 0; k < n_pad / 2; ++k) {
      int p, q;
      round_robin_pair(n_pad, r, k, &p, &q);
      pairs.append(py::make_tuple(p, q));
    }
    rounds.append(pairs);
  }
  return rounds;
}

py::tuple py_jacobi_rotation(double app, double aqq, double apq) {
  const JacobiRotation r = jacobi_rotation(app, aqq, apq);
  return py::make_tuple(r.c, r.s, r.t);
}

}  // namespace

PYBIND11_MODULE(_cuda, mod) {
  mod.doc() =
      "slimfast CUDA kernels (csrc/cuda): batched slimTik step and block-parallel Jacobi eigensolver on raw "
      "float64 device pointers, plus their host emulation for tests.";
  const std::uintptr_t null = 0;
  mod.def("workspace_doubles", &py_workspace_doubles, py::arg("B"), py::arg("n_f"), py::arg("n_t"), py::arg("n_grid"),
          py::arg("memory_empty"), "float64 workspace elements slimtik_step needs for B problems.");
  mod.def("jacobi_workspace_doubles", &py_jacobi_workspace_doubles, py::arg("B"), py::arg("n"),
          "float64 workspace elements jacobi_eigh needs for B matrices.");
  mod.def("slimtik_step", &py_slimtik_step, py::arg("B"), py::arg("n_f"), py::arg("n_t"), py::arg("G_mem_ptr"),
          py::arg("G_ptr"), py::arg("H_ptr"), py::arg("c_ptr"), py::arg("m_ptr"), py::arg("W_ptr"),
          py::arg("Lambda_prev_ptr"), py::arg("memory_empty"), py::arg("mode"), py::arg("lambda_const"),
          py::arg("Lambda_min"), py::arg("Lambda_max"), py::arg("lambda_min"), py::arg("lambda_max"),
          py::arg("n_grid"), py::arg("root_tol"), py::arg("max_root_iter"), py::arg("W_out_ptr"),
          py::arg("info_ptr"), py::arg("workspace_ptr"), py::arg("U0_ptr") = null, py::arg("U_out_ptr") = null,
          py::arg("stream") = null, py::arg("device") = 0, py::arg("jacobi_tol") = SLIMFAST_CUDA_JACOBI_TOL,
          py::arg("max_sweeps") = SLIMFAST_CUDA_JACOBI_MAX_SWEEPS, py::arg("n_threads") = 0,
          py::arg("shared") = (int)SHARED_AUTO, py::arg("s_in_ptr") = null, py::arg("U_in_ptr") = null,
          "Enqueue one slimTik step for B problems on `stream` (device pointers; no synchronisation).");
  mod.def("jacobi_eigh", &py_jacobi_eigh, py::arg("B"), py::arg("n"), py::arg("A_ptr"), py::arg("U0_ptr"),
          py::arg("s_ptr"), py::arg("U_ptr"), py::arg("tol"), py::arg("max_sweeps"), py::arg("workspace_ptr"),
          py::arg("stream") = null, py::arg("device") = 0, py::arg("sweeps_ptr") = null, py::arg("n_threads") = 0,
          py::arg("shared") = (int)SHARED_AUTO,
          "Enqueue the block-parallel Jacobi eigendecomposition of B symmetric n×n matrices (device pointers).");
  mod.def("emulate_slimtik_step", &py_emulate_slimtik_step, py::arg("B"), py::arg("n_f"), py::arg("n_t"),
          py::arg("G_mem_ptr"), py::arg("G_ptr"), py::arg("H_ptr"), py::arg("c_ptr"), py::arg("m_ptr"),
          py::arg("W_ptr"), py::arg("Lambda_prev_ptr"), py::arg("memory_empty"), py::arg("mode"),
          py::arg("lambda_const"), py::arg("Lambda_min"), py::arg("Lambda_max"), py::arg("lambda_min"),
          py::arg("lambda_max"), py::arg("n_grid"), py::arg("root_tol"), py::arg("max_root_iter"),
          py::arg("W_out_ptr"), py::arg("info_ptr"), py::arg("workspace_ptr"), py::arg("U0_ptr") = null,
          py::arg("U_out_ptr") = null, py::arg("jacobi_tol") = SLIMFAST_CUDA_JACOBI_TOL,
          py::arg("max_sweeps") = SLIMFAST_CUDA_JACOBI_MAX_SWEEPS, py::arg("n_threads") = 128,
          py::arg("reverse") = false, py::arg("shared") = (int)SHARED_OFF, py::arg("s_in_ptr") = null,
          py::arg("U_in_ptr") = null,
          "The slimtik_step kernel's block code run serially on the host (host pointers), for tests.");
  mod.def("emulate_jacobi_eigh", &py_emulate_jacobi_eigh, py::arg("B"), py::arg("n"), py::arg("A_ptr"),
          py::arg("U0_ptr"), py::arg("s_ptr"), py::arg("U_ptr"), py::arg("tol"), py::arg("max_sweeps"),
          py::arg("workspace_ptr"), py::arg("sweeps_ptr") = null, py::arg("n_threads") = 128,
          py::arg("reverse") = false, py::arg("shared") = (int)SHARED_OFF,
          "The jacobi_eigh kernel's block code run serially on the host (host pointers), for tests.");
  mod.def("round_robin_schedule", &py_round_robin_schedule, py::arg("n_pad"),
          "Rounds of (p, q) pairs of the parallel Jacobi ordering (slimfast_math.h round_robin_pair).");
  mod.def("jacobi_rotation", &py_jacobi_rotation, py::arg("app"), py::arg("aqq"), py::arg("apq"),
          "(c, s, t) of slimfast_math.h jacobi_rotation.");
  mod.attr("JACOBI_TOL") = SLIMFAST_CUDA_JACOBI_TOL;
  mod.attr("JACOBI_MAX_SWEEPS") = SLIMFAST_CUDA_JACOBI_MAX_SWEEPS;
  mod.attr("MAX_THREADS") = 512;
  mod.attr("SHARED_AUTO") = (int)SHARED_AUTO;
  mod.attr("SHARED_OFF") = (int)SHARED_OFF;
  mod.attr("SHARED_MATRIX") = (int)SHARED_MATRIX;
  mod.attr("SHARED_ON") = (int)SHARED_ON;
  mod.attr("N_INFO") = SLIMFAST_N_INFO;
}
