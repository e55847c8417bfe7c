// pybind11 module slimfast._cpu. Arrays cross as data pointers (Python ints) plus sizes, so the
// module never links libtorch and survives torch upgrades; slimfast/backends/cpp.py owns the
// tensors. What can be checked (sizes, options, null and misaligned pointers) is checked by
// csrc/bindings_common.h, shared with the CUDA module; the extent of the memory behind a pointer
// cannot be, so the caller guarantees it.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "bindings_common.h"
#include "block_step_cpu.h"
#include "sample_side_cpu.h"
#include "slimtik_step_cpu.h"

#if defined(__linux__)
#include <dlfcn.h>
#include <link.h>
#endif

namespace py = pybind11;
using namespace slimfast;

void bind_block_emulation(py::module_& mod);  // bindings_emulate.cpp
void bind_fused_head(py::module_& mod, const Lapack& lapack);  // bindings_fused.cpp
void bind_conv_statistics(py::module_& mod, const Lapack& lapack);  // bindings_statistics.cpp

namespace {

Lapack g_lapack;

// Function pointer behind scipy.linalg.<module>.__pyx_capi__[name] (a PyCapsule whose name is
// the C signature).
void* capi_pointer(const char* module, const char* name) {
  py::dict capi = py::module_::import(module).attr("__pyx_capi__");
  py::object cap = capi[name];
  void* ptr = PyCapsule_GetPointer(cap.ptr(), PyCapsule_GetName(cap.ptr()));
  if (ptr == nullptr) throw py::error_already_set();
  return ptr;
}

#if defined(__linux__)
// Thread-count functions of an OpenBLAS already loaded into the process (SciPy's wheels bundle
// one with prefixed names). Searched, not linked: the extension must not pin a BLAS.
int find_openblas(struct dl_phdr_info* info, size_t, void* out) {
  const char* path = info->dlpi_name;
  if (path == nullptr || std::string(path).find("openblas") == std::string::npos) return 0;
  void* handle = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return 0;
  static const char* const names[][2] = {{"scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"},
                                         {"openblas_get_num_threads", "openblas_set_num_threads"}};
  auto* lapack = static_cast<Lapack*>(out);
  for (const auto& pair : names) {
    void* get = dlsym(handle, pair[0]);
    void* set = dlsym(handle, pair[1]);
    if (get && set) {
      lapack->get_threads = reinterpret_cast<int (*)()>(get);
      lapack->set_threads = reinterpret_cast<void (*)(int)>(set);
      // Prefer SciPy's own (prefixed) build; keep looking only if this one is unprefixed.
      return pair == names[0] ? 1 : 0;
    }
  }
  return 0;
}
#endif

// The CPU launcher allocates its own scratch and has no warm start; s_in/U_in, when given, are
// G_mem's eigenpairs with the eigenvectors as ROWS (Uᵀ, LAPACK's column-major output).
void py_slimtik_step(const StepBuffers& p, const StepOptions& opts, int eigensolver) {
  require(eigensolver >= EIG_AUTO && eigensolver <= EIG_JACOBI,
          "eigensolver must be 0 (auto), 1 (syevd), 2 (syevr) or 3 (jacobi)");
  require(p.workspace == nullptr && p.U0 == nullptr && p.U_out == nullptr,
          "the CPU step takes no workspace_ptr, U0_ptr or U_out_ptr (those are the block code's)");
  int lapack_info = 0, failed = 0;
  {
    py::gil_scoped_release release;
    failed = slimtik_step_cpu(g_lapack, (int)p.B, p.n_f, p.n_t, p.G_mem, p.G, p.H, p.c, p.m, p.W, p.Lambda_prev,
                              p.memory_empty, opts, eigensolver, p.s_in, p.U_in, p.W_out, p.info, &lapack_info);
  }
  if (failed != 0)
    throw std::runtime_error("LAPACK eigensolver failed for problem " + std::to_string(failed - 1) +
                             " (info = " + std::to_string(lapack_info) + ")");
}

// The block-structured step (csrc/slimtik_block_step.h) on the same buffers plus the layout.
void py_slimtik_block_step(const StepBuffers& p, const BlockOffsets& blocks, const StepOptions& opts, int eigensolver) {
  require(eigensolver >= EIG_AUTO && eigensolver <= EIG_JACOBI,
          "eigensolver must be 0 (auto), 1 (syevd), 2 (syevr) or 3 (jacobi)");
  require(p.workspace == nullptr && p.U0 == nullptr && p.U_out == nullptr && p.s_in == nullptr,
          "the CPU block step takes no workspace_ptr, U0_ptr, U_out_ptr, s_in_ptr or U_in_ptr");
  check_blocks_match(p, blocks);
  int lapack_info = 0, failed = 0;
  {
    py::gil_scoped_release release;
    failed = slimtik_block_step_cpu(g_lapack, (int)p.B, p.n_f, p.n_t, p.G_mem, p.G, p.H, p.c, p.m, p.W,
                                    p.Lambda_prev, blocks.offsets.data(), blocks.P(), blocks.border, opts,
                                    eigensolver, p.W_out, p.info, &lapack_info);
  }
  if (failed != 0)
    throw std::runtime_error("LAPACK eigensolver failed for problem " + std::to_string(failed - 1) +
                             " (info = " + std::to_string(lapack_info) + ")");
}

int py_jacobi_eigh(long long B, long long n, std::uintptr_t A_ptr, std::uintptr_t U0_ptr, std::uintptr_t s_out_ptr,
                std::uintptr_t U_out_ptr, double tol, int max_sweeps) {
  require_size(B, "B", 1LL << 30);
  require_size(n, "n");
  check_jacobi_options(tol, max_sweeps);
  const double* A = as_ptr<const double>(A_ptr, "A_ptr");
  const double* U0 = reinterpret_cast<const double*>(U0_ptr);  // 0: cold start
  double* s = as_ptr<double>(s_out_ptr, "s_out_ptr");
  double* U = as_ptr<double>(U_out_ptr, "U_out_ptr");
  py::gil_scoped_release release;
  return jacobi_eigh_cpu((int)B, (int)n, A, U0, s, U, tol, max_sweeps);
}

// The sample side's tridiagonal step (sample_side_cpu.h) on float64 pointers; the caller
// (slimfast/sample_side_woodbury.py) guarantees the extents.
int py_sample_side_woodbury_step(long long B, long long N, long long n_b, long long n_t, std::uintptr_t K_ptr,
                                  std::uintptr_t A_ptr, std::uintptr_t R0_ptr, std::uintptr_t WM_ptr,
                                  std::uintptr_t c_ptr, std::uintptr_t m_ptr, std::uintptr_t Lambda_ptr,
                                  const StepOptions& opts, std::uintptr_t X_out_ptr, std::uintptr_t info_ptr) {
  require_size(N, "N");
  require_size(n_b, "n_b", N);
  check_step_sizes(B, N, n_t);
  const double* K = as_ptr<const double>(K_ptr, "K_ptr");
  const double* A = as_ptr<const double>(A_ptr, "A_ptr");
  const double* R0 = as_ptr<const double>(R0_ptr, "R0_ptr");
  const double* WM = as_ptr<const double>(WM_ptr, "WM_ptr");
  const double* c = as_ptr<const double>(c_ptr, "c_ptr");
  const double* m = as_ptr<const double>(m_ptr, "m_ptr");
  const double* Lambda_prev = as_ptr<const double>(Lambda_ptr, "Lambda_ptr");
  double* X_out = as_ptr<double>(X_out_ptr, "X_out_ptr");
  double* info = as_ptr<double>(info_ptr, "info_ptr");
  int lapack_info = 0, failed = 0;
  {
    py::gil_scoped_release release;
    failed = sample_side_woodbury_step_cpu(g_lapack, (int)B, (int)N, (int)n_b, (int)n_t, K, A, R0, WM, c, m,
                                           Lambda_prev, opts, X_out, info, &lapack_info);
  }
  if (failed > 0)
    throw std::runtime_error("LAPACK tridiagonalisation failed for problem " + std::to_string(failed - 1) +
                             " (info = " + std::to_string(lapack_info) + ")");
  return failed < 0 ? -failed : 0;  // 1 + a problem whose shifted kernel matrix was not positive definite
}

// The kernels' replaceable entry points by name (slimfast/backends/lapack_provider.py hands in
// another library's, after checking them). Not to be changed while a step runs.
void** lapack_slot(const std::string& name) {
  if (name == "dsyevd") return reinterpret_cast<void**>(&g_lapack.dsyevd);
  if (name == "dgemm") return reinterpret_cast<void**>(&g_lapack.dgemm);
  if (name == "dgemv") return reinterpret_cast<void**>(&g_lapack.dgemv);
  if (name == "mkl_set_num_threads_local") return reinterpret_cast<void**>(&g_lapack.set_threads_local);
  throw py::value_error("name must be 'dsyevd', 'dgemm', 'dgemv' or 'mkl_set_num_threads_local', got '" + name + "'");
}

std::uintptr_t py_lapack_function(const std::string& name) {
  return reinterpret_cast<std::uintptr_t>(*lapack_slot(name));
}

void py_set_lapack_function(const std::string& name, std::uintptr_t address) {
  void** slot = lapack_slot(name);
  require(address != 0 || name == "mkl_set_num_threads_local", "address of " + name + " must not be 0");
  *slot = reinterpret_cast<void*>(address);
}

}  // namespace

PYBIND11_MODULE(_cpu, mod) {
  mod.doc() = "slimfast CPU kernels (csrc/cpu): batched slimTik step and Jacobi eigensolver on raw float64 pointers.";
  g_lapack.dsyevd = reinterpret_cast<dsyevd_t>(capi_pointer("scipy.linalg.cython_lapack", "dsyevd"));
  g_lapack.dsyevr = reinterpret_cast<dsyevr_t>(capi_pointer("scipy.linalg.cython_lapack", "dsyevr"));
  g_lapack.dgemm = reinterpret_cast<dgemm_t>(capi_pointer("scipy.linalg.cython_blas", "dgemm"));
  g_lapack.dgemv = reinterpret_cast<dgemv_t>(capi_pointer("scipy.linalg.cython_blas", "dgemv"));
  g_lapack.dsyrk = reinterpret_cast<dsyrk_t>(capi_pointer("scipy.linalg.cython_blas", "dsyrk"));
  g_lapack.dpstrf = reinterpret_cast<dpstrf_t>(capi_pointer("scipy.linalg.cython_lapack", "dpstrf"));
  g_lapack.dsytrd = reinterpret_cast<dsytrd_t>(capi_pointer("scipy.linalg.cython_lapack", "dsytrd"));
  g_lapack.dormtr = reinterpret_cast<dormtr_t>(capi_pointer("scipy.linalg.cython_lapack", "dormtr"));
  g_lapack.dstebz = reinterpret_cast<dstebz_t>(capi_pointer("scipy.linalg.cython_lapack", "dstebz"));
#if defined(__linux__)
  dl_iterate_phdr(find_openblas, &g_lapack);
#endif

  bind_step_options(mod);
  bind_step_buffers(mod);
  mod.def("slimtik_step", &py_slimtik_step, py::arg("buffers"), py::arg("options"), py::arg("eigensolver") = 0,
          "One slimTik step for B problems on checked float64 buffers (see slimfast/_cpu.pyi).");
  bind_block_offsets(mod);
  mod.def("slimtik_block_step", &py_slimtik_block_step, py::arg("buffers"), py::arg("blocks"), py::arg("options"),
          py::arg("eigensolver") = 0,
          "One block-structured slimTik step for B problems sharing the layout `blocks` (see slimfast/_cpu.pyi).");
  mod.def("jacobi_eigh", &py_jacobi_eigh, py::arg("B"), py::arg("n"), py::arg("A_ptr"), py::arg("U0_ptr"),
          py::arg("s_out_ptr"), py::arg("U_out_ptr"), py::arg("tol"), py::arg("max_sweeps"),
          "Cyclic Jacobi eigendecomposition of B symmetric n×n matrices; returns the largest sweep count.");
  mod.def("sample_side_woodbury_step", &py_sample_side_woodbury_step, py::arg("B"), py::arg("N"), py::arg("n_b"),
          py::arg("n_t"), py::arg("K_ptr"), py::arg("A_ptr"), py::arg("R0_ptr"), py::arg("WM_ptr"), py::arg("c_ptr"),
          py::arg("m_ptr"), py::arg("Lambda_ptr"), py::arg("options"), py::arg("X_out_ptr"), py::arg("info_ptr"),
          "Sample-side slimTik step of B wide heads from their kernel matrices (see slimfast/_cpu.pyi).");
  mod.def("lapack_function", &py_lapack_function, py::arg("name"),
          "Address of the kernels' current dsyevd, dgemm, dgemv or mkl_set_num_threads_local (0: none).");
  mod.def("set_lapack_function", &py_set_lapack_function, py::arg("name"), py::arg("address"),
          "Replace one of those entry points (an LP64 Fortran-interface function; not while a step runs).");
  bind_block_emulation(mod);
  bind_fused_head(mod, g_lapack);
  bind_conv_statistics(mod, g_lapack);
  mod.attr("MODE_SGCV") = SLIMFAST_MODE_SGCV;
  mod.attr("MODE_CONSTANT") = SLIMFAST_MODE_CONSTANT;
  mod.attr("MODE_REFERENCE") = SLIMFAST_MODE_REFERENCE;
  mod.attr("N_INFO") = SLIMFAST_N_INFO;
  py::dict solvers;
  solvers["auto"] = (int)EIG_AUTO;
  solvers["syevd"] = (int)EIG_SYEVD;
  solvers["syevr"] = (int)EIG_SYEVR;
  solvers["jacobi"] = (int)EIG_JACOBI;
  mod.attr("EIGENSOLVERS") = solvers;
  mod.attr("blas_thread_control") = g_lapack.set_threads != nullptr;
#ifdef _OPENMP
  mod.attr("openmp") = true;
#else
  mod.attr("openmp") = false;
#endif
}
