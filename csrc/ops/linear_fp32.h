// The fp32 reference maths of fused_linear and fused_mlp, through ATen: operands widened to fp32,
// products accumulated in fp32 (ATen's sgemm), bias and activation applied in fp32, and each stored
// tensor (output, saved GELU input, hidden, every gradient) rounded once to the input dtype: the
// numerics cuBLASLt's fp32-accumulate GEMMs with fused epilogues have. The CPU kernels are these
// functions; the CUDA kernels use the same building blocks where cuBLASLt has no algorithm.
// Arguments are checked by the callers (ops/fused_linear.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "ops/fused_linear.h"

namespace ampkit::detail {

// ---- building blocks (any floating dtype in, fp32 out unless said) ----

// x [rows, in_features] @ weight.T (+ bias): the pre-activation, fp32 [rows, out_features].
at::Tensor linear_fp32(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias);
// grad_pre [rows, out_features] @ weight: the input gradient, fp32 [rows, in_features].
at::Tensor linear_input_grad_fp32(const at::Tensor& grad_pre, const at::Tensor& weight);
// grad_pre.T @ x: the weight gradient, fp32 [out_features, in_features].
at::Tensor linear_weight_grad_fp32(const at::Tensor& grad_pre, const at::Tensor& x);

// activation(pre), in pre's dtype; "gelu" is the tanh approximation.
at::Tensor apply_activation(const at::Tensor& pre, Activation activation);
// The gradient at the pre-activation from grad [rows, out_features] (the gradient at the output),
// in grad's dtype. saved is what fused_linear_forward returns: the GELU input [rows, >= out_features]
// for "gelu", the output for "relu"; unused for "none".
at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& saved, Activation activation, int64_t rows,
                               int64_t out_features);

// ---- the ops, as the CPU kernels run them ----

// fused_linear's output; fused_linear_forward's (output, saved), saved as empty_saved shapes it.
at::Tensor fused_linear_fp32(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             Activation activation, const LinearShape& shape);
std::tuple<at::Tensor, at::Tensor> fused_linear_forward_fp32(const at::Tensor& input, const at::Tensor& weight,
                                                             const std::optional<at::Tensor>& bias,
                                                             Activation activation, const LinearShape& shape);
// (grad_input, grad_weight, grad_bias).
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_backward_fp32(const at::Tensor& grad_output,
                                                                          const at::Tensor& input,
                                                                          const at::Tensor& weight,
                                                                          const at::Tensor& saved,
                                                                          Activation activation,
                                                                          const LinearShape& shape);

// (output, hidden, pre). The second layer reads hidden as stored (rounded), as the CUDA path does.
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_mlp_forward_fp32(const at::Tensor& input, const at::Tensor& weight1,
                                                                      const std::optional<at::Tensor>& bias1,
                                                                      const at::Tensor& weight2,
                                                                      const std::optional<at::Tensor>& bias2,
                                                                      const MlpShape& shape);
// (grad_input, grad_weight1, grad_bias1, grad_weight2, grad_bias2); also the CUDA kernel's path for
// problems with an empty dimension.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_mlp_backward_fp32(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight1, const at::Tensor& weight2,
    const at::Tensor& hidden, const at::Tensor& pre, const MlpShape& shape);

}  // namespace ampkit::detail
