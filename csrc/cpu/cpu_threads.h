// Thread counts of the CPU launcher: OpenMP queries (1 without OpenMP), the load-aware thread
// budget, and the scoped BLAS thread limit. Included by slimtik_step_cpu.cpp only.
#pragma once

#include <algorithm>
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

// Threads worth using, at most `wanted`: all of them on an idle machine, fewer when other
// processes already keep the cores busy (1-minute load average, which includes this process).
// Threads that get preempted stall the others at every barrier (OpenMP loop end, BLAS
// synchronisation) for a scheduler time slice, so on a saturated machine one thread is faster.
inline int usable_threads(int wanted) {
  double load[1];
  if (wanted > 1 && getloadavg(load, 1) == 1) wanted = std::max(1, std::min(wanted, (int)(omp_procs() + 1.5 - load[0])));
  return wanted;
}

// Sets the BLAS thread count for the duration of a call and restores it afterwards. The count is
// process-global (OpenBLAS), so concurrent calls (the GIL is released) share one saved value: the
// first caller saves it, the last one restores it.
class BlasThreads {
 public:
  BlasThreads(const Lapack& L, int wanted) : L_(L) {
    if (!L_.get_threads || !L_.set_threads) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (users_++ == 0) saved_ = L_.get_threads();
    if (L_.get_threads() > wanted) L_.set_threads(wanted);
  }
  ~BlasThreads() {
    if (!L_.get_threads || !L_.set_threads) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (--users_ == 0 && L_.get_threads() != saved_) L_.set_threads(saved_);
  }
  static int current(const Lapack& L) { return L.get_threads ? L.get_threads() : 1; }

 private:
  const Lapack& L_;
  static inline std::mutex mutex_;
  static inline int users_ = 0, saved_ = 0;
};

}  // namespace slimfast
