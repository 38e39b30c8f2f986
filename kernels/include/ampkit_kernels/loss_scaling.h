// Framework-free entry points of dynamic loss scaling: the fused unscale + non-finite check (+
// optional L2 norm) and the device-side scale update. Pointers are device pointers; every
// entry point enqueues on `stream` and returns the launch status; none synchronises.
#pragma once

#include <cstdint>
#include <vector>

#include "ampkit_kernels/common.h"
#include "ampkit_kernels/scale_math.h"

namespace ampkit_kernels {

// How many double partials unscale_and_check needs for tensors of these sizes (one per chunk).
int64_t unscale_norm_partial_count(const std::vector<int64_t>& numels);

// tensors.lists = {grads} (one dtype, flat runs of numels[t] elements). grads[t][i] *= *inv_scale
// (fp32 math, one rounding; no store at all when *inv_scale == 1). *found_inf = 1.0f if any
// element is inf/NaN (never cleared). When norm_partials is not null it receives, for each chunk,
// the sum of squares of the unscaled values, accumulated in double (exact squares: no overflow or
// underflow for any float): unscale_norm_partial_count(numels) doubles.
Result unscale_and_check(const TensorLists& tensors, DType dtype, const float* inv_scale, float* found_inf,
                         double* norm_partials, cudaStream_t stream);

// *norm_out = sqrt(sum of partials[0..count)), summed in double in a fixed order (deterministic).
Result finish_norm(const double* partials, int64_t count, float* norm_out, cudaStream_t stream);

// One-thread kernel: scale_math::update_scale_state, the rule the CPU kernel runs too.
Result update_scale(float* scale, int* growth_tracker, int* hysteresis_tracker, const float* found_inf,
                    const ScaleUpdateConfig& config, cudaStream_t stream);

}  // namespace ampkit_kernels
