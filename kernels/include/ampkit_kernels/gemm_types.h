// The GEMM argument types, without CUDA: plain C++ that any translation unit can include (the
// cuBLASLt wrapper, the fused_linear glue, and the host tests that check the argument translation
// in builds without CUDA). kernel_types.h and cublaslt_gemm.h include this header.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ampkit_kernels {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2, Float64 = 3 };

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

// One GEMM, COLUMN-MAJOR as cuBLASLt sees it: D (m x n, ldd) = epilogue(alpha * op(A) * op(B)),
// op(A) is m x k, op(B) is k x n.
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

}  // namespace ampkit_kernels
