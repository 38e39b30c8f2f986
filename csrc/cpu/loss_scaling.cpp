// CPU kernels of unscale_and_check_ and update_scale_.
//
// fp32, fp16 and bf16 grads are unscaled in fp32 and rounded once; fp64 grads in fp64 (UnscaleMath).
// Each block runs the portable loop below, or on x86-64 an AVX2 or AVX-512 one chosen at run time
// (cpu/vector_isa.h); all of them give the same bits: values, found_inf and the norm.
//
// The norm is accumulated in double: each fixed block of kGrainSize elements produces a double
// partial, and the partials are summed in block order. Double keeps the result within an ulp of
// the exact norm of the fp32 values for any realistic size (fp32 running sums lose ~log2(n)
// bits), and fixed blocks summed in order make it independent of the number of threads. Every
// instruction set sums a block's squares in the same order, so the norm is reproducible on any
// x86-64 machine.
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "ampkit_kernels/scale_math.h"
#include "cpu/cpu_loops.h"
#include "cpu/vector_isa.h"
#include "ops/loss_scaling.h"

namespace ampkit::cpu {
namespace {

struct FlatResult {
  bool non_finite = false;
  double sum_of_squares = 0.0;
};

// The arithmetic type of a grad dtype: fp32 for fp32/fp16/bf16 (one rounding back to the dtype),
// fp64 for fp64 grads, as torch's _amp_foreach_non_finite_check_and_unscale_ does (a double grad
// times the float inv_scale, in double; the inf/NaN test in double, where 1e300 is finite).
template <typename T>
struct UnscaleMath {
  using type = float;
};
template <>
struct UnscaleMath<double> {
  using type = double;
};

// The squares of a block are summed in this many double lanes: element begin + k * kSquareLanes + l
// goes to lane l, the elements past the last whole group to lane 0 one by one, then the lanes are
// added in order from 0.0. 32 independent sums, so that the vector loops' additions do not wait
// on one another; every instruction set adds in this one order.
constexpr int kSquareLanes = 32;

// One block [begin, end). Written so that the compiler vectorises it: independent lanes, the
// non-finite test as a float sum (x - x is 0 for finite x, NaN otherwise), and the squares
// summed in a second loop over the same (L1-resident) sub-block so the stores and the double
// accumulation do not block each other. Returns the block's flag and sum of squares.
template <typename T, bool Write, bool Norm>
__attribute__((always_inline)) inline bool unscale_block(T* data, int64_t begin, int64_t end, float factor,
                                                         double& sum_of_squares) {
  using Math = typename UnscaleMath<T>::type;
  constexpr int kLanes = 8;
  constexpr int64_t kSubBlock = 512;  // a multiple of kSquareLanes: only a block's end has a tail
  const Math math_factor = static_cast<Math>(factor);
  Math non_finite_lanes[kLanes] = {};
  double square_lanes[kSquareLanes] = {};
  for (int64_t sub = begin; sub < end; sub += kSubBlock) {
    const int64_t sub_end = std::min(end, sub + kSubBlock);
    int64_t i = sub;
    for (; i + kLanes <= sub_end; i += kLanes) {
      for (int lane = 0; lane < kLanes; ++lane) {
        const Math value = static_cast<Math>(data[i + lane]);
        non_finite_lanes[lane] += value - value;
        if (Write) data[i + lane] = static_cast<T>(value * math_factor);
      }
    }
    for (; i < sub_end; ++i) {
      const Math value = static_cast<Math>(data[i]);
      non_finite_lanes[0] += value - value;
      if (Write) data[i] = static_cast<T>(value * math_factor);
    }
    if (Norm) {
      i = sub;
      for (; i + kSquareLanes <= sub_end; i += kSquareLanes) {
        for (int lane = 0; lane < kSquareLanes; ++lane) {
          const double unscaled = static_cast<Math>(data[i + lane]);
          square_lanes[lane] += unscaled * unscaled;
        }
      }
      for (; i < sub_end; ++i) {
        const double unscaled = static_cast<Math>(data[i]);
        square_lanes[0] += unscaled * unscaled;
      }
    }
  }
  bool non_finite = false;
  sum_of_squares = 0.0;
  for (int lane = 0; lane < kLanes; ++lane) non_finite |= non_finite_lanes[lane] != Math(0);  // NaN != 0 too
  for (int lane = 0; lane < kSquareLanes; ++lane) sum_of_squares += square_lanes[lane];
  return non_finite;
}

using BlockFn = bool (*)(void* data, int64_t begin, int64_t end, float factor, double& sum_of_squares);

#define AMPKIT_DEFINE_BLOCK_FN(NAME, T, WRITE, NORM)                                                              \
  bool NAME(void* data, int64_t begin, int64_t end, float factor, double& squares) {                              \
    return unscale_block<T, WRITE, NORM>(static_cast<T*>(data), begin, end, factor, squares);                      \
  }
AMPKIT_DEFINE_BLOCK_FN(block_f32_w, float, true, false)
AMPKIT_DEFINE_BLOCK_FN(block_f32_wn, float, true, true)
AMPKIT_DEFINE_BLOCK_FN(block_f32_r, float, false, false)
AMPKIT_DEFINE_BLOCK_FN(block_f32_rn, float, false, true)
AMPKIT_DEFINE_BLOCK_FN(block_f16_w, c10::Half, true, false)
AMPKIT_DEFINE_BLOCK_FN(block_f16_wn, c10::Half, true, true)
AMPKIT_DEFINE_BLOCK_FN(block_f16_r, c10::Half, false, false)
AMPKIT_DEFINE_BLOCK_FN(block_f16_rn, c10::Half, false, true)
AMPKIT_DEFINE_BLOCK_FN(block_bf16_w, c10::BFloat16, true, false)
AMPKIT_DEFINE_BLOCK_FN(block_bf16_wn, c10::BFloat16, true, true)
AMPKIT_DEFINE_BLOCK_FN(block_bf16_r, c10::BFloat16, false, false)
AMPKIT_DEFINE_BLOCK_FN(block_bf16_rn, c10::BFloat16, false, true)
// fp64: the baseline code on every x86 CPU (SSE2 vectorises it). No AVX2 copy: fp64 grads are
// rare in mixed precision, and with one path the FMA contraction of the squares cannot make the
// fp64 norm depend on the CPU it ran on.
AMPKIT_DEFINE_BLOCK_FN(block_f64_w, double, true, false)
AMPKIT_DEFINE_BLOCK_FN(block_f64_wn, double, true, true)
AMPKIT_DEFINE_BLOCK_FN(block_f64_r, double, false, false)
AMPKIT_DEFINE_BLOCK_FN(block_f64_rn, double, false, true)
#undef AMPKIT_DEFINE_BLOCK_FN

#if AMPKIT_X86_DISPATCH
// ---- fp32, fp16 and bf16 blocks with intrinsics (conversions: cpu/vector_isa.h), bit for bit
// the portable block's results: the same rounding and NaNs (c10::Half's sign | 0x7E00, bf16
// 0x7FC0) for the unscaled values, the same flag, and the same norm, because the squares go to
// the same kSquareLanes double lanes in the same order (see there). A float's square is exact in
// double, so however a square is added it rounds once, as the portable loop's does.

// Loads are prefetched this far ahead, as in the optimizer step (cpu/optim.cpp). In paired runs
// against torch on this machine's shared Zen 5, 4096 bytes came out level with or a few % ahead
// of 2048 and none; the loops stay memory-bound either way.
constexpr uintptr_t kPrefetchBytes = 4096;

template <typename T>
inline void prefetch_ahead(const T* data) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(data) + kPrefetchBytes), _MM_HINT_T0);
}

// The elements past the last whole group of kSquareLanes, then the fold of the lanes, as the
// portable block does them.
template <typename T, bool Write, bool Norm>
inline bool finish_block(T* data, int64_t i, int64_t end, float factor, const double* vector_lanes,
                         double& sum_of_squares) {
  double square_lanes[kSquareLanes];
  for (int lane = 0; lane < kSquareLanes; ++lane) square_lanes[lane] = vector_lanes[lane];
  bool found = false;
  for (; i < end; ++i) {
    const float value = static_cast<float>(data[i]);
    found |= is_non_finite(value);
    if (Write) data[i] = static_cast<T>(value * factor);
    if (Norm) {
      const double unscaled = static_cast<float>(data[i]);
      square_lanes[0] += unscaled * unscaled;
    }
  }
  sum_of_squares = 0.0;
  for (double lane : square_lanes) sum_of_squares += lane;
  return found;
}

// Store values as T and return what was stored, widened back to fp32 (for the norm), from the
// registers: reading the stores back costs the 16-bit loops half their speed (store forwarding).
// fp16 and bf16 store their own way (below).
AMPKIT_X86_V3 inline __m256 store8_and_widen(float* data, __m256 values) {
  _mm256_storeu_ps(data, values);
  return values;
}
AMPKIT_X86_V4 inline __m512 store16_and_widen(float* data, __m512 values) {
  _mm512_storeu_ps(data, values);
  return values;
}

// fp16 stores F16C's rounding as it comes, NaN payload included, and the norm squares those halves
// widened back: making NaNs canonical in the loop lengthens the chain from the product to the
// square by four integer ops, which held the AVX-512 loop with the norm to ~7.5 G elem/s on this
// project's Zen 5 (~10.9 without). Only a block that can hold a NaN gets them made canonical after
// its loop (canonical_f16_nans_in): a product of a finite grad and a finite, non-zero factor is
// never NaN, and a grad that is not finite sets the block's flag. A NaN squares to NaN either way.
AMPKIT_X86_V3 inline __m256 store8_and_widen_raw(c10::Half* data, __m256 values) {
  const __m128i halves = x86::narrow_f16(values);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(data), halves);
  return x86::widen_f16(halves);
}

bool may_hold_nan(bool found, float factor) { return found || !(std::isfinite(factor) && factor != 0.0f); }

AMPKIT_X86_V3 void canonical_f16_nans_in(c10::Half* data, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; i += 16) {  // [begin, end) is whole groups of 16
    auto* at = reinterpret_cast<__m256i*>(data + i);
    _mm256_storeu_si256(at, x86::canonical_f16_nans(_mm256_loadu_si256(at)));
  }
}

// 8 elements from i: test, unscale, and add their squares to lanes [4 * 2q, 4 * 2q + 8).
template <typename T, bool Write, bool Norm>
AMPKIT_X86_V3 inline void group8_avx2(T* data, int64_t i, __m256 factors, __m256& non_finite, __m256d& squares_low,
                                      __m256d& squares_high) {
  prefetch_ahead(data + i);
  __m256 values = x86::load8(data + i);
  non_finite = _mm256_or_ps(non_finite, _mm256_sub_ps(values, values));  // x - x: NaN unless x is finite
  // the norm squares what was written
  if constexpr (Write && std::is_same_v<T, c10::Half>) {
    values = store8_and_widen_raw(data + i, _mm256_mul_ps(values, factors));
  } else if constexpr (Write) {
    values = store8_and_widen(data + i, _mm256_mul_ps(values, factors));
  }
  if (Norm) {
    const __m256d low = _mm256_cvtps_pd(_mm256_castps256_ps128(values));
    const __m256d high = _mm256_cvtps_pd(_mm256_extractf128_ps(values, 1));
    squares_low = _mm256_add_pd(squares_low, _mm256_mul_pd(low, low));
    squares_high = _mm256_add_pd(squares_high, _mm256_mul_pd(high, high));
  }
}

template <typename T, bool Write, bool Norm>
AMPKIT_X86_V3 bool block_avx2(void* raw, int64_t begin, int64_t end, float factor, double& sum_of_squares) {
  T* data = static_cast<T*>(raw);
  const __m256 factors = _mm256_set1_ps(factor);
  __m256 non_finite = _mm256_setzero_ps();
  __m256d squares[kSquareLanes / 4];  // squares[q]: lanes 4q .. 4q + 3
  for (__m256d& lanes : squares) lanes = _mm256_setzero_pd();
  int64_t i = begin;
  for (; i + kSquareLanes <= end; i += kSquareLanes) {
    for (int group = 0; group < kSquareLanes / 8; ++group) {
      group8_avx2<T, Write, Norm>(data, i + 8 * group, factors, non_finite, squares[2 * group], squares[2 * group + 1]);
    }
  }
  alignas(32) double square_lanes[kSquareLanes];
  for (int q = 0; q < kSquareLanes / 4; ++q) _mm256_store_pd(square_lanes + 4 * q, squares[q]);
  const bool found = _mm256_movemask_ps(_mm256_cmp_ps(non_finite, non_finite, _CMP_UNORD_Q)) != 0;
  if constexpr (Write && std::is_same_v<T, c10::Half>) {
    if (may_hold_nan(found, factor)) canonical_f16_nans_in(data, begin, i);
  }
  return finish_block<T, Write, Norm>(data, i, end, factor, square_lanes, sum_of_squares) || found;
}

AMPKIT_X86_V4 inline __m512 store16_and_widen_raw(c10::Half* data, __m512 values) {
  const __m256i halves = x86::narrow_f16(values);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(data), halves);
  return x86::widen_f16(halves);
}

// 16 elements from i: test, unscale, and add their squares to lanes [8 * 2q, 8 * 2q + 16).
template <typename T, bool Write, bool Norm>
AMPKIT_X86_V4 inline void group16_avx512(T* data, int64_t i, __m512 factors, __m512& non_finite,
                                         __m512d& squares_low, __m512d& squares_high) {
  prefetch_ahead(data + i);
  __m512 values = x86::load16(data + i);
  non_finite = _mm512_or_ps(non_finite, _mm512_sub_ps(values, values));
  if constexpr (Write && std::is_same_v<T, c10::Half>) {
    values = store16_and_widen_raw(data + i, _mm512_mul_ps(values, factors));
  } else if constexpr (Write) {
    values = store16_and_widen(data + i, _mm512_mul_ps(values, factors));
  }
  if (Norm) {
    const __m512d low = _mm512_cvtps_pd(_mm512_castps512_ps256(values));
    const __m512d high = _mm512_cvtps_pd(_mm512_extractf32x8_ps(values, 1));
    squares_low = _mm512_add_pd(squares_low, _mm512_mul_pd(low, low));
    squares_high = _mm512_add_pd(squares_high, _mm512_mul_pd(high, high));
  }
}

template <typename T, bool Write, bool Norm>
AMPKIT_X86_V4 bool block_avx512(void* raw, int64_t begin, int64_t end, float factor, double& sum_of_squares) {
  T* data = static_cast<T*>(raw);
  const __m512 factors = _mm512_set1_ps(factor);
  __m512 non_finite = _mm512_setzero_ps();
  __m512d squares[kSquareLanes / 8];  // squares[q]: lanes 8q .. 8q + 7
  for (__m512d& lanes : squares) lanes = _mm512_setzero_pd();
  int64_t i = begin;
  for (; i + kSquareLanes <= end; i += kSquareLanes) {
    for (int group = 0; group < kSquareLanes / 16; ++group) {
      group16_avx512<T, Write, Norm>(data, i + 16 * group, factors, non_finite, squares[2 * group],
                                     squares[2 * group + 1]);
    }
  }
  alignas(64) double square_lanes[kSquareLanes];
  for (int q = 0; q < kSquareLanes / 8; ++q) _mm512_store_pd(square_lanes + 8 * q, squares[q]);
  const bool found = _mm512_cmp_ps_mask(non_finite, non_finite, _CMP_UNORD_Q) != 0;
  if constexpr (Write && std::is_same_v<T, c10::Half>) {
    if (may_hold_nan(found, factor)) canonical_f16_nans_in(data, begin, i);
  }
  return finish_block<T, Write, Norm>(data, i, end, factor, square_lanes, sum_of_squares) || found;
}

// bf16: a load holds the even elements in the low halves of its 32-bit words and the odd ones in
// the high halves. Widening is then a shift or a mask, and the store joins the two rounded vectors
// with a shift and an or: none of the lane-crossing conversions (vpmovzxwd, vpmovdw) that held the
// generic AVX-512 loop to ~6.5 G elem/s with the norm on this project's Zen 5 (~10 here,
// standalone). The squares still go to lane l for element l of each group of kSquareLanes; the
// even/odd vectors hold every other lane, and they are put back in lane order before the fold.
static_assert(kSquareLanes == 32, "one group of square lanes is one 64-byte load of bf16");

// The square lanes in order from the blocks' accumulators, Width doubles each. Accumulator
// 4 * load + 2 * parity + part holds, for the load of 4 * Width elements at 4 * Width * load, the
// squares of its elements 2 * Width * part + 2k + parity (k < Width).
template <int Width>
void square_lanes_in_order(const double (*by_vector)[Width], double* square_lanes) {
  for (int load = 0; load < kSquareLanes / (4 * Width); ++load) {
    for (int parity = 0; parity < 2; ++parity) {
      for (int part = 0; part < 2; ++part) {
        for (int k = 0; k < Width; ++k) {
          square_lanes[4 * Width * load + 2 * Width * part + 2 * k + parity] = by_vector[4 * load + 2 * parity + part][k];
        }
      }
    }
  }
}

// 16 bf16 from data + i (one 32-byte load) for the AVX2 block: test, unscale, store, and add the
// squares of elements 2j + parity to squares[2 * parity] (j < 4) and squares[2 * parity + 1].
template <bool Write, bool Norm>
AMPKIT_X86_V3 inline void group16_avx2_bf16(c10::BFloat16* data, int64_t i, __m256 factors, __m256& non_finite,
                                            __m256d* squares) {
  prefetch_ahead(data + i);
  const __m256i high_halves = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m256i words = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(data + i));
  __m256 values[2] = {_mm256_castsi256_ps(_mm256_slli_epi32(words, 16)),
                      _mm256_castsi256_ps(_mm256_and_si256(words, high_halves))};
  for (int parity = 0; parity < 2; ++parity) {
    non_finite = _mm256_or_ps(non_finite, _mm256_sub_ps(values[parity], values[parity]));
    if (Write) values[parity] = _mm256_castsi256_ps(x86::round_to_bf16_lanes(_mm256_mul_ps(values[parity], factors)));
    if (Norm) {
      const __m256d low = _mm256_cvtps_pd(_mm256_castps256_ps128(values[parity]));
      const __m256d high = _mm256_cvtps_pd(_mm256_extractf128_ps(values[parity], 1));
      squares[2 * parity] = _mm256_add_pd(squares[2 * parity], _mm256_mul_pd(low, low));
      squares[2 * parity + 1] = _mm256_add_pd(squares[2 * parity + 1], _mm256_mul_pd(high, high));
    }
  }
  if (Write) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(data + i),
                        _mm256_or_si256(_mm256_castps_si256(values[1]), _mm256_srli_epi32(_mm256_castps_si256(values[0]), 16)));
  }
}

template <bool Write, bool Norm>
AMPKIT_X86_V3 bool block_avx2_bf16(void* raw, int64_t begin, int64_t end, float factor, double& sum_of_squares) {
  auto* data = static_cast<c10::BFloat16*>(raw);
  const __m256 factors = _mm256_set1_ps(factor);
  __m256 non_finite = _mm256_setzero_ps();
  __m256d squares[8];  // see square_lanes_in_order
  for (__m256d& lanes : squares) lanes = _mm256_setzero_pd();
  int64_t i = begin;
  for (; i + kSquareLanes <= end; i += kSquareLanes) {
    group16_avx2_bf16<Write, Norm>(data, i, factors, non_finite, squares);
    group16_avx2_bf16<Write, Norm>(data, i + 16, factors, non_finite, squares + 4);
  }
  alignas(32) double by_vector[8][4];
  for (int q = 0; q < 8; ++q) _mm256_store_pd(by_vector[q], squares[q]);
  double square_lanes[kSquareLanes];
  square_lanes_in_order<4>(by_vector, square_lanes);
  const bool found = _mm256_movemask_ps(_mm256_cmp_ps(non_finite, non_finite, _CMP_UNORD_Q)) != 0;
  return finish_block<c10::BFloat16, Write, Norm>(data, i, end, factor, square_lanes, sum_of_squares) || found;
}

// AVX-512: one 64-byte load is one group of kSquareLanes.
template <bool Write, bool Norm>
AMPKIT_X86_V4 bool block_avx512_bf16(void* raw, int64_t begin, int64_t end, float factor, double& sum_of_squares) {
  auto* data = static_cast<c10::BFloat16*>(raw);
  const __m512 factors = _mm512_set1_ps(factor);
  const __m512i high_halves = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m512 non_finite = _mm512_setzero_ps();
  __m512d squares[4];  // see square_lanes_in_order
  for (__m512d& lanes : squares) lanes = _mm512_setzero_pd();
  int64_t i = begin;
  for (; i + kSquareLanes <= end; i += kSquareLanes) {
    prefetch_ahead(data + i);
    const __m512i words = _mm512_loadu_si512(data + i);
    __m512 values[2] = {_mm512_castsi512_ps(_mm512_slli_epi32(words, 16)),     // even elements
                        _mm512_castsi512_ps(_mm512_and_si512(words, high_halves))};  // odd elements
    for (int parity = 0; parity < 2; ++parity) {
      non_finite = _mm512_or_ps(non_finite, _mm512_sub_ps(values[parity], values[parity]));
      // the norm squares what was written
      if (Write) values[parity] = _mm512_castsi512_ps(x86::round_to_bf16_lanes(_mm512_mul_ps(values[parity], factors)));
      if (Norm) {
        const __m512d low = _mm512_cvtps_pd(_mm512_castps512_ps256(values[parity]));
        const __m512d high = _mm512_cvtps_pd(_mm512_extractf32x8_ps(values[parity], 1));
        squares[2 * parity] = _mm512_add_pd(squares[2 * parity], _mm512_mul_pd(low, low));
        squares[2 * parity + 1] = _mm512_add_pd(squares[2 * parity + 1], _mm512_mul_pd(high, high));
      }
    }
    if (Write) {
      _mm512_storeu_si512(data + i, _mm512_or_si512(_mm512_castps_si512(values[1]),
                                                    _mm512_srli_epi32(_mm512_castps_si512(values[0]), 16)));
    }
  }
  alignas(64) double by_vector[4][8];
  for (int q = 0; q < 4; ++q) _mm512_store_pd(by_vector[q], squares[q]);
  double square_lanes[kSquareLanes];
  square_lanes_in_order<8>(by_vector, square_lanes);
  const bool found = _mm512_cmp_ps_mask(non_finite, non_finite, _CMP_UNORD_Q) != 0;
  return finish_block<c10::BFloat16, Write, Norm>(data, i, end, factor, square_lanes, sum_of_squares) || found;
}

template <typename T>
BlockFn select_vector_block(CpuIsa isa, bool write, bool norm) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (isa == CpuIsa::kAvx512) {
      if (write) return norm ? block_avx512_bf16<true, true> : block_avx512_bf16<true, false>;
      return norm ? block_avx512_bf16<false, true> : block_avx512_bf16<false, false>;
    }
    if (write) return norm ? block_avx2_bf16<true, true> : block_avx2_bf16<true, false>;
    return norm ? block_avx2_bf16<false, true> : block_avx2_bf16<false, false>;
  } else {
    if (isa == CpuIsa::kAvx512) {
      if (write) return norm ? block_avx512<T, true, true> : block_avx512<T, true, false>;
      return norm ? block_avx512<T, false, true> : block_avx512<T, false, false>;
    }
    if (write) return norm ? block_avx2<T, true, true> : block_avx2<T, true, false>;
    return norm ? block_avx2<T, false, true> : block_avx2<T, false, false>;
  }
}

#endif

BlockFn select_block_fn(at::ScalarType dtype, bool write, bool norm) {
#if AMPKIT_X86_DISPATCH
  const CpuIsa isa = selected_cpu_isa();
  if (isa != CpuIsa::kBaseline) {
    switch (dtype) {
      case at::kFloat: return select_vector_block<float>(isa, write, norm);
      case at::kHalf: return select_vector_block<c10::Half>(isa, write, norm);
      case at::kBFloat16: return select_vector_block<c10::BFloat16>(isa, write, norm);
      default: break;
    }
  }
#endif
  switch (dtype) {
    case at::kFloat: return write ? (norm ? block_f32_wn : block_f32_w) : (norm ? block_f32_rn : block_f32_r);
    case at::kHalf: return write ? (norm ? block_f16_wn : block_f16_w) : (norm ? block_f16_rn : block_f16_r);
    case at::kBFloat16: return write ? (norm ? block_bf16_wn : block_bf16_w) : (norm ? block_bf16_rn : block_bf16_r);
    case at::kDouble: return write ? (norm ? block_f64_wn : block_f64_w) : (norm ? block_f64_rn : block_f64_r);
    default: TORCH_CHECK_TYPE(false, "ampkit.unscale_and_check_: no CPU kernel for dtype ", dtype);
  }
}

// One pass over `numel` elements stored flat at `data`, in fixed blocks of kGrainSize elements
// run in parallel (the threads take them one by one: parallel_items). Each block's sum of squares
// lands in its own slot and the slots are added in block order, so the norm does not depend on
// the thread count.
FlatResult unscale_flat(void* data, at::ScalarType dtype, int64_t numel, float factor, bool write, bool norm) {
  FlatResult result;
  if (numel == 0) return result;
  const BlockFn block_fn = select_block_fn(dtype, write, norm);
  const int64_t num_blocks = (numel + kGrainSize - 1) / kGrainSize;
  std::vector<double> partials(num_blocks, 0.0);
  std::atomic<bool> found{false};
  parallel_items(num_blocks, [&](int64_t block) {
    const int64_t begin = block * kGrainSize;
    const int64_t end = std::min(numel, begin + kGrainSize);
    if (block_fn(data, begin, end, factor, partials[block])) found.store(true, std::memory_order_relaxed);
  });
  result.non_finite = found.load();
  for (double partial : partials) result.sum_of_squares += partial;
  return result;
}

void unscale_and_check_cpu(at::TensorList grads, const at::Tensor& found_inf, const at::Tensor& inv_scale,
                           const std::optional<at::Tensor>& norm_out) {
  detail::check_unscale_and_check_args(grads, found_inf, inv_scale, norm_out);
  const float factor = *inv_scale.const_data_ptr<float>();
  // Multiplying by exactly 1 changes no value: the pass then only reads (a check-only pass, as
  // GradScaler needs for optimizers that unscale inside their own step).
  const bool write = factor != 1.0f;
  const bool norm = norm_out.has_value();
  bool any_non_finite = false;
  double sum_of_squares = 0.0;
  for (const at::Tensor& grad : grads) {
    if (grad.numel() == 0) continue;
    // A strided slice is not one flat run: work on a contiguous copy and copy the result back.
    const bool flat = detail::is_flat_in_memory(grad);
    at::Tensor work = flat ? grad : grad.contiguous();
    const FlatResult result = unscale_flat(work.data_ptr(), work.scalar_type(), work.numel(), factor, write, norm);
    any_non_finite |= result.non_finite;
    sum_of_squares += result.sum_of_squares;
    if (!flat && write) grad.copy_(work);
  }
  if (any_non_finite) *found_inf.mutable_data_ptr<float>() = 1.0f;
  // A NaN norm is always the quiet NaN 0x7FC00000: which NaN's payload a sum of several keeps
  // depends on the compiler's operand order, which differs between the instruction sets.
  const float norm_value = static_cast<float>(std::sqrt(sum_of_squares));
  if (norm) *norm_out->mutable_data_ptr<float>() = std::isnan(norm_value) ? std::numeric_limits<float>::quiet_NaN() : norm_value;
}

// The rule itself is scale_math::update_scale_state, which the CUDA kernel runs too.
void update_scale_cpu(const at::Tensor& scale, const at::Tensor& growth_tracker, const at::Tensor& hysteresis_tracker,
                      const at::Tensor& found_inf, double growth_factor, double backoff_factor, int64_t growth_interval,
                      int64_t hysteresis, double min_scale, double max_scale) {
  const detail::UpdateScaleConfig options{growth_factor, backoff_factor, growth_interval,
                                          hysteresis, min_scale, max_scale};
  detail::check_update_scale_args(scale, growth_tracker, hysteresis_tracker, found_inf, options);
  const ampkit_kernels::ScaleUpdateConfig config = detail::scale_update_config(options);
  ampkit_kernels::scale_math::update_scale_state(
      *scale.mutable_data_ptr<float>(), *growth_tracker.mutable_data_ptr<int32_t>(),
      *hysteresis_tracker.mutable_data_ptr<int32_t>(), *found_inf.const_data_ptr<float>() != 0.0f, config);
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, CPU, m) {
  m.impl("unscale_and_check_", &unscale_and_check_cpu);
  m.impl("update_scale_", &update_scale_cpu);
}

}  // namespace ampkit::cpu
