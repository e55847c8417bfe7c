// Thread counts of the CPU launcher: OpenMP queries (1 without OpenMP), the load-aware thread
// budget, and the scoped BLAS thread limit. Included by the CPU launchers (.cpp) only.
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>  // getloadavg
#include <mutex>

#include "slimtik_step_cpu.h"

#ifdef _OPENMP
#include <omp.h>
inline int omp_max_threads() { return omp_get_max_threads(); }
inline int omp_procs() { return omp_get_num_procs(); }
inline int omp_thread() { return omp_get_thread_num(); }
#else
inline int omp_max_threads() { return 1; }
inline int omp_procs() { return 1; }
inline int omp_thread() { return 0; }
#endif

namespace slimfast {

// Tasks runnable on the machine at this instant, the calling thread included: the 4th field
// ("running/total") of /proc/loadavg; -1 where it cannot be read.
inline int runnable_now() {
  int running = -1;
#if defined(__linux__)
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    double l1, l5, l15;
    int total;
    if (std::fscanf(f, "%lf %lf %lf %d/%d", &l1, &l5, &l15, &running, &total) != 5) running = -1;
    std::fclose(f);
  }
#endif
  return running;
}

// Threads worth using, at most `wanted` and at most OpenMP's thread count — which is torch's,
// since the extension resolves to the libgomp torch loaded: torch.set_num_threads(1) makes the
// step serial and keeps SciPy's OpenBLAS at one thread too. Below that, all of them on an idle
// machine and fewer when other tasks keep the cores busy. Threads that get preempted stall the
// others at every barrier (OpenMP loop end, BLAS synchronisation) for a scheduler time slice, so
// on a saturated machine one thread is faster. Busy = the larger of the tasks runnable right now
// (besides this one) and the 1-minute load average less one: the average alone lags a change
// of load by a minute, the instantaneous count alone misses tasks that just blocked.
inline int usable_threads(int wanted) {
  wanted = std::min(wanted, std::max(1, omp_max_threads()));
  if (wanted <= 1) return 1;
  double busy = -1.0, load[1];
  const int running = runnable_now();
  if (running >= 1) busy = running - 1;
  if (getloadavg(load, 1) == 1) busy = std::max(busy, load[0] - 1.0);
  if (busy < 0) return wanted;
  return std::max(1, std::min(wanted, (int)(omp_procs() + 0.5 - busy)));
}

// Smallest matrix order (n_f, or N on the sample side) for which LAPACK/BLAS may use their own
// threads (serial batch loop, idle machine: see usable_threads). Below it OpenBLAS runs
// single-threaded: its pthreads then never compete with torch's OpenMP threads, which spin for a
// while after every torch op (a step right after torch.linalg.eigh took 16 ms instead of 5 with two
// OpenBLAS threads at n_f = 257).
inline constexpr int kBlasThreadsMinN = 400;

// Sets the BLAS thread count for the duration of a call and restores it afterwards. OpenBLAS's
// count is process-global, so concurrent calls (the GIL is released) share one saved value: the
// first caller saves it, the last one restores it. MKL's (when the kernels call MKL) is set for
// the calling thread only.
class BlasThreads {
 public:
  BlasThreads(const Lapack& L, int wanted) : L_(L) {
    // MKL's count is per calling thread: no sharing, no lock.
    if (L_.set_threads_local) mkl_saved_ = L_.set_threads_local(wanted);
    if (!L_.get_threads || !L_.set_threads) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (users_++ == 0) saved_ = L_.get_threads();
    if (L_.get_threads() > wanted) L_.set_threads(wanted);
  }
  ~BlasThreads() {
    if (L_.set_threads_local) L_.set_threads_local(mkl_saved_);
    if (!L_.get_threads || !L_.set_threads) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (--users_ == 0 && L_.get_threads() != saved_) L_.set_threads(saved_);
  }
  static int current(const Lapack& L) { return L.get_threads ? L.get_threads() : 1; }

 private:
  const Lapack& L_;
  int mkl_saved_ = 0;
  static inline std::mutex mutex_;
  static inline int users_ = 0, saved_ = 0;
};

}  // namespace slimfast
