// The phase-block fast path's gathers (slimfast/block_head.py) in one pass over the entries a
// block step reads, instead of five torch index/sum operations on them; and its moves of the
// head's parameters into block order and back (float64 twins: block_head._gather_parameters,
// _scatter_parameters).
#pragma once

#include <cstdint>

namespace slimfast {

// For k < K, with s = src[k] (into G, feature order) and d = dst[k] (into the block-order matrices):
//   batch[k] = G[s],   G_blk[d] = G[s],   G_mem_blk[d] = G[s] + Σ_{j < n_stored} packed[j·K + k]
// packed [r, K]: the memory slots' entries in the same order (null when n_stored = 0). And the
// batch's H [n_t, n_f] in block order, H_blk[o, j] = H[o, perm[j]], and c_blk[0] = c[0].
void gather_block_entries_cpu(const double* G, const std::int64_t* src, const std::int64_t* dst, std::int64_t K,
                              const double* packed, int n_stored, double* batch, double* G_blk, double* G_mem_blk,
                              const double* H, const std::int64_t* perm, int n_t, int n_f, double* H_blk,
                              const double* c, double* c_blk);

// Parameter dtypes the moves read and write (others: the torch ops of slimfast/block_head.py).
enum ParameterDtype { PARAM_F64 = 0, PARAM_F32 = 1 };

// params = (weight [n_w], bias [n_p − n_w]) as float64 (contiguous, `dtype`; no bias when
// n_p = n_w); W[k] = params[src[k]] for k < n_p. Returns max |params|, NaN when any is NaN or ±inf.
double gather_parameters_cpu(const void* weight, const void* bias, int dtype, std::int64_t n_w, std::int64_t n_p,
                             const std::int64_t* src, double* W);

// params[i] = W[dst[i]] rounded to `dtype`, written to weight (i < n_w) and bias (the rest) only
// when every rounded value is finite; returns whether they were (nothing is written otherwise).
bool scatter_parameters_cpu(const double* W, const std::int64_t* dst, int dtype, std::int64_t n_w, std::int64_t n_p,
                            void* weight, void* bias);

}  // namespace slimfast
