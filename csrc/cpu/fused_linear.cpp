// fused_linear on the CPU: fp16/bf16 inputs are widened to fp32, multiplied by ATen's fp32 GEMM
// (MKL/OpenBLAS sgemm, multi-threaded: fp32 accumulation), the bias and activation are applied in
// fp32, and the result is rounded once to the input dtype. The same numerics the cuBLASLt path
// has (fp32 accumulate, fp32 epilogue, one rounding), so CPU results are a faithful stand-in.
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/threshold_backward.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "ops/fused_linear.h"

namespace ampkit::cpu {
namespace {

using detail::Activation;
using detail::LinearShape;

at::Tensor widen(const at::Tensor& tensor) { return tensor.to(at::kFloat); }

// input @ weight.T + bias in fp32: [rows, out_features].
at::Tensor pre_activation_fp32(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const LinearShape& shape) {
  const at::Tensor x = widen(input.reshape({shape.rows, shape.in_features}));
  const at::Tensor w = widen(weight);
  if (bias.has_value() && bias->defined()) return at::addmm(widen(*bias), x, w.t());
  return at::mm(x, w.t());
}

at::Tensor apply_activation(const at::Tensor& pre, Activation activation) {
  switch (activation) {
    case Activation::Relu: return at::relu(pre);
    case Activation::Gelu: return at::gelu(pre, "tanh");
    case Activation::None: return pre;
  }
  return pre;
}

at::Tensor fused_linear_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            c10::string_view activation) {
  const Activation act = detail::parse_activation(detail::kFusedLinearOp, activation);
  const LinearShape shape = detail::check_fused_linear_args(detail::kFusedLinearOp, input, weight, bias);
  const at::Tensor pre = pre_activation_fp32(input, weight, bias, shape);
  return apply_activation(pre, act).to(input.scalar_type()).reshape(shape.output_sizes);
}

std::tuple<at::Tensor, at::Tensor> fused_linear_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                                                            const std::optional<at::Tensor>& bias,
                                                            c10::string_view activation) {
  const Activation act = detail::parse_activation(detail::kFusedLinearForwardOp, activation);
  const LinearShape shape = detail::check_fused_linear_args(detail::kFusedLinearForwardOp, input, weight, bias);
  const at::Tensor pre = pre_activation_fp32(input, weight, bias, shape);
  at::Tensor saved = detail::empty_saved(act, shape, input.options());
  if (act == Activation::Gelu) {
    // Stored in the input dtype, as the CUDA path's GELU_AUX epilogue stores it; padding is zeroed
    // so the tensor never holds uninitialised memory.
    saved.narrow(1, shape.out_features, saved.size(1) - shape.out_features).zero_();
    saved.narrow(1, 0, shape.out_features).copy_(pre);
  }
  at::Tensor output = apply_activation(pre, act).to(input.scalar_type()).reshape(shape.output_sizes);
  return {output, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_backward_cpu(const at::Tensor& grad_output,
                                                                         const at::Tensor& input,
                                                                         const at::Tensor& weight,
                                                                         const at::Tensor& saved,
                                                                         c10::string_view activation) {
  const Activation act = detail::parse_activation(detail::kFusedLinearBackwardOp, activation);
  const LinearShape shape = detail::check_fused_linear_backward_args(grad_output, input, weight, saved, act);
  const at::ScalarType dtype = input.scalar_type();
  const at::Tensor grad = widen(grad_output.reshape({shape.rows, shape.out_features}));
  // Gradient at the pre-activation, in fp32.
  at::Tensor grad_pre;
  switch (act) {
    case Activation::Gelu:
      grad_pre = at::gelu_backward(grad, widen(saved.narrow(1, 0, shape.out_features)), "tanh");
      break;
    case Activation::Relu:
      grad_pre = at::threshold_backward(grad, widen(saved.reshape({shape.rows, shape.out_features})), 0);
      break;
    case Activation::None: grad_pre = grad; break;
  }
  const at::Tensor x = widen(input.reshape({shape.rows, shape.in_features}));
  const at::Tensor w = widen(weight);
  at::Tensor grad_input = at::mm(grad_pre, w).to(dtype).reshape(input.sizes());
  at::Tensor grad_weight = at::mm(grad_pre.t(), x).to(dtype);
  at::Tensor grad_bias = at::sum(grad_pre, {0}).to(dtype);
  return {grad_input, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_mlp_forward_cpu(const at::Tensor& input, const at::Tensor& weight1,
                                                                     const std::optional<at::Tensor>& bias1,
                                                                     const at::Tensor& weight2,
                                                                     const std::optional<at::Tensor>& bias2) {
  const auto shape = detail::check_fused_mlp_args(detail::kFusedMlpForwardOp, input, weight1, bias1, weight2, bias2);
  return detail::fused_mlp_forward_fp32(input, weight1, bias1, weight2, bias2, shape);
}

at::Tensor fused_mlp_cpu(const at::Tensor& input, const at::Tensor& weight1, const std::optional<at::Tensor>& bias1,
                         const at::Tensor& weight2, const std::optional<at::Tensor>& bias2) {
  const auto shape = detail::check_fused_mlp_args(detail::kFusedMlpOp, input, weight1, bias1, weight2, bias2);
  return std::get<0>(detail::fused_mlp_forward_fp32(input, weight1, bias1, weight2, bias2, shape));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_mlp_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight1, const at::Tensor& weight2,
    const at::Tensor& hidden, const at::Tensor& pre) {
  const auto shape = detail::check_fused_mlp_backward_args(grad_output, input, weight1, weight2, hidden, pre);
  return detail::fused_mlp_backward_fp32(grad_output, input, weight1, weight2, hidden, pre, shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, CPU, m) {
  m.impl("fused_mlp", &fused_mlp_cpu);
  m.impl("fused_mlp_forward", &fused_mlp_forward_cpu);
  m.impl("fused_mlp_backward", &fused_mlp_backward_cpu);
  m.impl("fused_linear", &fused_linear_cpu);
  m.impl("fused_linear_forward", &fused_linear_forward_cpu);
  m.impl("fused_linear_backward", &fused_linear_backward_cpu);
}

}  // namespace ampkit::cpu
