// What cublaslt_gemm asks cuBLASLt's heuristic for (the cublasLtMatmulPreference_t attributes), as a
// pure function of the GEMM's arguments. No CUDA here, so the choice is checked on the host in every
// build (tests/cpp/test_cublaslt_model.cpp and test_linear_gemm_plans.cpp run it through the host
// model's reading of the documented rules); kernels/src/cublaslt_gemm.cpp sets exactly these values
// and static_asserts that the scheme constants below are cuBLASLt's.
//
// FP32 accumulation, one rounding. With split-K, cuBLASLt computes partial dot products in
// parallel and then adds them; cublasLt.h (CUDA 13.0, cublasLtReductionScheme_t) documents where:
//   NONE (0)          "dot-product shall be performed in one sequence" (no split-K);
//   INPLACE (1)       "using the output buffer (and output data type)";
//   COMPUTE_TYPE (2)  "Intermediate results are stored in compute type in the workspace";
//   OUTPUT_TYPE (4)   "Intermediate results are stored in output type in the workspace".
// With an fp16/bf16 D, INPLACE and OUTPUT_TYPE round every partial sum to 16 bits before the final
// sum: several roundings instead of one, worst at small outputs with large k. CUBLASLT_MATMUL_PREF_
// REDUCTION_SCHEME_MASK "filters heuristic result to only include algo configs that use one of the
// required modes" (default 0x7, all), so a 16-bit D gets the mask COMPUTE_TYPE only; an fp32 D
// (output type = compute type, CUBLAS_COMPUTE_32F) keeps every scheme. NONE has no bit: it is not a
// reduction of partial sums, and the wrapper also checks the chosen algorithm's scheme
// (reduction_scheme_allowed) before running it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ampkit_kernels/gemm_types.h"

namespace ampkit_kernels {

// cublasLtReductionScheme_t's values (cublasLt.h; checked against it in cublaslt_gemm.cpp).
constexpr uint32_t kReductionNone = 0;
constexpr uint32_t kReductionInPlace = 1;
constexpr uint32_t kReductionComputeType = 2;
constexpr uint32_t kReductionOutputType = 4;
constexpr uint32_t kReductionAll = 0x7;  // CUBLASLT_REDUCTION_SCHEME_MASK, the preference's default

// cuBLASLt's default minimum alignment preference, and the largest it takes (bytes).
constexpr uint32_t kMaxAlignmentBytes = 256;

// Largest power of two <= kMaxAlignmentBytes dividing the address (kMaxAlignmentBytes for null).
inline uint32_t pointer_alignment_bytes(const void* pointer) {
  const auto address = reinterpret_cast<uintptr_t>(pointer);
  uint32_t alignment = kMaxAlignmentBytes;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

// The heuristic preference attributes for one GEMM.
struct GemmPreference {
  uint64_t max_workspace_bytes = 0;  // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
  uint32_t reduction_scheme_mask = kReductionAll;  // CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK
  // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_{A,B,C,D}_BYTES (default 256: the heuristic may then pick an
  // algorithm that faults on a less aligned view). C is D here (beta = 0, C := D).
  uint32_t min_alignment_a = kMaxAlignmentBytes;
  uint32_t min_alignment_b = kMaxAlignmentBytes;
  uint32_t min_alignment_c = kMaxAlignmentBytes;
  uint32_t min_alignment_d = kMaxAlignmentBytes;
};

// The reduction schemes that keep partial sums in fp32 for an output of type d_dtype.
constexpr uint32_t fp32_reduction_schemes(DType d_dtype) {
  return d_dtype == DType::Float32 ? kReductionAll : kReductionComputeType;
}

inline GemmPreference gemm_preference(const GemmArgs& args) {
  GemmPreference pref;
  pref.max_workspace_bytes = args.workspace_bytes;
  pref.reduction_scheme_mask = fp32_reduction_schemes(args.d_dtype);
  pref.min_alignment_a = pointer_alignment_bytes(args.a);
  pref.min_alignment_b = pointer_alignment_bytes(args.b);
  pref.min_alignment_c = pref.min_alignment_d = pointer_alignment_bytes(args.d);
  return pref;
}

// May an algorithm whose CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME is `scheme` run under `pref`? No
// split-K (NONE) always may; otherwise the scheme's bit must be in the mask.
constexpr bool reduction_scheme_allowed(const GemmPreference& pref, uint32_t scheme) {
  return scheme == kReductionNone ||
         ((scheme & ~kReductionAll) == 0 && (scheme & pref.reduction_scheme_mask) == scheme);
}

}  // namespace ampkit_kernels
