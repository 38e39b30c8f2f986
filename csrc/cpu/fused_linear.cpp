// fused_linear / fused_mlp on the CPU: the fp32 reference maths of ops/linear_fp32.h. fp16/bf16
// inputs are widened to fp32, multiplied by ATen's fp32 GEMM (MKL/OpenBLAS sgemm, multi-threaded:
// fp32 accumulation), the bias and activation are applied in fp32, and the result is rounded once
// to the input dtype. The same numerics the cuBLASLt path has (fp32 accumulate, fp32 epilogue, one
// rounding), so CPU results are a faithful stand-in.
#include <torch/library.h>

#include "ops/fused_linear.h"
#include "ops/linear_fp32.h"

namespace ampkit::cpu {
namespace {

using detail::Activation;
using detail::LinearShape;

at::Tensor fused_linear_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            c10::string_view activation) {
  const Activation act = detail::parse_activation(detail::kFusedLinearOp, activation);
  const LinearShape shape = detail::check_fused_linear_args(detail::kFusedLinearOp, input, weight, bias);
  return detail::fused_linear_fp32(input, weight, bias, act, shape);
}

std::tuple<at::Tensor, at::Tensor> fused_linear_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                                                            const std::optional<at::Tensor>& bias,
                                                            c10::string_view activation) {
  const Activation act = detail::parse_activation(detail::kFusedLinearForwardOp, activation);
  const LinearShape shape = detail::check_fused_linear_args(detail::kFusedLinearForwardOp, input, weight, bias);
  return detail::fused_linear_forward_fp32(input, weight, bias, act, shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_backward_cpu(const at::Tensor& grad_output,
                                                                         const at::Tensor& input,
                                                                         const at::Tensor& weight,
                                                                         const at::Tensor& saved,
                                                                         c10::string_view activation) {
  const Activation act = detail::parse_activation(detail::kFusedLinearBackwardOp, activation);
  const LinearShape shape = detail::check_fused_linear_backward_args(grad_output, input, weight, saved, act);
  return detail::fused_linear_backward_fp32(grad_output, input, weight, saved, act, shape);
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
