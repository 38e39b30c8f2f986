// The schema of every torch.ops.ampkit.* op, in one place. Device kernels are registered next
// to their implementations (cpu/, cuda/, ops/meta.cpp).
#include <torch/library.h>

TORCH_LIBRARY(ampkit, m) {
  // outputs[i] = inputs[i] * scale (in fp32, rounded to the outputs' dtype); found_inf is set to
  // 1.0 when any input element is inf/NaN (never cleared here). inputs and outputs may be the
  // same tensors. scale and found_inf are one-element float32 tensors on the tensors' device.
  m.def("multi_tensor_scale_(Tensor[] inputs, Tensor(a!)[] outputs, Tensor scale, Tensor(b!) found_inf) -> ()");
}

// ---- FP32-master-weight optimizers (issue 4) ----
// One pass per step over every parameter: grad (fp32/fp16/bf16, maybe loss-scaled) * inv_scale *
// clip_coef updates the FP32 master (or the fp32 param itself when master_params is empty) and
// the FP32 state, and the model copy `params` is written in the same pass. steps[i] (one-element
// float32, the steps taken so far) is advanced. lr, inv_scale, clip_coef, found_inf and steps
// are one-element float32 tensors on the params' device, so nothing is read on the host. When
// found_inf is given and nonzero NOTHING is written, the step counters included.
// Formulas and defaults: torch.optim.SGD / Adam (decoupled_weight_decay=False) / AdamW (True).
TORCH_LIBRARY_FRAGMENT(ampkit, m) {
  m.def("master_sgd_step_(Tensor(a!)[] params, Tensor(b!)[] master_params, Tensor[] grads, "
        "Tensor(c!)[] momentum_buffers, Tensor(d!)[] steps, Tensor lr, Tensor inv_scale, Tensor clip_coef, "
        "Tensor? found_inf, float momentum, float dampening, float weight_decay, bool nesterov, bool maximize) -> ()");
  m.def("master_adam_step_(Tensor(a!)[] params, Tensor(b!)[] master_params, Tensor[] grads, "
        "Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] steps, Tensor lr, Tensor inv_scale, "
        "Tensor clip_coef, Tensor? found_inf, float beta1, float beta2, float eps, float weight_decay, "
        "bool decoupled_weight_decay, bool maximize) -> ()");
}
