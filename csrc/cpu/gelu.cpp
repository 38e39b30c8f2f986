#include "cpu/gelu.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>

#include "cpu/cpu_loops.h"
#include "cpu/vector_isa.h"

namespace ampkit::cpu {
namespace {

#if AMPKIT_X86_DISPATCH
// GCC 12 flags the _mm512_undefined_*() inside its own intrinsics where they inline here (GCC bug
// 105593, as in cpu/vector_isa.h); the warning is about GCC's headers, never this file's code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// exp(z) for z in [0, 88] (and NaN): z = n ln2 + r, |r| <= ln2 / 2, with ln2 split in two so that
// n * kLn2High is exact; exp(r) by its Taylor polynomial to r^6 (relative error < 2e-7 there), then
// scaled by 2^n.
AMPKIT_X86_V4 inline __m512 exp_small_range(__m512 z) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(z, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), z);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// tanh(y) = sign(y) (1 - 2 / (exp(2|y|) + 1)): absolute error ~1e-7. |y| past 44 gives exactly +-1
// (exp is capped at exp(88) so it stays finite); a NaN stays NaN (the cap keeps the NaN operand).
AMPKIT_X86_V4 inline __m512 tanh16(__m512 y) {
  const __m512 sign = _mm512_and_ps(y, _mm512_set1_ps(-0.0f));
  const __m512 magnitude = _mm512_andnot_ps(_mm512_set1_ps(-0.0f), y);
  const __m512 twice = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_add_ps(magnitude, magnitude));
  const __m512 e = exp_small_range(twice);
  const __m512 t = _mm512_sub_ps(_mm512_set1_ps(1.0f),
                                 _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
  return _mm512_or_ps(t, sign);
}

// ATen's formula (GeluKernel.cpp, approximate="tanh"), term by term.
AMPKIT_X86_V4 inline __m512 gelu_tanh_grad16(__m512 grad, __m512 x) {
  const __m512 beta = _mm512_set1_ps(0.7978845608028654f);  // sqrt(2 / pi)
  const __m512 kappa = _mm512_set1_ps(0.044715f);
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 x_sq = _mm512_mul_ps(x, x);
  const __m512 x_cube = _mm512_mul_ps(x_sq, x);
  const __m512 inner = _mm512_mul_ps(beta, _mm512_add_ps(x, _mm512_mul_ps(kappa, x_cube)));
  const __m512 tanh_inner = tanh16(inner);
  const __m512 left = _mm512_mul_ps(half, x);
  const __m512 left_derivative = _mm512_mul_ps(half, _mm512_add_ps(one, tanh_inner));
  const __m512 tanh_derivative = _mm512_sub_ps(one, _mm512_mul_ps(tanh_inner, tanh_inner));
  const __m512 inner_derivative =
      _mm512_mul_ps(beta, _mm512_add_ps(one, _mm512_mul_ps(_mm512_set1_ps(3.0f * 0.044715f), x_sq)));
  const __m512 right_derivative = _mm512_mul_ps(left, _mm512_mul_ps(tanh_derivative, inner_derivative));
  return _mm512_mul_ps(grad, _mm512_add_ps(left_derivative, right_derivative));
}

template <typename T>
AMPKIT_X86_V4 void gelu_tanh_backward_rows(const T* grad, const T* pre, int64_t pre_row_stride, T* out,
                                           int64_t first_row, int64_t last_row, int64_t features) {
  for (int64_t row = first_row; row < last_row; ++row) {
    const T* g = grad + row * features;
    const T* x = pre + row * pre_row_stride;
    T* o = out + row * features;
    int64_t i = 0;
    for (; i + 16 <= features; i += 16) x86::store16(o + i, gelu_tanh_grad16(x86::load16(g + i), x86::load16(x + i)));
    if (i < features) {  // the row's tail, through a zero-padded vector
      T g_tail[16] = {}, x_tail[16] = {}, o_tail[16];
      std::copy(g + i, g + features, g_tail);
      std::copy(x + i, x + features, x_tail);
      x86::store16(o_tail, gelu_tanh_grad16(x86::load16(g_tail), x86::load16(x_tail)));
      std::copy(o_tail, o_tail + (features - i), o + i);
    }
  }
}

template <typename T>
void run_gelu_tanh_backward(const at::Tensor& grad, const at::Tensor& pre, at::Tensor& out) {
  const int64_t rows = grad.size(0), features = grad.size(1);
  const T* grad_data = grad.const_data_ptr<T>();
  const T* pre_data = pre.const_data_ptr<T>();
  T* out_data = out.mutable_data_ptr<T>();
  const int64_t pre_row_stride = pre.stride(0);
  const int64_t grain_rows = std::max<int64_t>(1, kGrainSize / std::max<int64_t>(1, features));
  at::parallel_for(0, rows, grain_rows, [&](int64_t begin, int64_t end) {
    gelu_tanh_backward_rows(grad_data, pre_data, pre_row_stride, out_data, begin, end, features);
  });
}
#pragma GCC diagnostic pop
#endif

}  // namespace

std::optional<at::Tensor> gelu_tanh_backward(const at::Tensor& grad, const at::Tensor& pre) {
#if AMPKIT_X86_DISPATCH
  const at::ScalarType dtype = grad.scalar_type();
  const bool applies = grad.device().is_cpu() && pre.device().is_cpu() && pre.scalar_type() == dtype &&
                       dtype == at::kBFloat16 && grad.dim() == 2 && pre.dim() == 2 &&
                       grad.sizes() == pre.sizes() && grad.is_contiguous() && (pre.size(1) <= 1 || pre.stride(1) == 1) &&
                       pre.stride(0) >= pre.size(1) && selected_cpu_isa() == CpuIsa::kAvx512;
  if (!applies) return std::nullopt;
  at::Tensor out = at::empty(grad.sizes(), grad.options());
  if (out.numel() == 0) return out;
  run_gelu_tanh_backward<c10::BFloat16>(grad, pre, out);
  return out;
#else
  return std::nullopt;
#endif
}

}  // namespace ampkit::cpu
