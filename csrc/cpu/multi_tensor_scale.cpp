#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <atomic>

#include "cpu/cpu_loops.h"
#include "ops/multi_tensor_scale.h"

namespace ampkit::cpu {
namespace {

template <typename In, typename Out>
bool scale_one_tensor(const at::Tensor& input, const at::Tensor& output, float factor) {
  const In* in = input.const_data_ptr<In>();
  Out* out = output.mutable_data_ptr<Out>();
  std::atomic<bool> found{false};
  parallel_chunks(input.numel(), [&](int64_t begin, int64_t end) {
    bool non_finite = false;
    for (int64_t i = begin; i < end; ++i) {
      const float value = static_cast<float>(in[i]);
      non_finite |= is_non_finite(value);
      out[i] = static_cast<Out>(value * factor);
    }
    if (non_finite) found.store(true, std::memory_order_relaxed);
  });
  return found.load();
}

void multi_tensor_scale_cpu(at::TensorList inputs, at::TensorList outputs, const at::Tensor& scale,
                            const at::Tensor& found_inf) {
  detail::check_multi_tensor_scale_args(inputs, outputs, scale, found_inf);
  const float factor = *scale.const_data_ptr<float>();
  bool any_non_finite = false;
  for (size_t t = 0; t < inputs.size(); ++t) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs[t].scalar_type(), "multi_tensor_scale_cpu", [&] {
      using In = scalar_t;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, outputs[t].scalar_type(), "multi_tensor_scale_cpu",
                                      [&] { any_non_finite |= scale_one_tensor<In, scalar_t>(inputs[t], outputs[t], factor); });
    });
  }
  if (any_non_finite) *found_inf.mutable_data_ptr<float>() = 1.0f;
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, CPU, m) { m.impl("multi_tensor_scale_", &multi_tensor_scale_cpu); }

}  // namespace ampkit::cpu
