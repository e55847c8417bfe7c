// The phase-block fast path's gathers (slimfast/block_head.py) in one pass over the entries a
// block step reads, instead of five torch index/sum operations on them.
#pragma once

#include <cstdint>

namespace slimfast {

// For k < K, with s = src[k] (into G, feature order) and d = dst[k] (into the block-order matrices):
//   batch[k] = G[s],   G_blk[d] = G[s],   G_mem_blk[d] = G[s] + Σ_{j < n_stored} packed[j·K + k]
// packed [r, K]: the memory slots' entries in the same order (null when n_stored = 0).
void gather_block_entries_cpu(const double* G, const std::int64_t* src, const std::int64_t* dst, std::int64_t K,
                              const double* packed, int n_stored, double* batch, double* G_blk, double* G_mem_blk);

}  // namespace slimfast
