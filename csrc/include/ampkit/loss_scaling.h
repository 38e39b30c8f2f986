// C++ entry points of the dynamic loss-scaling ops. Each call goes through the PyTorch
// dispatcher, so the CPU/CUDA/Meta kernel is chosen by the tensors' device.
#pragma once

#include <ATen/core/Tensor.h>

#include <limits>
#include <optional>

namespace ampkit {

// grads[i] *= inv_scale in place, in one pass; found_inf becomes 1 if any element is inf/NaN
// (never cleared). grads may mix float32/float16/bfloat16/float64 and be non-contiguous; float64
// grads are unscaled and checked in double, as torch does (other dtypes: fp32 math, one rounding).
// norm_out, when given, receives the global L2 norm of the unscaled grads (squares summed in
// double). found_inf, inv_scale and norm_out: one-element float32 tensors on the grads' device.
void unscale_and_check_(at::TensorList grads, const at::Tensor& found_inf, const at::Tensor& inv_scale,
                        const std::optional<at::Tensor>& norm_out = std::nullopt);

// The float32 inv_scale for a loss scale: 1 / scale taken in double and rounded once, as
// torch.amp.GradScaler computes it, so every unscale (the scaler's, an optimizer's) gets torch's
// bits. scale: a one-element floating-point tensor; the result has its shape and device.
at::Tensor reciprocal_scale(const at::Tensor& scale);

// Updates scale from found_inf on the device: back off (after `hysteresis` consecutive overflow
// steps) or grow (after growth_interval clean steps), within [min_scale, max_scale].
// growth_tracker and hysteresis_tracker are one-element int32 tensors.
void update_scale_(const at::Tensor& scale, const at::Tensor& growth_tracker, const at::Tensor& hysteresis_tracker,
                   const at::Tensor& found_inf, double growth_factor, double backoff_factor, int64_t growth_interval,
                   int64_t hysteresis = 1, double min_scale = 0.0,
                   double max_scale = std::numeric_limits<double>::infinity());

}  // namespace ampkit
