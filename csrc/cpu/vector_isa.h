// The run-time choice of instruction set for ampkit's CPU kernels, and the AVX2/F16C conversions
// between fp32 and fp16/bf16 that their vector loops share.
//
// x86-64 builds compile the hot loops twice, for AVX2/FMA/F16C (functions marked AMPKIT_X86_V3)
// and for the baseline, and pick one at run time: LibTorch users get vector code without -march
// flags. AMPKIT_CPU_ISA=baseline forces the baseline code (how the tests cover it on an AVX2
// machine). Every helper below gives the bits that c10::Half / c10::BFloat16's scalar
// conversions give, except where its comment says otherwise.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdlib>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__INTEL_COMPILER)
#define AMPKIT_X86_DISPATCH 1
#define AMPKIT_X86_V3 __attribute__((target("avx2,fma,f16c")))
#else
#define AMPKIT_X86_DISPATCH 0
#endif

namespace ampkit::cpu {

// True when the AVX2/FMA/F16C loops may run: an x86-64 build, a CPU that has them, and no
// AMPKIT_CPU_ISA=baseline. Decided once per process.
inline bool use_vector_isa() {
#if AMPKIT_X86_DISPATCH
  static const bool enabled = [] {
    const char* isa = std::getenv("AMPKIT_CPU_ISA");
    if (isa != nullptr && std::string(isa) == "baseline") return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return enabled;
#else
  return false;
#endif
}

#if AMPKIT_X86_DISPATCH
namespace x86 {

// ---- fp16: F16C. Widening is exact; narrowing rounds to nearest even (subnormals, overflow to
// inf) as c10::Half does. c10::Half's portable code does not vectorise.

AMPKIT_X86_V3 inline __m256 widen_f16(__m128i halves) { return _mm256_cvtph_ps(halves); }

// Keeps a NaN's sign and payload (the hardware conversion, which torch's own vectorised
// conversion also uses); c10::Half's scalar conversion gives sign | 0x7E00 instead: see
// canonical_f16_nan.
AMPKIT_X86_V3 inline __m128i narrow_f16(__m256 values) { return _mm256_cvtps_ph(values, _MM_FROUND_TO_NEAREST_INT); }

// Every fp16 NaN becomes sign | 0x7E00 (payload dropped), the NaN c10::Half's scalar conversion
// produces; other values are unchanged. narrow_f16 + this = c10::Half(float), bit for bit.
AMPKIT_X86_V3 inline __m128i canonical_f16_nan(__m128i halves) {
  const __m128i magnitude = _mm_and_si128(halves, _mm_set1_epi16(0x7FFF));
  const __m128i is_nan = _mm_cmpgt_epi16(magnitude, _mm_set1_epi16(0x7C00));  // exponent all ones, mantissa != 0
  return _mm_andnot_si128(_mm_and_si128(is_nan, _mm_set1_epi16(0x01FF)), halves);  // F16C sets the quiet bit 0x0200
}

// ---- bf16: AVX2 integer ops. Widening is a 16-bit shift; narrowing rounds to nearest even and
// maps every NaN to 0x7FC0, exactly as c10::BFloat16's conversion does.

AMPKIT_X86_V3 inline __m256 widen_bf16(__m128i narrow) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(narrow), 16));
}

AMPKIT_X86_V3 inline __m128i narrow_bf16(__m256 values) {
  const __m256i bits = _mm256_castps_si256(values);
  const __m256i bias =
      _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1)), _mm256_set1_epi32(0x7FFF));
  __m256i high_halves = _mm256_srli_epi32(_mm256_add_epi32(bits, bias), 16);
  const __m256 is_nan = _mm256_cmp_ps(values, values, _CMP_UNORD_Q);
  high_halves = _mm256_blendv_epi8(high_halves, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(is_nan));
  return _mm_packus_epi32(_mm256_castsi256_si128(high_halves), _mm256_extracti128_si256(high_halves, 1));
}

// ---- 8 elements of any of the three dtypes, loaded as fp32 and stored from fp32 with the
// scalar conversion's bits (c10::Half's canonical NaN included).

AMPKIT_X86_V3 inline __m256 load8(const float* data) { return _mm256_loadu_ps(data); }
AMPKIT_X86_V3 inline __m256 load8(const c10::Half* data) {
  return widen_f16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(data)));
}
AMPKIT_X86_V3 inline __m256 load8(const c10::BFloat16* data) {
  return widen_bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(data)));
}

AMPKIT_X86_V3 inline void store8(float* data, __m256 values) { _mm256_storeu_ps(data, values); }
AMPKIT_X86_V3 inline void store8(c10::Half* data, __m256 values) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(data), canonical_f16_nan(narrow_f16(values)));
}
AMPKIT_X86_V3 inline void store8(c10::BFloat16* data, __m256 values) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(data), narrow_bf16(values));
}

}  // namespace x86
#endif  // AMPKIT_X86_DISPATCH

}  // namespace ampkit::cpu
