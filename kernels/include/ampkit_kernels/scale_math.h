// The dynamic loss-scale update rule of ampkit.update_scale_, written once for the CPU kernel
// (update_scale_cpu, csrc/cpu/loss_scaling.cpp) and the one-thread CUDA kernel
// (update_scale_kernel, kernels/src/loss_scaling.cu).
//
// With hysteresis = 1 and no bounds it is torch._amp_update_scale_: the scale times a factor in
// double, rounded once to float. Plain C++ (no CUDA or ATen headers), so the CPU-only build
// includes it.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "ampkit_kernels/host_device.h"

namespace ampkit_kernels {

// Arguments of update_scale_, already validated by the op (csrc/ops/loss_scaling.cpp): growth_factor
// > 1, backoff_factor in (0, 1), growth_interval and hysteresis >= 1.
struct ScaleUpdateConfig {
  double growth_factor;
  double backoff_factor;
  int growth_interval;
  int hysteresis;
  double min_scale;  // 0: no lower bound
  double max_scale;  // >= FLT_MAX: no upper bound
};

namespace scale_math {

// One step of the rule. `scale`, `growth_tracker` (clean steps since the last change) and
// `hysteresis_tracker` (consecutive overflow steps) are read and updated in place; `found_inf`
// says whether this step's gradients had an inf/NaN. The scale is written only when it changes.
AMPKIT_HOST_DEVICE void update_scale_state(float& scale, int32_t& growth_tracker, int32_t& hysteresis_tracker,
                                           bool found_inf, const ScaleUpdateConfig& config) {
  const float current = scale;
  // Bounds at or beyond float32's range are no bounds: that keeps the default (max_scale =
  // FLT_MAX, min_scale = 0) identical to torch._amp_update_scale_, which never clamps.
  const bool has_max = config.max_scale < static_cast<double>(FLT_MAX);
  const bool has_min = config.min_scale > 0.0;
  if (found_inf) {
    growth_tracker = 0;
    // Consecutive overflow steps so far, saturating at `hysteresis`.
    const int32_t saturated = config.hysteresis - 1;
    const int32_t overflows = (hysteresis_tracker < saturated ? hysteresis_tracker : saturated) + 1;
    hysteresis_tracker = overflows;
    if (overflows >= config.hysteresis) {
      // The product in double, rounded once to float: what torch does.
      double backed_off = static_cast<double>(current) * config.backoff_factor;
      if (has_min && backed_off < config.min_scale) backed_off = config.min_scale;
      const float next = static_cast<float>(backed_off);
      // After ~150 back-offs in a row the product underflows to 0: keep the last positive scale.
      if (next > 0.0f) scale = next;
    }
  } else {
    hysteresis_tracker = 0;
    const int32_t successful = growth_tracker + 1;
    // >= rather than ==: a tracker loaded from a run with a longer interval still grows.
    if (successful >= config.growth_interval) {
      double grown = static_cast<double>(current) * config.growth_factor;
      if (has_max && grown > config.max_scale) grown = config.max_scale;
      const float next = static_cast<float>(grown);
      // Never grow past float32's range to inf.
      if (std::isfinite(next)) scale = next;
      growth_tracker = 0;
    } else {
      growth_tracker = successful;
    }
  }
}

}  // namespace scale_math
}  // namespace ampkit_kernels
