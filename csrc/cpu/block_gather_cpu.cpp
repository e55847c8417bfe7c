// The phase-block fast path's gathers (see block_gather_cpu.h).
#include "block_gather_cpu.h"

namespace slimfast {

void gather_block_entries_cpu(const double* G, const std::int64_t* src, const std::int64_t* dst, std::int64_t K,
                              const double* packed, int n_stored, double* batch, double* G_blk, double* G_mem_blk) {
  for (std::int64_t k = 0; k < K; ++k) batch[k] = G[src[k]];
  // The stored slots summed first slot first, then the batch added: the order of
  // batch + packed[:n_stored].sum(0), and of the general path's G + Σ_j G_j.
  for (std::int64_t k = 0; k < K; ++k) {
    double acc = 0.0;
    if (n_stored > 0) {
      acc = packed[k];
      for (int j = 1; j < n_stored; ++j) acc += packed[(std::int64_t)j * K + k];
    }
    const double v = batch[k];
    G_blk[dst[k]] = v;
    G_mem_blk[dst[k]] = n_stored > 0 ? v + acc : v;
  }
}

}  // namespace slimfast
