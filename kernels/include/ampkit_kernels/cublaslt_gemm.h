// Framework-free cuBLASLt GEMM with FP32 accumulation and fused epilogues.
//
// Everything here is COLUMN-MAJOR, as cuBLASLt is: D (m x n, leading dimension ldd) =
// epilogue(alpha * op(A) * op(B)), op(A) is m x k, op(B) is k x n. A row-major tensor of shape
// [r, c] is, unchanged in memory, the column-major matrix c x r with leading dimension c; the
// argument builders in linear_gemms.h (used by csrc/cuda/fused_linear.cpp) rely on that to run
// row-major products without copies. The argument types are in gemm_types.h (no CUDA there).
//
// A and B: float16 or bfloat16 (float32 is accepted too and runs as a plain fp32 GEMM). Compute
// type CUBLAS_COMPUTE_32F and scale type fp32 always: products are accumulated in fp32 and the
// epilogue runs in fp32 before the single rounding to D's type (D: A's type or float32). Split-K
// algorithms are restricted to reductions that keep the partial sums in fp32 (the heuristic
// preference comes from gemm_preference.h, which says why and is tested on the host).
//
// Algorithms come from cuBLASLt's heuristic and are cached per (device, shape, leading
// dimensions, dtypes, epilogue, pointer alignments, workspace size). One cuBLASLt handle per
// device. The caller passes the workspace (so a caching allocator can hand out one per stream
// and nothing here is shared between streams); recommended_workspace_bytes says how big.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ampkit_kernels/common.h"
#include "ampkit_kernels/gemm_types.h"

namespace ampkit_kernels {

const char* epilogue_name(GemmEpilogue epilogue);

// Enqueues the GEMM on `stream` (never synchronises). m, n, k must be >= 1: empty problems are the
// caller's to handle. Returns InvalidArgument for inconsistent arguments, NoAlgorithm when cuBLASLt's
// heuristic offers none for the problem (e.g. an epilogue it cannot fuse at these alignments, some
// shapes with a dimension of 1) or when bias / bias_grad / aux is not 16-byte aligned (decided
// before any device call), LibraryError (library_status = the cublasStatus_t) when a cuBLASLt call fails.
Result cublaslt_gemm(const GemmArgs& args, cudaStream_t stream);

// Workspace the heuristic may use on `device`: 32 MiB on Hopper and newer (what its fastest
// kernels ask for), 4 MiB before. Returns 0 if the device cannot be queried.
size_t recommended_workspace_bytes(int device);

// The algorithm cache, for tests and diagnostics.
size_t gemm_algorithm_cache_size();
void clear_gemm_algorithm_cache();

}  // namespace ampkit_kernels
