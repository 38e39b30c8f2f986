// Framework-free cuBLASLt GEMM with FP32 accumulation and fused epilogues.
//
// Everything here is COLUMN-MAJOR, as cuBLASLt is: D (m x n, leading dimension ldd) =
// epilogue(alpha * op(A) * op(B)), op(A) is m x k, op(B) is k x n. A row-major tensor of shape
// [r, c] is, unchanged in memory, the column-major matrix c x r with leading dimension c; the
// callers (csrc/cuda/fused_linear.cpp) use that to run row-major products without copies.
//
// A and B: float16 or bfloat16 (float32 is accepted too and runs as a plain fp32 GEMM). Compute
// type CUBLAS_COMPUTE_32F and scale type fp32 always: products are accumulated in fp32 and the
// epilogue runs in fp32 before the single rounding to D's type (D: A's type or float32).
//
// Algorithms come from cuBLASLt's heuristic and are cached per (device, shape, leading
// dimensions, dtypes, epilogue, pointer alignments, workspace size). One cuBLASLt handle per
// device. The caller passes the workspace (so a caching allocator can hand out one per stream
// and nothing here is shared between streams); recommended_workspace_bytes says how big.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ampkit_kernels/common.h"

namespace ampkit_kernels {

enum class GemmEpilogue : int {
  None = 0,        // D = A*B
  Bias = 1,        // D = A*B + bias            (bias: m elements, one per row of D)
  BiasRelu = 2,    // D = relu(A*B + bias)
  BiasGelu = 3,    // D = gelu_tanh(A*B + bias)
  BiasGeluAux = 4, // as BiasGelu, and aux (m x n, ld_aux) = A*B + bias, the GELU input
  GeluAux = 5,     // D = gelu_tanh(A*B), aux = A*B (no bias)
  DGelu = 6,       // D = (A*B) * gelu_tanh'(aux): the GELU backward applied to the GEMM result
  DGeluBGrad = 7,  // as DGelu, and bias_grad (m elements) = row sums of D
  BGradB = 8,      // D = A*B, and bias_grad (n elements) = column sums of op(B) (reduced over k)
  Relu = 9,        // D = relu(A*B)
  Gelu = 10,       // D = gelu_tanh(A*B)
};

const char* epilogue_name(GemmEpilogue epilogue);

struct GemmArgs {
  bool transpose_a = false;
  bool transpose_b = false;
  int64_t m = 0, n = 0, k = 0;
  DType ab_dtype = DType::Float16;  // A and B
  DType d_dtype = DType::Float16;   // D (and aux, and bias/bias_grad: cuBLASLt takes them in D's type)
  const void* a = nullptr;
  int64_t lda = 0;  // of A as stored: >= (transpose_a ? k : m)
  const void* b = nullptr;
  int64_t ldb = 0;  // of B as stored: >= (transpose_b ? n : k)
  void* d = nullptr;
  int64_t ldd = 0;  // >= m
  float alpha = 1.0f;
  GemmEpilogue epilogue = GemmEpilogue::None;
  const void* bias = nullptr;  // Bias* epilogues (read)
  void* bias_grad = nullptr;   // DGeluBGrad, BGradB (written)
  void* aux = nullptr;         // *GeluAux (written), DGelu* (read)
  int64_t ld_aux = 0;          // >= m and a multiple of 8 (a cuBLASLt requirement)
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Enqueues the GEMM on `stream` (never synchronises). m, n, k must be >= 1: empty problems are the
// caller's to handle. Returns InvalidArgument for inconsistent arguments, NoAlgorithm when cuBLASLt's
// heuristic offers none for the problem (e.g. an epilogue it cannot fuse at these alignments),
// LibraryError (library_status = the cublasStatus_t) when a cuBLASLt call fails.
Result cublaslt_gemm(const GemmArgs& args, cudaStream_t stream);

// Workspace the heuristic may use on `device`: 32 MiB on Hopper and newer (what its fastest
// kernels ask for), 4 MiB before. Returns 0 if the device cannot be queried.
size_t recommended_workspace_bytes(int device);

// The algorithm cache, for tests and diagnostics.
size_t gemm_algorithm_cache_size();
void clear_gemm_algorithm_cache();

}  // namespace ampkit_kernels
