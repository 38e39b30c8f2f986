// The run-time choice of instruction set for ampkit's CPU kernels, the fp32 <-> fp16/bf16
// conversions their vector loops share, and FloatVec, a vector of floats whose operators let
// the per-element formulas of kernels/include (optim_math.h) run on whole vectors.
//
// x86-64 builds compile the hot loops three times, for AVX-512 (functions marked AMPKIT_X86_V4),
// for AVX2/FMA/F16C (AMPKIT_X86_V3) and for the baseline, and pick one at run time: LibTorch users
// get vector code without -march flags. AMPKIT_CPU_ISA=baseline|avx2|avx512 forces a level (how
// the tests cover every level on one machine). Every helper below gives the bits that
// c10::Half / c10::BFloat16's scalar conversions give, NaNs included.
//
// The three levels give the same bits because they run the same operations in the same order:
// FloatVec's operators are one IEEE operation per lane, exactly what the scalar code does per
// element, and the files that use them are compiled with -ffp-contract=off (CMakeLists.txt), so
// the compiler fuses no multiply-add in one level and not in another.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdlib>
#include <string>

#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which its own
// -Wmaybe-uninitialized then flags wherever they are inlined (GCC bug 105593). Ignored for the
// header's lines only; the flag is about GCC's code, never ours.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__INTEL_COMPILER)
#define AMPKIT_X86_DISPATCH 1
#define AMPKIT_X86_V3 __attribute__((target("avx2,fma,f16c")))
#define AMPKIT_X86_V4 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))
#else
#define AMPKIT_X86_DISPATCH 0
#endif

namespace ampkit::cpu {

// Ordered: a level may use everything the ones below it use.
enum class CpuIsa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

inline const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
    default: return "baseline";
  }
}

// The highest level this build and this CPU can run.
inline CpuIsa supported_cpu_isa() {
#if AMPKIT_X86_DISPATCH
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return CpuIsa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return CpuIsa::kAvx2;
  }
#endif
  return CpuIsa::kBaseline;
}

// The level the kernels run: the highest supported one, or the one AMPKIT_CPU_ISA names
// (baseline, avx2, avx512; empty or "auto": the highest). Naming a level the CPU lacks is an
// error rather than a quiet fallback, so a test that asks for AVX-512 never passes on AVX2 code.
// Decided once per process (a bad value fails every call, each with the same message).
inline CpuIsa selected_cpu_isa() {
  static const CpuIsa selected = [] {
    const CpuIsa supported = supported_cpu_isa();
    const char* env = std::getenv("AMPKIT_CPU_ISA");
    const std::string requested = env == nullptr ? "" : env;
    if (requested.empty() || requested == "auto") return supported;
    CpuIsa wanted = CpuIsa::kBaseline;
    if (requested == "avx2") {
      wanted = CpuIsa::kAvx2;
    } else if (requested == "avx512") {
      wanted = CpuIsa::kAvx512;
    } else {
      TORCH_CHECK(requested == "baseline",
                  "ampkit: AMPKIT_CPU_ISA must be one of auto, baseline, avx2, avx512, got '", requested, "'");
    }
    TORCH_CHECK(static_cast<int>(wanted) <= static_cast<int>(supported), "ampkit: AMPKIT_CPU_ISA=", requested,
                " asks for instructions this CPU (or this build) lacks; the highest it runs is ",
                cpu_isa_name(supported));
    return wanted;
  }();
  return selected;
}

// True when vector loops (AVX2 or wider) may run.
inline bool use_vector_isa() { return selected_cpu_isa() != CpuIsa::kBaseline; }

#if AMPKIT_X86_DISPATCH
namespace x86 {

// ---- fp16: F16C. Widening is exact; narrowing rounds to nearest even (subnormals, overflow to
// inf) as c10::Half does. c10::Half's portable code does not vectorise.

AMPKIT_X86_V3 inline __m256 widen_f16(__m128i halves) { return _mm256_cvtph_ps(halves); }

// Keeps a NaN's sign and payload (the hardware conversion); c10::Half's scalar conversion gives
// sign | 0x7E00 instead: see canonical_f16_nan.
AMPKIT_X86_V3 inline __m128i narrow_f16(__m256 values) { return _mm256_cvtps_ph(values, _MM_FROUND_TO_NEAREST_INT); }

// Every fp16 NaN becomes sign | 0x7E00 (payload dropped), the NaN c10::Half's scalar conversion
// produces; other values are unchanged. narrow_f16 + this = c10::Half(float), bit for bit.
AMPKIT_X86_V3 inline __m128i canonical_f16_nan(__m128i halves) {
  const __m128i magnitude = _mm_and_si128(halves, _mm_set1_epi16(0x7FFF));
  const __m128i is_nan = _mm_cmpgt_epi16(magnitude, _mm_set1_epi16(0x7C00));  // exponent all ones, mantissa != 0
  return _mm_andnot_si128(_mm_and_si128(is_nan, _mm_set1_epi16(0x01FF)), halves);  // F16C sets the quiet bit 0x0200
}

// canonical_f16_nan for 16 halves.
AMPKIT_X86_V3 inline __m256i canonical_f16_nans(__m256i halves) {
  const __m256i magnitude = _mm256_and_si256(halves, _mm256_set1_epi16(0x7FFF));
  const __m256i is_nan = _mm256_cmpgt_epi16(magnitude, _mm256_set1_epi16(0x7C00));
  return _mm256_andnot_si256(_mm256_and_si256(is_nan, _mm256_set1_epi16(0x01FF)), halves);
}

// ---- bf16: AVX2 integer ops. Widening is a 16-bit shift; narrowing rounds to nearest even and
// maps every NaN to 0x7FC0, exactly as c10::BFloat16's conversion does.

AMPKIT_X86_V3 inline __m256 widen_bf16(__m128i narrow) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(narrow), 16));
}

// The rounding in fp32 lanes: each lane's high half is the bf16, its low half zero, so the lane is
// also the rounded value widened back.
AMPKIT_X86_V3 inline __m256i round_to_bf16_lanes(__m256 values) {
  const __m256i bits = _mm256_castps_si256(values);
  const __m256i bias =
      _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1)), _mm256_set1_epi32(0x7FFF));
  const __m256i rounded = _mm256_and_si256(_mm256_add_epi32(bits, bias), _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)));
  const __m256 is_nan = _mm256_cmp_ps(values, values, _CMP_UNORD_Q);
  return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC00000), _mm256_castps_si256(is_nan));
}

AMPKIT_X86_V3 inline __m128i narrow_bf16(__m256 values) {
  const __m256i high_halves = _mm256_srli_epi32(round_to_bf16_lanes(values), 16);
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

// ---- AVX-512: 16 elements. The same conversions as above, a vector twice as wide.

AMPKIT_X86_V4 inline __m512 widen_f16(__m256i halves) { return _mm512_cvtph_ps(halves); }

// narrow_f16 for 16 floats (NaN sign and payload kept).
AMPKIT_X86_V4 inline __m256i narrow_f16(__m512 values) { return _mm512_cvtps_ph(values, _MM_FROUND_TO_NEAREST_INT); }

// Rounds to nearest even like narrow_f16, then writes c10::Half's NaN (sign | 0x7E00).
AMPKIT_X86_V4 inline __m256i narrow_f16_canonical(__m512 values) { return canonical_f16_nans(narrow_f16(values)); }

AMPKIT_X86_V4 inline __m512 widen_bf16(__m256i narrow) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(narrow), 16));
}

// c10::BFloat16's rounding (nearest even, every NaN to 0x7FC0) in integer ops, kept in fp32 lanes:
// each lane's high half is the bf16, its low half zero, so the lane is also the rounded value
// widened back. Not vcvtneps2bf16 (AVX512_BF16): it flushes subnormals to zero, c10::BFloat16
// keeps them.
AMPKIT_X86_V4 inline __m512i round_to_bf16_lanes(__m512 values) {
  const __m512i bits = _mm512_castps_si512(values);
  const __m512i bias =
      _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1)), _mm512_set1_epi32(0x7FFF));
  const __m512i rounded = _mm512_and_si512(_mm512_add_epi32(bits, bias), _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)));
  const __mmask16 is_nan = _mm512_cmp_ps_mask(values, values, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(rounded, is_nan, _mm512_set1_epi32(0x7FC00000));
}

AMPKIT_X86_V4 inline __m256i narrow_bf16(__m512 values) {
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_to_bf16_lanes(values), 16));
}

AMPKIT_X86_V4 inline __m512 load16(const float* data) { return _mm512_loadu_ps(data); }
AMPKIT_X86_V4 inline __m512 load16(const c10::Half* data) {
  return widen_f16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(data)));
}
AMPKIT_X86_V4 inline __m512 load16(const c10::BFloat16* data) {
  return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(data)));
}

AMPKIT_X86_V4 inline void store16(float* data, __m512 values) { _mm512_storeu_ps(data, values); }
AMPKIT_X86_V4 inline void store16(c10::Half* data, __m512 values) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(data), narrow_f16_canonical(values));
}
AMPKIT_X86_V4 inline void store16(c10::BFloat16* data, __m512 values) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(data), narrow_bf16(values));
}

}  // namespace x86

// ---- FloatVec: Lanes floats with the arithmetic operators of float, lane by lane ----
// GCC's vector extensions: each operator is one IEEE operation per lane (what the scalar code
// does per element), needs no target attribute (so the templates of optim_math.h instantiate with
// it anywhere) and becomes AVX2 or AVX-512 instructions once inlined into a function compiled for
// that target (the kernels are marked flatten, and these operators always_inline, for this). A
// scalar operand is broadcast. FloatVec values only ever pass between functions that are inlined
// into one kernel: an out-of-line copy compiled for the baseline ISA would take and return them
// under another calling convention than the AVX-512 caller uses (always_inline makes that a compile
// error rather than a crash; the ASan build, where flatten alone left one call out of line, showed it).
#define AMPKIT_VECTOR_INLINE inline __attribute__((always_inline))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
template <int Lanes>
struct FloatVec {
  typedef float Native __attribute__((vector_size(Lanes * sizeof(float))));
  Native v;
};

template <int L> AMPKIT_VECTOR_INLINE FloatVec<L> operator+(FloatVec<L> a, FloatVec<L> b) { return {a.v + b.v}; }
template <int L> AMPKIT_VECTOR_INLINE FloatVec<L> operator-(FloatVec<L> a, FloatVec<L> b) { return {a.v - b.v}; }
template <int L> AMPKIT_VECTOR_INLINE FloatVec<L> operator*(FloatVec<L> a, FloatVec<L> b) { return {a.v * b.v}; }
template <int L> AMPKIT_VECTOR_INLINE FloatVec<L> operator/(FloatVec<L> a, FloatVec<L> b) { return {a.v / b.v}; }
template <int L> AMPKIT_VECTOR_INLINE FloatVec<L> operator-(FloatVec<L> a) { return {-a.v}; }
template <int L> AMPKIT_VECTOR_INLINE FloatVec<L> operator+(FloatVec<L> a, float b) { return {a.v + b}; }
template <int L> AMPKIT_VECTOR_INLINE FloatVec<L> operator+(float a, FloatVec<L> b) { return {a + b.v}; }
template <int L> AMPKIT_VECTOR_INLINE FloatVec<L> operator-(FloatVec<L> a, float b) { return {a.v - b}; }
template <int L> AMPKIT_VECTOR_INLINE FloatVec<L> operator-(float a, FloatVec<L> b) { return {a - b.v}; }
template <int L> AMPKIT_VECTOR_INLINE FloatVec<L> operator*(FloatVec<L> a, float b) { return {a.v * b}; }
template <int L> AMPKIT_VECTOR_INLINE FloatVec<L> operator*(float a, FloatVec<L> b) { return {a * b.v}; }
template <int L> AMPKIT_VECTOR_INLINE FloatVec<L> operator/(FloatVec<L> a, float b) { return {a.v / b}; }
template <int L> AMPKIT_VECTOR_INLINE FloatVec<L> operator/(float a, FloatVec<L> b) { return {a / b.v}; }

template <int L>
AMPKIT_VECTOR_INLINE FloatVec<L> broadcast(float value) {
  FloatVec<L> result;
  for (int lane = 0; lane < L; ++lane) result.v[lane] = value;  // one broadcast instruction
  return result;
}

// optim_math's nan_propagating_max, per lane (found by argument-dependent lookup): a where a is
// NaN or a > b, else b. Intrinsics: GCC 12 splits a generic vector select into scalar code.
AMPKIT_X86_V3 inline FloatVec<8> nan_propagating_max(FloatVec<8> a, FloatVec<8> b) {
  const __m256 take_a = _mm256_or_ps(_mm256_cmp_ps((__m256)a.v, (__m256)a.v, _CMP_UNORD_Q),
                                     _mm256_cmp_ps((__m256)a.v, (__m256)b.v, _CMP_GT_OQ));
  return {(FloatVec<8>::Native)_mm256_blendv_ps((__m256)b.v, (__m256)a.v, take_a)};
}
AMPKIT_X86_V4 inline FloatVec<16> nan_propagating_max(FloatVec<16> a, FloatVec<16> b) {
  const __mmask16 take_a = _mm512_cmp_ps_mask((__m512)a.v, (__m512)a.v, _CMP_UNORD_Q) |
                           _mm512_cmp_ps_mask((__m512)a.v, (__m512)b.v, _CMP_GT_OQ);
  return {(FloatVec<16>::Native)_mm512_mask_blend_ps(take_a, (__m512)b.v, (__m512)a.v)};
}

// optim_math's square_root, per lane: sqrtps is correctly rounded, as sqrtss is.
AMPKIT_X86_V3 inline FloatVec<8> square_root(FloatVec<8> a) { return {(FloatVec<8>::Native)_mm256_sqrt_ps((__m256)a.v)}; }
AMPKIT_X86_V4 inline FloatVec<16> square_root(FloatVec<16> a) {
  return {(FloatVec<16>::Native)_mm512_sqrt_ps((__m512)a.v)};
}

#pragma GCC diagnostic pop

#endif  // AMPKIT_X86_DISPATCH

}  // namespace ampkit::cpu
