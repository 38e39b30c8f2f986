// The schema of every torch.ops.ampkit.* op, in one place. Device kernels are registered next
// to their implementations: cpu/ and cuda/, and the Meta (and sparse) kernels next to each op's
// argument checks in ops/ (registration.h).
#include <torch/library.h>

TORCH_LIBRARY(ampkit, m) {
  // outputs[i] = inputs[i] * scale (in fp32, rounded to the outputs' dtype); found_inf is set to
  // 1.0 when any input element is inf/NaN (never cleared here). inputs and outputs may be the
  // same tensors. scale and found_inf are one-element float32 tensors on the tensors' device.
  m.def("multi_tensor_scale_(Tensor[] inputs, Tensor(a!)[] outputs, Tensor scale, Tensor(b!) found_inf) -> ()");

  // ---- dynamic loss scaling (GradScaler) ----
  // grads[i] *= inv_scale in place (fp32 math, one rounding to each grad's dtype; grads may mix
  // fp32/fp16/bf16 and be non-contiguous); found_inf is set to 1.0 when any element is inf/NaN
  // (never cleared here). When inv_scale is exactly 1 the grads are only checked, not written.
  // norm_out, when given, receives the global L2 norm of the unscaled grads from the same pass.
  m.def("unscale_and_check_(Tensor(a!)[] grads, Tensor(b!) found_inf, Tensor inv_scale, Tensor(c!)? norm_out=None) -> ()");
  // The float32 inv_scale of a loss scale: 1 / scale in double, rounded once (torch.amp.GradScaler's
  // rule), for the scaler's unscale and for the optimizers' grad_scale alike. Composite: a
  // one-element float tensor in, one of its shape out, on its device.
  m.def("reciprocal_scale(Tensor scale) -> Tensor", {at::Tag::pt2_compliant_tag});
  // Device-side loss-scale update from found_inf; with hysteresis=1 and no bounds it is
  // torch._amp_update_scale_ bit for bit. Never reads a value back to the host. The schema
  // language has no `inf` literal: the max_scale default is the largest float32, i.e. no bound.
  m.def("update_scale_(Tensor(a!) scale, Tensor(b!) growth_tracker, Tensor(c!) hysteresis_tracker, Tensor found_inf, "
        "float growth_factor, float backoff_factor, int growth_interval, int hysteresis=1, float min_scale=0., "
        "float max_scale=3.4028234663852886e+38) -> ()");
}

// ---- master-weight optimizers ----
// One pass per step over every parameter: grad (fp32/fp16/bf16, maybe loss-scaled) * inv_scale *
// clip_coef updates the FP32 master (or the fp32 param itself when master_params is empty) and
// the FP32 state, and the model copy `params` is written in the same pass. float64 params (with
// float64 grads, float64 state, no masters) are updated in double, as torch does. steps[i]
// (one-element float32, the steps taken so far) is advanced. lr (float32; float64 allowed for
// float64 params), inv_scale, clip_coef, found_inf and steps are one-element float32 tensors on the
// params' device, so nothing is read on the host. When found_inf is given and nonzero NOTHING is
// written, the step counters included, except the grads with write_back_grads.
// write_back_grads: grads[i] = grad * inv_scale * clip_coef (rounded to its dtype), in the same
// pass and also on a skipped step, i.e. the gradients torch's GradScaler.unscale_ (+ a clip) leaves.
// max_exp_avg_sqs: empty (Adam) or one per param (amsgrad: torch's running max of exp_avg_sq).
// Formulas and defaults: torch.optim.SGD / Adam (decoupled_weight_decay=False) / AdamW (True).
TORCH_LIBRARY_FRAGMENT(ampkit, m) {
  m.def("master_sgd_step_(Tensor(a!)[] params, Tensor(b!)[] master_params, Tensor(c!)[] grads, "
        "Tensor(d!)[] momentum_buffers, Tensor(e!)[] steps, Tensor lr, Tensor inv_scale, Tensor clip_coef, "
        "Tensor? found_inf, float momentum, float dampening, float weight_decay, bool nesterov, bool maximize, "
        "bool write_back_grads=False) -> ()");
  m.def("master_adam_step_(Tensor(a!)[] params, Tensor(b!)[] master_params, Tensor(c!)[] grads, "
        "Tensor(d!)[] exp_avgs, Tensor(e!)[] exp_avg_sqs, Tensor(f!)[] max_exp_avg_sqs, Tensor(g!)[] steps, "
        "Tensor lr, Tensor inv_scale, Tensor clip_coef, Tensor? found_inf, float beta1, float beta2, float eps, "
        "float weight_decay, bool decoupled_weight_decay, bool maximize, bool write_back_grads=False) -> ()");
  // ---- fused linear (cuBLASLt GEMM, fp32 accumulation, bias/activation epilogues); ops/fused_linear.h ----
  // output = activation(input @ weight.T + bias); activation: "none" | "relu" | "gelu" (tanh approximation).
  // pt2_compliant: the three pass torch.library.opcheck (tests/python/test_fused_linear.py).
  m.def("fused_linear(Tensor input, Tensor weight, Tensor? bias=None, str activation=\"none\") -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // The same, also returning what the backward needs (the GELU input; empty otherwise).
  m.def("fused_linear_forward(Tensor input, Tensor weight, Tensor? bias, str activation) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  // Gradients of fused_linear; saved: fused_linear_forward's second output ("gelu"), the output ("relu").
  m.def("fused_linear_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor saved, str activation) -> "
        "(Tensor, Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  // Linear -> GELU (tanh) -> Linear; the backward takes the GELU gradient and bias1's gradient out of
  // the second layer's data-gradient GEMM (cuBLASLt DGELU_BGRAD). ops/fused_linear.h.
  m.def("fused_mlp(Tensor input, Tensor weight1, Tensor? bias1, Tensor weight2, Tensor? bias2) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // (output, hidden, pre): hidden = the GELU output, pre = its input (padded to a multiple of 8 columns).
  m.def("fused_mlp_forward(Tensor input, Tensor weight1, Tensor? bias1, Tensor weight2, Tensor? bias2) -> "
        "(Tensor, Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  // -> (grad_input, grad_weight1, grad_bias1, grad_weight2, grad_bias2)
  m.def("fused_mlp_backward(Tensor grad_output, Tensor input, Tensor weight1, Tensor weight2, Tensor hidden, "
        "Tensor pre) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
}
