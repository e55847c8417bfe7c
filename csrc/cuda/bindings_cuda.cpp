// pybind11 module slimfast._cuda (built by the host compiler; twin of csrc/cpu/bindings_cpu.cpp).
// Device arrays cross as data pointers (Python ints), the stream as an int
// (torch.cuda.current_stream().cuda_stream), so the module never links libtorch and survives torch
// upgrades; slimfast/backends/cuda.py owns the tensors. What can be checked (sizes, options, null
// and misaligned pointers) is checked by csrc/bindings_common.h, shared with the CPU module; the
// extent of the memory behind a pointer cannot be, so the caller guarantees it.
//
// The host emulation of the same block code is in the CPU module (csrc/cpu/bindings_emulate.cpp),
// so that it is built, and tested, on every install.
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

long long py_workspace_doubles(long long B, long long n_f, long long n_t, int n_grid, bool memory_empty) {
  return step_workspace_query(step_workspace_doubles, B, n_f, n_t, n_grid, memory_empty);
}

long long py_jacobi_workspace_doubles(long long B, long long n) {
  return jacobi_workspace_query(jacobi_workspace_doubles, B, n);
}

void py_slimtik_step(const StepBuffers& p, const StepOptions& opts, std::uintptr_t stream, int device,
                     double jacobi_tol, int max_sweeps, int n_threads, int shared) {
  require_workspace(p);
  check_jacobi_options(jacobi_tol, max_sweeps);
  const CudaLaunch launch = launch_options(device, stream, n_threads, shared);
  py::gil_scoped_release release;
  slimtik_step_cuda(p.B, p.n_f, p.n_t, p.G_mem, p.G, p.H, p.c, p.m, p.W, p.Lambda_prev, p.memory_empty, opts, p.U0,
                    p.s_in, p.U_in, p.W_out, p.info, p.U_out, p.workspace, jacobi_tol, max_sweeps, launch);
}

long long py_block_workspace_doubles(long long B, long long n_f, long long n_t, int n_grid,
                                     const BlockOffsets& blocks) {
  const auto size = [](long long b, int nf, int nt, int ng, const BlockDims& bd) {
    return block_step_workspace_doubles(b, nf, nt, ng, bd);
  };
  return block_workspace_query(size, B, n_f, n_t, n_grid, blocks);
}

// The kernel reads the offsets from device memory: `blocks` must carry offsets_ptr.
void py_slimtik_block_step(const StepBuffers& p, const BlockOffsets& blocks, const StepOptions& opts,
                           std::uintptr_t stream, int device, double jacobi_tol, int max_sweeps, int n_threads,
                           int shared) {
  require_workspace(p);
  require(p.U0 == nullptr && p.U_out == nullptr && p.s_in == nullptr,
          "the block step takes no U0_ptr, U_out_ptr, s_in_ptr or U_in_ptr");
  check_blocks_match(p, blocks);
  require(blocks.device_offsets != nullptr, "blocks must carry offsets_ptr (the offsets in device memory)");
  check_jacobi_options(jacobi_tol, max_sweeps);
  const CudaLaunch launch = launch_options(device, stream, n_threads, shared);
  py::gil_scoped_release release;
  slimtik_block_step_cuda(p.B, p.n_f, p.n_t, p.G_mem, p.G, p.H, p.c, p.m, p.W, p.Lambda_prev,
                          blocks.dims(blocks.device_offsets), opts, p.W_out, p.info, p.workspace, jacobi_tol,
                          max_sweeps, launch);
}

void py_jacobi_eigh(long long B, long long n, std::uintptr_t A_ptr, std::uintptr_t U0_ptr, std::uintptr_t s_ptr,
                    std::uintptr_t U_ptr, double tol, int max_sweeps, std::uintptr_t workspace_ptr,
                    std::uintptr_t stream, int device, std::uintptr_t sweeps_ptr, int n_threads, int shared) {
  const JacobiBuffers j = jacobi_buffers(B, n, A_ptr, U0_ptr, s_ptr, U_ptr, tol, max_sweeps, workspace_ptr, sweeps_ptr);
  const CudaLaunch launch = launch_options(device, stream, n_threads, shared);
  py::gil_scoped_release release;
  jacobi_eigh_cuda(B, (int)n, j.A, j.U0, j.s, j.U, j.sweeps, j.workspace, tol, max_sweeps, launch);
}

}  // namespace

PYBIND11_MODULE(_cuda, mod) {
  mod.doc() =
      "slimfast CUDA kernels (csrc/cuda): batched slimTik step and block-parallel Jacobi eigensolver on raw "
      "float64 device pointers (their host emulation is in slimfast._cpu).";
  const std::uintptr_t null = 0;
  bind_step_options(mod);
  bind_step_buffers(mod);
  mod.def("workspace_doubles", &py_workspace_doubles, py::arg("B"), py::arg("n_f"), py::arg("n_t"), py::arg("n_grid"),
          py::arg("memory_empty"), "float64 workspace elements slimtik_step needs for B problems.");
  mod.def("jacobi_workspace_doubles", &py_jacobi_workspace_doubles, py::arg("B"), py::arg("n"),
          "float64 workspace elements jacobi_eigh needs for B matrices.");
  mod.def("slimtik_step", &py_slimtik_step, py::arg("buffers"), py::arg("options"), py::arg("stream") = null,
          py::arg("device") = 0, py::arg("jacobi_tol") = SLIMFAST_CUDA_JACOBI_TOL,
          py::arg("max_sweeps") = SLIMFAST_CUDA_JACOBI_MAX_SWEEPS, py::arg("n_threads") = 0,
          py::arg("shared") = (int)SHARED_AUTO,
          "Enqueue one slimTik step for B problems on `stream` (device pointers; no synchronisation).");
  bind_block_offsets(mod);
  mod.def("block_workspace_doubles", &py_block_workspace_doubles, py::arg("B"), py::arg("n_f"), py::arg("n_t"),
          py::arg("n_grid"), py::arg("blocks"), "float64 workspace elements slimtik_block_step needs for B problems.");
  mod.def("slimtik_block_step", &py_slimtik_block_step, py::arg("buffers"), py::arg("blocks"), py::arg("options"),
          py::arg("stream") = null, py::arg("device") = 0, py::arg("jacobi_tol") = SLIMFAST_CUDA_JACOBI_TOL,
          py::arg("max_sweeps") = SLIMFAST_CUDA_JACOBI_MAX_SWEEPS, py::arg("n_threads") = 0,
          py::arg("shared") = (int)SHARED_AUTO,
          "Enqueue one block-structured slimTik step for B problems on `stream` (device pointers).");
  mod.def("jacobi_eigh", &py_jacobi_eigh, py::arg("B"), py::arg("n"), py::arg("A_ptr"), py::arg("U0_ptr"),
          py::arg("s_ptr"), py::arg("U_ptr"), py::arg("tol"), py::arg("max_sweeps"), py::arg("workspace_ptr"),
          py::arg("stream") = null, py::arg("device") = 0, py::arg("sweeps_ptr") = null, py::arg("n_threads") = 0,
          py::arg("shared") = (int)SHARED_AUTO,
          "Enqueue the block-parallel Jacobi eigendecomposition of B symmetric n×n matrices (device pointers).");
  mod.attr("JACOBI_TOL") = SLIMFAST_CUDA_JACOBI_TOL;
  mod.attr("JACOBI_MAX_SWEEPS") = SLIMFAST_CUDA_JACOBI_MAX_SWEEPS;
  mod.attr("MAX_THREADS") = 512;
  mod.attr("SHARED_AUTO") = (int)SHARED_AUTO;
  mod.attr("SHARED_OFF") = (int)SHARED_OFF;
  mod.attr("SHARED_MATRIX") = (int)SHARED_MATRIX;
  mod.attr("SHARED_ON") = (int)SHARED_ON;
  mod.attr("N_INFO") = SLIMFAST_N_INFO;
}
