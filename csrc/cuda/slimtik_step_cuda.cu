// CUDA launcher of the slimTik step: one thread block per problem, B problems per launch, on the
// caller's stream. Each block runs the step composition of csrc/slimtik_step.h with DeviceCtx
// (slimtik_step_cuda.cuh); the CPU launcher runs the same composition with one thread. Twin of
// csrc/cpu/slimtik_step_cpu.cpp.
//
// Nothing here synchronises with the host or allocates: scratch is the caller's workspace and the
// only runtime calls are attribute queries/sets and the launch, so a step can be graph-captured.
#include <cuda_runtime.h>

#include <atomic>
#include <stdexcept>
#include <string>

#include "slimtik_step_cuda.cuh"
#include "slimtik_step_cuda.h"

namespace slimfast {
namespace {

constexpr int kMaxThreads = 512;
// Shared memory kept free for the kernel's static reduction buffer and the runtime's own use.
constexpr long kSharedReserveBytes = 4096;

__global__ void __launch_bounds__(kMaxThreads) slimtik_step_kernel(StepArgs a) {
  extern __shared__ double smem[];
  __shared__ double red[DeviceCtx::kReductionDoubles];
  DeviceCtx ctx{{smem, a.shared_level}, (int)threadIdx.x, (int)blockDim.x, red};
  slimtik_problem(ctx, a, (long)blockIdx.x);
}

__global__ void __launch_bounds__(kMaxThreads) slimtik_block_step_kernel(BlockStepArgs a) {
  extern __shared__ double smem[];
  __shared__ double red[DeviceCtx::kReductionDoubles];
  DeviceCtx ctx{{smem, a.step.shared_level}, (int)threadIdx.x, (int)blockDim.x, red};
  slimtik_block_problem(ctx, a, (long)blockIdx.x);
}

__global__ void __launch_bounds__(kMaxThreads) jacobi_kernel(JacobiArgs a) {
  extern __shared__ double smem[];
  __shared__ double red[DeviceCtx::kReductionDoubles];
  DeviceCtx ctx{{smem, a.shared_level}, (int)threadIdx.x, (int)blockDim.x, red};
  jacobi_problem(ctx, a, (long)blockIdx.x);
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("slimfast._cuda: ") + what + " failed: " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
}

// Makes `device` current for the lifetime of the guard (restores the previous one).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (device != prev_) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(prev_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

int threads_for(int n, int requested) {
  if (requested != 0) {
    if (requested < 32 || requested > kMaxThreads || requested % 32 != 0)
      throw std::invalid_argument("n_threads must be 0 or a multiple of 32 in [32, " + std::to_string(kMaxThreads) +
                                  "], got " + std::to_string(requested));
    return requested;
  }
  return padded_order(n) <= 32 ? 128 : 256;
}

constexpr int kMaxDevices = 64;

// Usable dynamic shared memory per block on `device` (bytes), queried once per device and kernel;
// the kernel's opt-in limit is raised to it at the same time. After the first launch on a device no
// runtime call is left here, so launches inside a CUDA graph capture only enqueue the kernel.
template <class Kernel>
long long shared_available(Kernel kernel, int device) {
  static std::atomic<long long> cached[kMaxDevices];  // 0: not queried yet
  if (device < kMaxDevices) {
    const long long known = cached[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int optin = 0;
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  const long long avail = (long long)optin - kSharedReserveBytes;
  if (avail > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)avail),
          "cudaFuncSetAttribute");
  if (device < kMaxDevices && avail > 0) cached[device].store(avail, std::memory_order_relaxed);
  return avail;
}

// Shared-memory level (jacobi_storage) for `mode` on `device`, and its dynamic shared bytes.
template <class Kernel>
int shared_level(Kernel kernel, int device, int n, int mode, size_t* bytes) {
  *bytes = 0;
  if (mode == SHARED_OFF) return 0;
  const long long avail = shared_available(kernel, device);
  int level = mode == SHARED_AUTO ? 2 : mode;
  long long need = jacobi_shared_doubles(n, level) * (long long)sizeof(double);
  if (mode == SHARED_AUTO)
    while (level > 0 && need > avail) need = jacobi_shared_doubles(n, --level) * (long long)sizeof(double);
  if (need > avail)
    throw std::invalid_argument("shared memory level " + std::to_string(mode) + " requested, but n = " +
                                std::to_string(n) + " needs " + std::to_string(need) +
                                " bytes and the device allows " + std::to_string(avail));
  *bytes = (size_t)need;
  return level;
}

}  // namespace

long long step_workspace_doubles(long long B, int n_f, int n_t, int n_grid, bool memory_empty) {
  return B * step_layout(n_f, n_t, n_grid, memory_empty).total;
}

long long jacobi_workspace_doubles(long long B, int n) { return B * jacobi_layout(n).total; }

void slimtik_step_cuda(long long B, int n_f, int n_t, const double* G_mem, const double* G, const double* H,
                       const double* c, const double* m, const double* W, const double* Lambda_prev, bool memory_empty,
                       const StepOptions& opts, const double* U0, const double* s_in, const double* U_in,
                       double* W_out, double* info, double* U_out, double* workspace, double jacobi_tol,
                       int max_sweeps, const CudaLaunch& launch) {
  if (B <= 0) return;
  const int threads = threads_for(n_f, launch.n_threads);
  DeviceGuard guard(launch.device);
  size_t smem = 0;  // given eigenpairs: no Jacobi, no shared matrices
  const int level =
      U_in != nullptr ? 0 : shared_level(slimtik_step_kernel, launch.device, n_f, launch.shared_mode, &smem);
  const StepArgs a = step_args(n_f, n_t, G_mem, G, H, c, m, W, Lambda_prev, memory_empty, opts, U0, s_in, U_in,
                               W_out, info, U_out, workspace, jacobi_tol, max_sweeps, level);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(launch.stream);
  slimtik_step_kernel<<<(unsigned)B, threads, smem, stream>>>(a);
  check(cudaGetLastError(), "slimtik_step kernel launch");
}

long long block_step_workspace_doubles(long long B, int n_f, int n_t, int n_grid, const BlockDims& bd) {
  return B * block_step_layout(bd, n_f, n_t, n_grid).total;
}

void slimtik_block_step_cuda(long long B, int n_f, int n_t, const double* G_mem, const double* G, const double* H,
                             const double* c, const double* m, const double* W, const double* Lambda_prev,
                             const BlockDims& bd, const StepOptions& opts, double* W_out, double* info,
                             double* workspace, double jacobi_tol, int max_sweeps, const CudaLaunch& launch) {
  if (B <= 0) return;
  const int threads = threads_for(bd.nmax, launch.n_threads);
  DeviceGuard guard(launch.device);
  size_t smem = 0;  // the Jacobi matrices of the largest block
  const int level = shared_level(slimtik_block_step_kernel, launch.device, bd.nmax, launch.shared_mode, &smem);
  const BlockStepArgs a = block_step_args(n_f, n_t, G_mem, G, H, c, m, W, Lambda_prev, bd, opts, W_out, info,
                                          workspace, jacobi_tol, max_sweeps, level);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(launch.stream);
  slimtik_block_step_kernel<<<(unsigned)B, threads, smem, stream>>>(a);
  check(cudaGetLastError(), "slimtik_block_step kernel launch");
}

void jacobi_eigh_cuda(long long B, int n, const double* A, const double* U0, double* s, double* U, int* sweeps,
                      double* workspace, double tol, int max_sweeps, const CudaLaunch& launch) {
  if (B <= 0) return;
  const int threads = threads_for(n, launch.n_threads);
  DeviceGuard guard(launch.device);
  size_t smem = 0;
  const int level = shared_level(jacobi_kernel, launch.device, n, launch.shared_mode, &smem);
  const JacobiArgs a = jacobi_args(n, A, U0, s, U, sweeps, workspace, tol, max_sweeps, level);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(launch.stream);
  jacobi_kernel<<<(unsigned)B, threads, smem, stream>>>(a);
  check(cudaGetLastError(), "jacobi_eigh kernel launch");
}

}  // namespace slimfast
