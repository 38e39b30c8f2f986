// The schema of every torch.ops.ampkit.* op, in one place. Device kernels are registered next
// to their implementations (cpu/, cuda/, ops/meta.cpp).
#include <torch/library.h>

TORCH_LIBRARY(ampkit, m) {
  // outputs[i] = inputs[i] * scale (in fp32, rounded to the outputs' dtype); found_inf is set to
  // 1.0 when any input element is inf/NaN (never cleared here). inputs and outputs may be the
  // same tensors. scale and found_inf are one-element float32 tensors on the tensors' device.
  m.def("multi_tensor_scale_(Tensor[] inputs, Tensor(a!)[] outputs, Tensor scale, Tensor(b!) found_inf) -> ()");

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
