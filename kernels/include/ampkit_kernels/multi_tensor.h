// Framework-free entry points of ampkit's multi-tensor list operations.
// Pointers are device pointers; `scale`/`found_inf` point at one float on the device, so no
// value ever has to be read back to the host. Every entry point enqueues on `stream` and
// returns the launch status; none synchronises.
#pragma once

#include "ampkit_kernels/common.h"

namespace ampkit_kernels {

// tensors.lists = {inputs, outputs}. outputs[t][i] = inputs[t][i] * (*scale), computed in fp32
// and rounded to out_dtype. If any input element is inf or NaN, *found_inf is set to 1.0f
// (never cleared: the caller zeroes it at the start of a step). Inputs and outputs may alias.
Result multi_tensor_scale(const TensorLists& tensors, DType in_dtype, DType out_dtype,
                          const float* scale, float* found_inf, cudaStream_t stream);

}  // namespace ampkit_kernels
