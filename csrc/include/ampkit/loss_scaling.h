// C++ entry points of the dynamic loss-scaling ops. Each call goes through the PyTorch
// dispatcher, so the CPU/CUDA/Meta kernel is chosen by the tensors' device.
#pragma once

#include <ATen/core/Tensor.h>

#include <limits>
#include <optional>

namespace ampkit {

// grads[i] *= inv_scale in place, in one pass; found_inf becomes 1 if any element is inf/NaN
// (never cleared). grads may mix float32/float16/bfloat16 and be non-contiguous. norm_out, when
// given, receives the global L2 norm of the unscaled grads. found_inf, inv_scale and norm_out:
// one-element float32 tensors on the grads' device.
void unscale_and_check_(at::TensorList grads, const at::Tensor& found_inf, const at::Tensor& inv_scale,
                        const std::optional<at::Tensor>& norm_out = std::nullopt);

// Updates scale from found_inf on the device: back off (after `hysteresis` consecutive overflow
// steps) or grow (after growth_interval clean steps), within [min_scale, max_scale].
// growth_tracker and hysteresis_tracker are one-element int32 tensors.
void update_scale_(const at::Tensor& scale, const at::Tensor& growth_tracker, const at::Tensor& hysteresis_tracker,
                   const at::Tensor& found_inf, double growth_factor, double backoff_factor, int64_t growth_interval,
                   int64_t hysteresis = 1, double min_scale = 0.0,
                   double max_scale = std::numeric_limits<double>::infinity());

}  // namespace ampkit
