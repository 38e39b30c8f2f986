// The fp32 reference maths of fused_linear and fused_mlp (what and why: ops/linear_fp32.h).
#include "ops/linear_fp32.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/threshold_backward.h>

#include "cpu/gelu.h"

namespace ampkit::detail {
namespace {

// No copy for a tensor that is fp32 already.
at::Tensor widen(const at::Tensor& tensor) { return tensor.to(at::kFloat); }

}  // namespace

at::Tensor linear_fp32(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  if (bias.has_value() && bias->defined()) return at::addmm(widen(*bias), widen(x), widen(weight).t());
  return at::mm(widen(x), widen(weight).t());
}

at::Tensor linear_input_grad_fp32(const at::Tensor& grad_pre, const at::Tensor& weight) {
  return at::mm(widen(grad_pre), widen(weight));
}

at::Tensor linear_weight_grad_fp32(const at::Tensor& grad_pre, const at::Tensor& x) {
  return at::mm(widen(grad_pre).t(), widen(x));
}

at::Tensor apply_activation(const at::Tensor& pre, Activation activation) {
  switch (activation) {
    case Activation::Relu: return at::relu(pre);
    case Activation::Gelu: return at::gelu(pre, "tanh");
    case Activation::None: return pre;
  }
  return pre;
}

at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& saved, Activation activation, int64_t rows,
                               int64_t out_features) {
  const at::ScalarType dtype = grad.scalar_type();
  switch (activation) {
    case Activation::Gelu: {
      const at::Tensor pre = saved.narrow(1, 0, out_features).to(dtype);
      if (std::optional<at::Tensor> fast = cpu::gelu_tanh_backward(grad, pre)) return *fast;
      return at::gelu_backward(grad, pre, "tanh");
    }
    case Activation::Relu: return at::threshold_backward(grad, saved.reshape({rows, out_features}).to(dtype), 0);
    case Activation::None: return grad;
  }
  return grad;
}

at::Tensor fused_linear_fp32(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             Activation activation, const LinearShape& shape) {
  const at::Tensor pre = linear_fp32(input.reshape({shape.rows, shape.in_features}), weight, bias);
  return apply_activation(pre, activation).to(input.scalar_type()).reshape(shape.output_sizes);
}

std::tuple<at::Tensor, at::Tensor> fused_linear_forward_fp32(const at::Tensor& input, const at::Tensor& weight,
                                                             const std::optional<at::Tensor>& bias,
                                                             Activation activation, const LinearShape& shape) {
  const at::Tensor pre = linear_fp32(input.reshape({shape.rows, shape.in_features}), weight, bias);
  at::Tensor saved = empty_saved(activation, shape, input.options());
  if (activation == Activation::Gelu) {
    // Stored in the input dtype, as the CUDA path's GELU_AUX epilogue stores it; padding is zeroed
    // so the tensor never holds uninitialised memory.
    saved.narrow(1, shape.out_features, saved.size(1) - shape.out_features).zero_();
    saved.narrow(1, 0, shape.out_features).copy_(pre);
  }
  at::Tensor output = apply_activation(pre, activation).to(input.scalar_type()).reshape(shape.output_sizes);
  return {output, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_backward_fp32(const at::Tensor& grad_output,
                                                                          const at::Tensor& input,
                                                                          const at::Tensor& weight,
                                                                          const at::Tensor& saved,
                                                                          Activation activation,
                                                                          const LinearShape& shape) {
  const at::ScalarType dtype = input.scalar_type();
  const at::Tensor grad = widen(grad_output.reshape({shape.rows, shape.out_features}));
  const at::Tensor grad_pre = activation_backward(grad, saved, activation, shape.rows, shape.out_features);
  const at::Tensor x = input.reshape({shape.rows, shape.in_features});
  at::Tensor grad_input = linear_input_grad_fp32(grad_pre, weight).to(dtype).reshape(input.sizes());
  at::Tensor grad_weight = linear_weight_grad_fp32(grad_pre, x).to(dtype);
  at::Tensor grad_bias = at::sum(grad_pre, {0}).to(dtype);
  return {grad_input, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_mlp_forward_fp32(const at::Tensor& input, const at::Tensor& weight1,
                                                                      const std::optional<at::Tensor>& bias1,
                                                                      const at::Tensor& weight2,
                                                                      const std::optional<at::Tensor>& bias2,
                                                                      const MlpShape& shape) {
  const at::ScalarType dtype = input.scalar_type();
  const int64_t hidden_features = shape.first.out_features;
  const at::Tensor pre32 = linear_fp32(input.reshape({shape.first.rows, shape.first.in_features}), weight1, bias1);
  at::Tensor pre = empty_saved(Activation::Gelu, shape.first, input.options());
  pre.narrow(1, hidden_features, pre.size(1) - hidden_features).zero_();
  pre.narrow(1, 0, hidden_features).copy_(pre32);
  at::Tensor hidden = apply_activation(pre32, Activation::Gelu).to(dtype);
  at::Tensor output = linear_fp32(hidden, weight2, bias2).to(dtype).reshape(shape.second.output_sizes);
  return {output, hidden, pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_mlp_backward_fp32(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight1, const at::Tensor& weight2,
    const at::Tensor& hidden, const at::Tensor& pre, const MlpShape& shape) {
  const at::ScalarType dtype = input.scalar_type();
  const int64_t rows = shape.first.rows, hidden_features = shape.first.out_features;
  const at::Tensor grad = widen(grad_output.reshape({rows, shape.second.out_features}));
  const at::Tensor x = input.reshape({rows, shape.first.in_features});
  at::Tensor grad_weight2 = linear_weight_grad_fp32(grad, hidden).to(dtype);
  at::Tensor grad_bias2 = at::sum(grad, {0}).to(dtype);
  const at::Tensor grad_pre =
      activation_backward(linear_input_grad_fp32(grad, weight2), pre, Activation::Gelu, rows, hidden_features);
  at::Tensor grad_bias1 = at::sum(grad_pre, {0}).to(dtype);
  at::Tensor grad_input = linear_input_grad_fp32(grad_pre, weight1).to(dtype).reshape(input.sizes());
  at::Tensor grad_weight1 = linear_weight_grad_fp32(grad_pre, x).to(dtype);
  return {grad_input, grad_weight1, grad_bias1, grad_weight2, grad_bias2};
}

}  // namespace ampkit::detail
