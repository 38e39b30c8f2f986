// A vectorised CPU backward of GELU's tanh approximation, for fused_linear / fused_mlp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace ampkit::cpu {

// grad * GELU'(pre), GELU's tanh approximation, in fp32 and rounded once to grad's dtype: what
// at::gelu_backward(grad, pre, "tanh") computes, for 2-D bf16 CPU tensors [rows, features]
// (pre may be a column slice of a wider row, as fused_linear's padded saved tensor is). The tanh
// is exp-based (absolute error < 1e-6 on the derivative, far below half an fp16/bf16 ulp of the
// result); ATen's goes through a 1-ulp Sleef tanh that cost ~1.3 ns an element, 6 % of the tiny
// GPT's training step at one thread. bf16 only: fp16 reaches this on CPUs with fp16 GEMM units
// (AVX512-FP16), none of which the tests run on, so fp16 keeps ATen's kernel until one does.
// nullopt where it does not apply (another dtype or device, a
// layout it does not walk, or no AVX-512, including AMPKIT_CPU_ISA=baseline/avx2): the caller then
// runs ATen's.
std::optional<at::Tensor> gelu_tanh_backward(const at::Tensor& grad, const at::Tensor& pre);

}  // namespace ampkit::cpu
