// The host emulation of the CUDA block code, registered in slimfast._cpu (bind_block_emulation),
// so that every CPU install runs the GPU's arithmetic in its tests (tests/block_emulation.py).
// Host pointers; the checks are csrc/bindings_common.h's, as for the device entry points.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bindings_common.h"
#include "cuda/slimtik_step_cuda.cuh"
#include "slimtik_step_emulate.h"

namespace py = pybind11;
using namespace slimfast;

namespace {

// Jacobi storage levels of the emulation (csrc/cuda/slimtik_step_cuda.h SharedMode without AUTO).
constexpr int SHARED_OFF = 0, SHARED_ON = 2;

long long py_emulate_workspace_doubles(long long B, long long n_f, long long n_t, int n_grid, bool memory_empty) {
  return step_workspace_query(emulate_step_workspace_doubles, B, n_f, n_t, n_grid, memory_empty);
}

long long py_emulate_jacobi_workspace_doubles(long long B, long long n) {
  return jacobi_workspace_query(emulate_jacobi_workspace_doubles, B, n);
}

// The emulation runs n_threads simulated threads one after another (reversed with `reverse`);
// `shared` is the storage level of its Jacobi matrices (no AUTO: the emulation has no limit).
void check_emulation(int n_threads, int shared) {
  require(n_threads >= 1, "n_threads must be positive, got " + std::to_string(n_threads));
  require(shared >= SHARED_OFF && shared <= SHARED_ON, "shared must be 0 (off), 1 (matrix) or 2 (on)");
}

void py_emulate_slimtik_step(const StepBuffers& p, const StepOptions& opts, double jacobi_tol, int max_sweeps,
                             int n_threads, bool reverse, int shared) {
  require_workspace(p);
  check_jacobi_options(jacobi_tol, max_sweeps);
  check_emulation(n_threads, shared);
  py::gil_scoped_release release;
  slimtik_step_emulate(p.B, p.n_f, p.n_t, p.G_mem, p.G, p.H, p.c, p.m, p.W, p.Lambda_prev, p.memory_empty, opts,
                       p.U0, p.s_in, p.U_in, p.W_out, p.info, p.U_out, p.workspace, jacobi_tol, max_sweeps,
                       n_threads, reverse, shared);
}

long long py_emulate_block_workspace_doubles(long long B, long long n_f, long long n_t, int n_grid,
                                             const BlockOffsets& blocks) {
  const auto size = [](long long b, int nf, int nt, int ng, const BlockDims& bd) {
    return emulate_block_step_workspace_doubles(b, nf, nt, ng, bd);
  };
  return block_workspace_query(size, B, n_f, n_t, n_grid, blocks);
}

void py_emulate_slimtik_block_step(const StepBuffers& p, const BlockOffsets& blocks, const StepOptions& opts,
                                   double jacobi_tol, int max_sweeps, int n_threads, bool reverse, int shared) {
  require_workspace(p);
  require(p.U0 == nullptr && p.U_out == nullptr && p.s_in == nullptr,
          "the block step takes no U0_ptr, U_out_ptr, s_in_ptr or U_in_ptr");
  check_blocks_match(p, blocks);
  check_jacobi_options(jacobi_tol, max_sweeps);
  check_emulation(n_threads, shared);
  py::gil_scoped_release release;
  slimtik_block_step_emulate(p.B, p.n_f, p.n_t, p.G_mem, p.G, p.H, p.c, p.m, p.W, p.Lambda_prev,
                             blocks.dims(blocks.offsets.data()), opts, p.W_out, p.info, p.workspace, jacobi_tol,
                             max_sweeps, n_threads, reverse, shared);
}

void py_emulate_jacobi_eigh(long long B, long long n, std::uintptr_t A_ptr, std::uintptr_t U0_ptr, std::uintptr_t s_ptr,
                            std::uintptr_t U_ptr, double tol, int max_sweeps, std::uintptr_t workspace_ptr,
                            std::uintptr_t sweeps_ptr, int n_threads, bool reverse, int shared) {
  const JacobiBuffers j = jacobi_buffers(B, n, A_ptr, U0_ptr, s_ptr, U_ptr, tol, max_sweeps, workspace_ptr, sweeps_ptr);
  check_emulation(n_threads, shared);
  py::gil_scoped_release release;
  jacobi_eigh_emulate(B, (int)n, j.A, j.U0, j.s, j.U, j.sweeps, j.workspace, tol, max_sweeps, n_threads, reverse,
                      shared);
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

void bind_block_emulation(py::module_& mod) {
  const std::uintptr_t null = 0;
  mod.def("emulate_workspace_doubles", &py_emulate_workspace_doubles, py::arg("B"), py::arg("n_f"), py::arg("n_t"),
          py::arg("n_grid"), py::arg("memory_empty"), "float64 workspace elements emulate_slimtik_step needs.");
  mod.def("emulate_jacobi_workspace_doubles", &py_emulate_jacobi_workspace_doubles, py::arg("B"), py::arg("n"),
          "float64 workspace elements emulate_jacobi_eigh needs.");
  mod.def("emulate_slimtik_step", &py_emulate_slimtik_step, py::arg("buffers"), py::arg("options"),
          py::arg("jacobi_tol") = SLIMFAST_CUDA_JACOBI_TOL, py::arg("max_sweeps") = SLIMFAST_CUDA_JACOBI_MAX_SWEEPS,
          py::arg("n_threads") = 128, py::arg("reverse") = false, py::arg("shared") = SHARED_OFF,
          "The slimtik_step kernel's block code run serially on the host (host pointers), for tests.");
  mod.def("emulate_block_workspace_doubles", &py_emulate_block_workspace_doubles, py::arg("B"), py::arg("n_f"),
          py::arg("n_t"), py::arg("n_grid"), py::arg("blocks"),
          "float64 workspace elements emulate_slimtik_block_step needs.");
  mod.def("emulate_slimtik_block_step", &py_emulate_slimtik_block_step, py::arg("buffers"), py::arg("blocks"),
          py::arg("options"), py::arg("jacobi_tol") = SLIMFAST_CUDA_JACOBI_TOL,
          py::arg("max_sweeps") = SLIMFAST_CUDA_JACOBI_MAX_SWEEPS, py::arg("n_threads") = 128,
          py::arg("reverse") = false, py::arg("shared") = SHARED_OFF,
          "The slimtik_block_step kernel's block code run serially on the host (host pointers), for tests.");
  mod.def("emulate_jacobi_eigh", &py_emulate_jacobi_eigh, py::arg("B"), py::arg("n"), py::arg("A_ptr"),
          py::arg("U0_ptr"), py::arg("s_ptr"), py::arg("U_ptr"), py::arg("tol"), py::arg("max_sweeps"),
          py::arg("workspace_ptr"), py::arg("sweeps_ptr") = null, py::arg("n_threads") = 128,
          py::arg("reverse") = false, py::arg("shared") = SHARED_OFF,
          "The jacobi_eigh kernel's block code run serially on the host (host pointers), for tests.");
  mod.def("round_robin_schedule", &py_round_robin_schedule, py::arg("n_pad"),
          "Rounds of (p, q) pairs of the parallel Jacobi ordering (slimfast_jacobi.h round_robin_pair).");
  mod.def("jacobi_rotation", &py_jacobi_rotation, py::arg("app"), py::arg("aqq"), py::arg("apq"),
          "(c, s, t) of slimfast_jacobi.h jacobi_rotation.");
  mod.attr("JACOBI_TOL") = SLIMFAST_CUDA_JACOBI_TOL;
  mod.attr("JACOBI_MAX_SWEEPS") = SLIMFAST_CUDA_JACOBI_MAX_SWEEPS;
}
