// CPU kernels of unscale_and_check_ and update_scale_.
//
// fp32, fp16 and bf16 grads are unscaled in fp32 and rounded once; fp64 grads in fp64 (UnscaleMath).
//
// The norm is accumulated in double: each fixed block of kGrainSize elements produces a double
// partial, and the partials are summed in block order. Double keeps the result within an ulp of
// the exact norm of the fp32 values for any realistic size (fp32 running sums lose ~log2(n)
// bits), and fixed blocks summed in order make it independent of the number of threads, so a
// run is reproducible on any machine with the same instruction set.
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
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

// One block [begin, end). Written so that the compiler vectorises it: independent lanes, the
// non-finite test as a float sum (x - x is 0 for finite x, NaN otherwise), and the squares
// summed in a second loop over the same (L1-resident) sub-block so the stores and the double
// accumulation do not block each other. Returns the block's flag and sum of squares.
template <typename T, bool Write, bool Norm>
__attribute__((always_inline)) inline bool unscale_block(T* data, int64_t begin, int64_t end, float factor,
                                                         double& sum_of_squares) {
  using Math = typename UnscaleMath<T>::type;
  constexpr int kLanes = 8;
  constexpr int64_t kSubBlock = 512;
  const Math math_factor = static_cast<Math>(factor);
  Math non_finite_lanes[kLanes] = {};
  double square_lanes[kLanes] = {};
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
      for (; i + kLanes <= sub_end; i += kLanes) {
        for (int lane = 0; lane < kLanes; ++lane) {
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
  for (int lane = 0; lane < kLanes; ++lane) {
    non_finite |= non_finite_lanes[lane] != Math(0);  // NaN != 0 too
    sum_of_squares += square_lanes[lane];
  }
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
// The fp32 blocks again for AVX2/FMA (the compiler vectorises the same loop wider). The 16-bit
// dtypes get blocks written with conversion intrinsics instead (block_16bit_avx2 below).
#define AMPKIT_DEFINE_BLOCK_FN_V3(NAME, WRITE, NORM)                                                              \
  AMPKIT_X86_V3 bool NAME##_v3(void* data, int64_t begin, int64_t end, float factor, double& squares) {            \
    return unscale_block<float, WRITE, NORM>(static_cast<float*>(data), begin, end, factor, squares);              \
  }
AMPKIT_DEFINE_BLOCK_FN_V3(block_f32_w, true, false)
AMPKIT_DEFINE_BLOCK_FN_V3(block_f32_wn, true, true)
AMPKIT_DEFINE_BLOCK_FN_V3(block_f32_r, false, false)
AMPKIT_DEFINE_BLOCK_FN_V3(block_f32_rn, false, true)
#undef AMPKIT_DEFINE_BLOCK_FN_V3
#endif

#if AMPKIT_X86_DISPATCH
// fp16 <-> fp32 through F16C and bf16 <-> fp32 through AVX2 integer ops (cpu/vector_isa.h).
// fp16 NaNs keep their payload here, as in torch's own unscale; the baseline code writes
// c10::Half's sign | 0x7E00. Every other value is identical on both.
// The end of an AVX2 block: fold the vector lanes, then the scalar tail [i, end).
template <typename T>
AMPKIT_X86_V3 inline bool finish_block_avx2(T* data, int64_t i, int64_t end, float factor, bool write, bool norm,
                                            __m256 non_finite, __m256d squares_low, __m256d squares_high,
                                            double& sum_of_squares) {
  alignas(32) float non_finite_lanes[8];
  alignas(32) double low_lanes[4];
  alignas(32) double high_lanes[4];
  _mm256_store_ps(non_finite_lanes, non_finite);
  _mm256_store_pd(low_lanes, squares_low);
  _mm256_store_pd(high_lanes, squares_high);
  bool found = false;
  sum_of_squares = 0.0;
  for (float lane : non_finite_lanes) found |= lane != 0.0f;
  for (int lane = 0; lane < 4; ++lane) sum_of_squares += low_lanes[lane] + high_lanes[lane];
  for (; i < end; ++i) {  // the tail
    const float value = static_cast<float>(data[i]);
    found |= is_non_finite(value);
    if (write) data[i] = static_cast<T>(value * factor);
    if (norm) {
      const double unscaled = static_cast<float>(data[i]);
      sum_of_squares += unscaled * unscaled;
    }
  }
  return found;
}

// How the 16-bit block below widens and narrows: the one difference between fp16 and bf16.
struct F16cConversion {
  AMPKIT_X86_V3 static __m256 widen(__m128i narrow) { return x86::widen_f16(narrow); }
  AMPKIT_X86_V3 static __m128i narrow(__m256 values) { return x86::narrow_f16(values); }
};
struct Bf16Avx2Conversion {
  AMPKIT_X86_V3 static __m256 widen(__m128i narrow) { return x86::widen_bf16(narrow); }
  AMPKIT_X86_V3 static __m128i narrow(__m256 values) { return x86::narrow_bf16(values); }
};

template <typename T, typename Conversion>
AMPKIT_X86_V3 bool block_16bit_avx2(void* raw, int64_t begin, int64_t end, float factor, bool write, bool norm,
                                    double& sum_of_squares) {
  T* data = static_cast<T*>(raw);
  const __m256 factors = _mm256_set1_ps(factor);
  __m256 non_finite = _mm256_setzero_ps();
  __m256d squares_low = _mm256_setzero_pd();
  __m256d squares_high = _mm256_setzero_pd();
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    __m128i narrow = _mm_loadu_si128(reinterpret_cast<const __m128i*>(data + i));
    const __m256 values = Conversion::widen(narrow);
    non_finite = _mm256_add_ps(non_finite, _mm256_sub_ps(values, values));
    __m256 unscaled = values;
    if (write) {
      narrow = Conversion::narrow(_mm256_mul_ps(values, factors));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(data + i), narrow);
      unscaled = Conversion::widen(narrow);
    }
    if (norm) {
      const __m256d low = _mm256_cvtps_pd(_mm256_castps256_ps128(unscaled));
      const __m256d high = _mm256_cvtps_pd(_mm256_extractf128_ps(unscaled, 1));
      squares_low = _mm256_fmadd_pd(low, low, squares_low);
      squares_high = _mm256_fmadd_pd(high, high, squares_high);
    }
  }
  return finish_block_avx2(data, i, end, factor, write, norm, non_finite, squares_low, squares_high, sum_of_squares);
}

template <typename T, typename Conversion, bool Write, bool Norm>
AMPKIT_X86_V3 bool block_16bit_avx2_fn(void* data, int64_t begin, int64_t end, float factor, double& squares) {
  return block_16bit_avx2<T, Conversion>(data, begin, end, factor, Write, Norm, squares);
}

template <typename T, typename Conversion>
BlockFn select_block_16bit_avx2(bool write, bool norm) {
  if (write) {
    return norm ? block_16bit_avx2_fn<T, Conversion, true, true> : block_16bit_avx2_fn<T, Conversion, true, false>;
  }
  return norm ? block_16bit_avx2_fn<T, Conversion, false, true> : block_16bit_avx2_fn<T, Conversion, false, false>;
}

#endif

BlockFn select_block_fn(at::ScalarType dtype, bool write, bool norm) {
#if AMPKIT_X86_DISPATCH
  if (use_vector_isa()) {
    switch (dtype) {
      case at::kFloat:
        return write ? (norm ? block_f32_wn_v3 : block_f32_w_v3) : (norm ? block_f32_rn_v3 : block_f32_r_v3);
      case at::kHalf: return select_block_16bit_avx2<c10::Half, F16cConversion>(write, norm);
      case at::kBFloat16: return select_block_16bit_avx2<c10::BFloat16, Bf16Avx2Conversion>(write, norm);
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
// run in parallel. Each block's sum of squares lands in its own slot and the slots are added in
// block order, so the norm does not depend on the thread count.
FlatResult unscale_flat(void* data, at::ScalarType dtype, int64_t numel, float factor, bool write, bool norm) {
  FlatResult result;
  if (numel == 0) return result;
  const BlockFn block_fn = select_block_fn(dtype, write, norm);
  const int64_t num_blocks = (numel + kGrainSize - 1) / kGrainSize;
  std::vector<double> partials(num_blocks, 0.0);
  std::atomic<bool> found{false};
  at::parallel_for(0, num_blocks, 1, [&](int64_t first_block, int64_t last_block) {
    bool non_finite = false;
    for (int64_t block = first_block; block < last_block; ++block) {
      const int64_t begin = block * kGrainSize;
      const int64_t end = std::min(numel, begin + kGrainSize);
      non_finite |= block_fn(data, begin, end, factor, partials[block]);
    }
    if (non_finite) found.store(true, std::memory_order_relaxed);
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
  if (norm) *norm_out->mutable_data_ptr<float>() = static_cast<float>(std::sqrt(sum_of_squares));
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
