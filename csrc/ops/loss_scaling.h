// Argument checks of the dynamic loss-scaling ops (unscale_and_check_, update_scale_), shared by
// their CPU, CUDA and Meta kernels. reciprocal_scale has one composite kernel (loss_scaling.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "ampkit/contracts.h"
#include "ampkit_kernels/scale_math.h"
#include "ops/validation.h"  // is_flat_in_memory, used by the kernels of these ops

namespace ampkit::detail {

constexpr const char* kUnscaleAndCheckOp = "ampkit.unscale_and_check_";
constexpr const char* kUpdateScaleOp = "ampkit.update_scale_";
constexpr const char* kReciprocalScaleOp = "ampkit.reciprocal_scale";

// The gradient dtypes unscale_and_check_ takes, for every device and both GradScalers (one home):
// fp32, fp16, bf16 (fp32 arithmetic, one rounding back) and fp64, which torch's scaler accepts and
// unscales in double (a double grad times the float inv_scale); fp64 is also checked for inf/NaN
// and summed into the norm in double. Anything else (integer, complex, float8) is refused, as torch
// refuses it.
bool is_unscalable_grad_dtype(at::ScalarType dtype);
inline constexpr DtypeRule kUnscalableGradDtypes{is_unscalable_grad_dtype, kFloatsAndFloat64.names};

// Returns the device every argument is on (grads[0]'s, or found_inf's for an empty list).
c10::Device check_unscale_and_check_args(at::TensorList grads, const at::Tensor& found_inf,
                                         const at::Tensor& inv_scale, const std::optional<at::Tensor>& norm_out);

// update_scale_'s options; their contract is ampkit/contracts.h's (one home for the scaler's rules).
using UpdateScaleConfig = contracts::LossScaleOptions;

// Returns the device of scale (every tensor argument is on it).
c10::Device check_update_scale_args(const at::Tensor& scale, const at::Tensor& growth_tracker,
                                    const at::Tensor& hysteresis_tracker, const at::Tensor& found_inf,
                                    const UpdateScaleConfig& config);

// The options as the CPU and CUDA kernels take them (scale_math.h). Only after
// check_update_scale_args, which bounds growth_interval and hysteresis to int32.
inline ampkit_kernels::ScaleUpdateConfig scale_update_config(const UpdateScaleConfig& options) {
  return {options.growth_factor,
          options.backoff_factor,
          static_cast<int>(options.growth_interval),
          static_cast<int>(options.hysteresis),
          options.min_scale,
          options.max_scale};
}

}  // namespace ampkit::detail
