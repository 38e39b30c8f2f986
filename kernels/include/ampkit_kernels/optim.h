// Framework-free entry points of ampkit's master-weight optimizer steps.
//
// One launch (or a few, when the launch table fills up) updates every parameter of a list:
// the gradient (maybe loss-scaled) is read, multiplied by *inv_scale and *clip_coef, the master
// weight and the state are updated and the model copy is written, all in registers. fp32, fp16 and
// bf16 parameters compute in float with FP32 masters and state; fp64 parameters compute in double
// with float64 state and fp64 gradients, and are their own masters. Every scalar that may change
// per step (lr, inv_scale, clip_coef, found_inf, the per-parameter step counters) is read on the
// device, so the step never waits for the host and can be captured in a CUDA graph. When
// *found_inf != 0 nothing at all is written, except the gradients when write_back_grads asks for
// them (see StepScalars).
#pragma once

#include "ampkit_kernels/common.h"
#include "ampkit_kernels/optim_math.h"

namespace ampkit_kernels {

// The device-side scalars of one optimizer step. Each points at one value on the device;
// found_inf may be null (no skip test). lr is a float, or a double through lr_fp64 for fp64
// parameters (torch's lr is a Python float, which a float would round); exactly one of them is set.
struct StepScalars {
  const float* lr = nullptr;
  const double* lr_fp64 = nullptr;
  const float* inv_scale = nullptr;
  const float* clip_coef = nullptr;
  const float* found_inf = nullptr;
  // Also store grad * inv_scale * clip_coef (rounded to the gradient's dtype) back into the
  // gradients, in the same pass, whether or not the step is skipped: the gradients torch leaves
  // after GradScaler.unscale_ (+ a clip). Off for plain steps, which then never write a gradient.
  bool write_back_grads = false;
};

// tensors.lists = {params, masters, grads, momentum_buffers, steps}; numels are the params'.
// masters[t] may be null: then params[t] itself is read and written (no separate master); fp64
// params have none. momentum_buffers[t] may be null only when momentum == 0. steps[t] points at one
// float, the number of steps taken so far; it is read here and advanced afterwards unless
// *found_inf != 0. param_dtype Float64 takes grad_dtype Float64 and float64 state.
Result master_sgd_step(const TensorLists& tensors, DType param_dtype, DType grad_dtype, const StepScalars& scalars,
                       const SgdHyper& hyper, cudaStream_t stream);

// tensors.lists = {params, masters, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps}; as
// above. max_exp_avg_sqs[t] is read and written only when hyper.amsgrad (null otherwise).
Result master_adam_step(const TensorLists& tensors, DType param_dtype, DType grad_dtype, const StepScalars& scalars,
                        const AdamHyper& hyper, cudaStream_t stream);

}  // namespace ampkit_kernels
