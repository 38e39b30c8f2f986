// C++ entry point of torch.ops.ampkit.fused_linear (through the dispatcher, so autograd, autocast
// and the CPU/CUDA/Meta kernels behave exactly as they do from Python).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ampkit {

// activation(input @ weight.T + bias) with fp32 accumulation; input [..., in_features], weight
// [out_features, in_features], bias [out_features] or none; activation "none", "relu" or "gelu"
// (tanh approximation). fp16/bf16 (or fp32) tensors of one dtype; under autocast fp32 tensors run
// in the autocast dtype. Differentiable in input, weight and bias.
at::Tensor fused_linear(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias = std::nullopt, std::string_view activation = "none");

// The activation names fused_linear accepts: "none", "relu", "gelu" (tanh approximation).
std::vector<std::string> fused_linear_activations();
// Checks an activation name as fused_linear does: any other name is a c10::ValueError
// "<caller>: activation must be one of ...". For APIs that take a name before calling the op
// (ampkit::nn::FusedLinear, ampkit.FusedLinear in Python), so they fail early with the op's rule.
void check_fused_linear_activation(std::string_view caller, std::string_view activation);

// fc2(gelu_tanh(fc1(input))): input [..., in], weight1 [hidden, in], weight2 [out, hidden]. The
// backward takes the GELU gradient and bias1's gradient out of a GEMM epilogue (DGELU_BGRAD) on CUDA.
at::Tensor fused_mlp(const at::Tensor& input, const at::Tensor& weight1, const std::optional<at::Tensor>& bias1,
                     const at::Tensor& weight2, const std::optional<at::Tensor>& bias2);

// Diagnostics (tests, benchmarks): how many GEMMs with an epilogue (bias, activation, saved GELU
// input, bias gradient, GELU gradient) the CUDA kernels of fused_linear / fused_mlp ran as one
// fused cuBLASLt call, and how many ran unfused (plain GEMM plus separate passes) because cuBLASLt
// had no fused algorithm at those shapes and alignments. GEMMs without an epilogue and the CPU
// kernels count nothing. Process-wide, all devices and threads.
struct FusedEpilogueCounts {
  int64_t fused = 0;
  int64_t unfused = 0;
};
FusedEpilogueCounts fused_epilogue_counts();
void reset_fused_epilogue_counts();

}  // namespace ampkit
