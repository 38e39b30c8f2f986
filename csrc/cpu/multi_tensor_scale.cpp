// CPU kernel of multi_tensor_scale_: out = in * scale in fp32, rounded once to out's dtype, and
// found_inf set when an input element is inf or NaN.
//
// Every (in, out) dtype pair has two loops: the portable one below, and on x86-64 an AVX2/F16C
// one chosen at run time (cpu/vector_isa.h; AMPKIT_CPU_ISA=baseline forces the portable one).
// They give the same bits for every input, NaNs included: the vector stores round as c10::Half /
// c10::BFloat16 do and write their NaN (fp16 sign | 0x7E00, bf16 0x7FC0). fp32 -> fp32 takes the
// vector loop too: the compiler does not vectorise the portable one (scalar mulss only).
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>

#include "cpu/cpu_loops.h"
#include "cpu/vector_isa.h"
#include "ops/multi_tensor_scale.h"

namespace ampkit::cpu {
namespace {

// Scales elements [begin, end) of one tensor; returns whether any input there is non-finite.
using ScaleBlockFn = bool (*)(const void* input, void* output, int64_t begin, int64_t end, float factor);

template <typename In, typename Out>
bool scale_block(const void* input, void* output, int64_t begin, int64_t end, float factor) {
  const In* in = static_cast<const In*>(input);
  Out* out = static_cast<Out*>(output);
  bool non_finite = false;
  for (int64_t i = begin; i < end; ++i) {
    const float value = static_cast<float>(in[i]);
    non_finite |= is_non_finite(value);
    out[i] = static_cast<Out>(value * factor);
  }
  return non_finite;
}

#if AMPKIT_X86_DISPATCH
// Loads are prefetched this far ahead. Without it, on the (virtualised, shared) machine this was
// measured on, the bf16 loop ran at a quarter of its in-cache rate once a tensor outgrew L2
// (32 MB in place: 4.5 GB/s, 19 GB/s with it); fp16/fp32 gain less, in-cache rates are unchanged.
constexpr uintptr_t kPrefetchBytes = 2048;

// 8 elements a step: widen, test, multiply, narrow. The test: x - x is +0 for finite x and NaN
// otherwise; OR-ing the bits keeps a NaN a NaN (exponent all ones, mantissa not 0), and OR takes
// one cycle where an add chain would bound the loop. The tail is the portable loop's code.
template <typename In, typename Out>
AMPKIT_X86_V3 bool scale_block_v3(const void* input, void* output, int64_t begin, int64_t end, float factor) {
  const In* in = static_cast<const In*>(input);
  Out* out = static_cast<Out*>(output);
  const __m256 factors = _mm256_set1_ps(factor);
  __m256 non_finite = _mm256_setzero_ps();
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(in + i) + kPrefetchBytes), _MM_HINT_T0);
    const __m256 values = x86::load8(in + i);
    non_finite = _mm256_or_ps(non_finite, _mm256_sub_ps(values, values));
    x86::store8(out + i, _mm256_mul_ps(values, factors));
  }
  bool found = _mm256_movemask_ps(_mm256_cmp_ps(non_finite, non_finite, _CMP_UNORD_Q)) != 0;
  for (; i < end; ++i) {
    const float value = static_cast<float>(in[i]);
    found |= is_non_finite(value);
    out[i] = static_cast<Out>(value * factor);
  }
  return found;
}
#endif

template <typename In, typename Out>
ScaleBlockFn select_block_fn() {
#if AMPKIT_X86_DISPATCH
  if (use_vector_isa()) return scale_block_v3<In, Out>;
#endif
  return scale_block<In, Out>;
}

// The dtypes the argument checks admit: fp32, fp16, bf16.
template <typename In>
ScaleBlockFn select_block_fn(at::ScalarType out) {
  switch (out) {
    case at::kFloat: return select_block_fn<In, float>();
    case at::kHalf: return select_block_fn<In, c10::Half>();
    case at::kBFloat16: return select_block_fn<In, c10::BFloat16>();
    default: TORCH_CHECK_TYPE(false, detail::kMultiTensorScaleOp, ": no CPU kernel for output dtype ", out);
  }
}

ScaleBlockFn select_block_fn(at::ScalarType in, at::ScalarType out) {
  switch (in) {
    case at::kFloat: return select_block_fn<float>(out);
    case at::kHalf: return select_block_fn<c10::Half>(out);
    case at::kBFloat16: return select_block_fn<c10::BFloat16>(out);
    default: TORCH_CHECK_TYPE(false, detail::kMultiTensorScaleOp, ": no CPU kernel for input dtype ", in);
  }
}

bool scale_one_tensor(const at::Tensor& input, const at::Tensor& output, ScaleBlockFn block_fn, float factor) {
  const void* in = input.const_data_ptr();
  void* out = output.mutable_data_ptr();
  std::atomic<bool> found{false};
  parallel_chunks(input.numel(), [&](int64_t begin, int64_t end) {
    if (block_fn(in, out, begin, end, factor)) found.store(true, std::memory_order_relaxed);
  });
  return found.load();
}

void multi_tensor_scale_cpu(at::TensorList inputs, at::TensorList outputs, const at::Tensor& scale,
                            const at::Tensor& found_inf) {
  detail::check_multi_tensor_scale_args(inputs, outputs, scale, found_inf);
  const float factor = *scale.const_data_ptr<float>();
  bool any_non_finite = false;
  for (size_t t = 0; t < inputs.size(); ++t) {
    const ScaleBlockFn block_fn = select_block_fn(inputs[t].scalar_type(), outputs[t].scalar_type());
    any_non_finite |= scale_one_tensor(inputs[t], outputs[t], block_fn, factor);
  }
  if (any_non_finite) *found_inf.mutable_data_ptr<float>() = 1.0f;
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, CPU, m) { m.impl("multi_tensor_scale_", &multi_tensor_scale_cpu); }

}  // namespace ampkit::cpu
