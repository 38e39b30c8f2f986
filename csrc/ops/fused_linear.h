// fused_linear and fused_mlp: the argument checks and shape rules shared by the CPU, CUDA and Meta
// kernels (defined in ops/fused_linear_checks.cpp, with the Meta kernels; the Autograd and Autocast
// kernels are in ops/fused_linear_autograd.cpp, the fp32 reference maths in ops/linear_fp32.h).
//
// Three ops (schemas in ops/registration.cpp):
//   fused_linear(input, weight, bias?, activation) -> output
//       output = act(input @ weight.T + bias); what users call. Its Autograd kernel runs
//       fused_linear_forward and records fused_linear_backward.
//   fused_linear_forward(...) -> (output, saved)
//       also returns what the backward needs besides input and weight: for "gelu" the
//       pre-activation, [rows, round_up(out_features, 8)] (cuBLASLt's GELU_AUX wants a leading
//       dimension divisible by 8; only the first out_features columns are meaningful); for
//       "relu"/"none" an empty tensor (the ReLU backward uses the output itself).
//   fused_linear_backward(grad_output, input, weight, saved, activation)
//       -> (grad_input, grad_weight, grad_bias); for "relu", saved is the forward's output.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <string>
#include <vector>

#include "ampkit_kernels/linear_gemms.h"

namespace ampkit::detail {

constexpr const char* kFusedLinearOp = "ampkit.fused_linear";
constexpr const char* kFusedLinearForwardOp = "ampkit.fused_linear_forward";
constexpr const char* kFusedLinearBackwardOp = "ampkit.fused_linear_backward";

// The one activation enum: the kernels/ GEMM plans take it as it is.
using Activation = ampkit_kernels::LinearActivation;

// Records one GEMM with an epilogue run by a CUDA kernel: fused in cuBLASLt, or not (cuBLASLt had
// no fused algorithm). Read through ampkit::fused_epilogue_counts() (ampkit/fused_linear.h).
void count_epilogue_gemm(bool fused);

// "none" | "relu" | "gelu" (tanh approximation); anything else is a ValueError naming `op` (the op,
// or the API that takes the name: "ampkit::nn::FusedLinear"). The one check of activation names,
// reached from the C++ API and from Python through ampkit::check_fused_linear_activation.
Activation parse_activation(c10::string_view op, c10::string_view name);
// The accepted names, in the enum's order.
const std::vector<std::string>& activation_names();

struct LinearShape {
  int64_t rows = 0;          // product of input's leading dimensions
  int64_t in_features = 0;   // input.size(-1) == weight.size(1)
  int64_t out_features = 0;  // weight.size(0)
  std::vector<int64_t> output_sizes;  // input.sizes()[:-1] + [out_features]
};

// Checks input/weight/bias (dtype, device, layout, shapes) and returns the problem's shape.
LinearShape check_fused_linear_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias);

// Width of the saved pre-activation ("gelu"), 0 for the other activations.
int64_t saved_width(Activation activation, int64_t out_features);

// The forward's `saved` tensor, empty (unallocated for the activations that save nothing).
at::Tensor empty_saved(Activation activation, const LinearShape& shape, const at::TensorOptions& options);

// Checks for fused_linear_backward; returns the problem's shape.
LinearShape check_fused_linear_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                             const at::Tensor& weight, const at::Tensor& saved, Activation activation);

// ---- fused_mlp: Linear -> GELU(tanh) -> Linear, the transformer MLP block ----
//   fused_mlp(input, weight1, bias1?, weight2, bias2?) -> output
//   fused_mlp_forward(...) -> (output, hidden, pre)
//       hidden = gelu(input @ weight1.T + bias1) [rows, hidden_features]; pre = the GELU input,
//       [rows, round_up(hidden_features, 8)] as for fused_linear_forward.
//   fused_mlp_backward(grad_output, input, weight1, weight2, hidden, pre)
//       -> (grad_input, grad_weight1, grad_bias1, grad_weight2, grad_bias2)
// Fusing the two layers is what lets the backward take the GELU gradient and bias1's gradient
// out of the second layer's data-gradient GEMM (cuBLASLt's DGELU_BGRAD epilogue).
constexpr const char* kFusedMlpOp = "ampkit.fused_mlp";
constexpr const char* kFusedMlpForwardOp = "ampkit.fused_mlp_forward";
constexpr const char* kFusedMlpBackwardOp = "ampkit.fused_mlp_backward";

struct MlpShape {
  LinearShape first;   // input [rows, in] -> hidden [rows, hidden_features]; output_sizes 2-D
  LinearShape second;  // hidden -> output; output_sizes = input.sizes()[:-1] + [out_features]
};

MlpShape check_fused_mlp_args(const char* op, const at::Tensor& input, const at::Tensor& weight1,
                              const std::optional<at::Tensor>& bias1, const at::Tensor& weight2,
                              const std::optional<at::Tensor>& bias2);
MlpShape check_fused_mlp_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                       const at::Tensor& weight1, const at::Tensor& weight2,
                                       const at::Tensor& hidden, const at::Tensor& pre);

}  // namespace ampkit::detail
