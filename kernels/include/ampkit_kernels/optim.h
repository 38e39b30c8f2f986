// Framework-free entry points of ampkit's FP32-master-weight optimizer steps.
//
// One launch (or a few, when the launch table fills up) updates every parameter of a list:
// the gradient (fp32/fp16/bf16, maybe loss-scaled) is read, multiplied by *inv_scale and
// *clip_coef, the FP32 master weight and FP32 state are updated and the model copy is written,
// all in registers. Every scalar that may change per step (lr, inv_scale, clip_coef, found_inf,
// the per-parameter step counters) is read on the device, so the step never waits for the host
// and can be captured in a CUDA graph. When *found_inf != 0 nothing at all is written.
#pragma once

#include "ampkit_kernels/common.h"
#include "ampkit_kernels/optim_math.h"

namespace ampkit_kernels {

// The device-side scalars of one optimizer step. All point at one float on the device;
// found_inf may be null (no skip test).
struct StepScalars {
  const float* lr = nullptr;
  const float* inv_scale = nullptr;
  const float* clip_coef = nullptr;
  const float* found_inf = nullptr;
};

// tensors.lists = {params, masters, grads, momentum_buffers, steps}; numels are the params'.
// masters[t] may be null: then params[t] itself is read and written (no separate master).
// momentum_buffers[t] may be null only when momentum == 0. steps[t] points at one float, the
// number of steps taken so far; it is read here and advanced afterwards unless *found_inf != 0.
Result master_sgd_step(const TensorLists& tensors, DType param_dtype, DType grad_dtype, const StepScalars& scalars,
                       const SgdHyper& hyper, cudaStream_t stream);

// tensors.lists = {params, masters, grads, exp_avgs, exp_avg_sqs, steps}; as above.
Result master_adam_step(const TensorLists& tensors, DType param_dtype, DType grad_dtype, const StepScalars& scalars,
                        const AdamHyper& hyper, cudaStream_t stream);

}  // namespace ampkit_kernels
