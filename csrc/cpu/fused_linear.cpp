// fused_linear / fused_mlp on the CPU. Two routes with the numerics of the cuBLASLt path (products
// accumulated in fp32, bias and activation applied before each stored result is rounded once):
// * low-precision GEMMs: where the CPU multiplies bf16 (fp16) operands in hardware (AVX512-BF16 or
//   AMX-BF16; AVX512-FP16 or AMX-FP16), ATen's bf16/fp16 matmuls go to oneDNN, which accumulates
//   in fp32 and rounds once; the GELU is oneDNN's post-op on the fp32 accumulator. No widening
//   copies, and the GEMM runs on the units built for it.
// * the fp32 reference maths of ops/linear_fp32.h: operands widened to fp32, ATen's sgemm, bias and
//   activation in fp32, one rounding: for fp32 inputs, for CPUs without those units (there a widened
//   sgemm beats ATen's emulated low-precision GEMM), for empty problems, and with AMPKIT_CPU_LINEAR=fp32.
// Backward on the low-precision route rounds the gradient at the pre-activation to the input dtype
// before its GEMMs, as the CUDA path does (cuBLASLt multiplies operands of one dtype).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cpu/Utils.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "ops/fused_linear.h"
#include "ops/linear_fp32.h"

namespace ampkit::cpu {
namespace {

using detail::Activation;
using detail::LinearShape;

bool cpu_has(const char* capability) {
  const auto capabilities = at::cpu::get_cpu_capabilities();
  const auto it = capabilities.find(capability);
  return it != capabilities.end() && it->second.isBool() && it->second.toBool();
}

// The oneDNN linear with a GELU (tanh) post-op, when this build of torch has it.
using LinearPointwise = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                   c10::string_view, c10::List<std::optional<c10::Scalar>>,
                                   std::optional<c10::string_view>);
const c10::TypedOperatorHandle<LinearPointwise>* linear_pointwise() {
  static const std::optional<c10::TypedOperatorHandle<LinearPointwise>> op =
      []() -> std::optional<c10::TypedOperatorHandle<LinearPointwise>> {
    const auto handle = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    if (!handle || !handle->hasKernelForDispatchKey(c10::DispatchKey::CPU)) return std::nullopt;
    return handle->typed<LinearPointwise>();
  }();
  return op ? &*op : nullptr;
}

// Whether fused_linear/fused_mlp take the low-precision route for `dtype` (decided once per process).
bool multiplies_natively(at::ScalarType dtype) {
  static const bool enabled = [] {
    const char* route = std::getenv("AMPKIT_CPU_LINEAR");
    return !(route != nullptr && std::string(route) == "fp32") && at::globalContext().userEnabledMkldnn() &&
           linear_pointwise() != nullptr;
  }();
  static const bool bf16 = cpu_has("avx512_bf16") || cpu_has("amx_bf16");
  static const bool fp16 = cpu_has("avx512_fp16") || cpu_has("amx_fp16");
  return enabled && ((dtype == at::kBFloat16 && bf16) || (dtype == at::kHalf && fp16));
}

bool low_precision_route(const at::Tensor& input, const LinearShape& shape) {
  return shape.rows > 0 && shape.in_features > 0 && shape.out_features > 0 &&
         multiplies_natively(input.scalar_type());
}

// x [rows, in] @ weight.T + bias in the input dtype: fp32 accumulation, one rounding.
at::Tensor linear_low_precision(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  if (bias.has_value() && bias->defined()) return at::addmm(*bias, x, weight.t());
  return at::mm(x, weight.t());
}

// The same, written into `out` [rows, out_features].
void linear_low_precision_out(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias) {
  if (bias.has_value() && bias->defined()) {
    at::addmm_out(out, *bias, x, weight.t());
  } else {
    at::mm_out(out, x, weight.t());
  }
}

// activation(x @ weight.T + bias), the activation applied to the fp32 accumulator.
at::Tensor linear_activation_low_precision(const at::Tensor& x, const at::Tensor& weight,
                                           const std::optional<at::Tensor>& bias, Activation activation) {
  switch (activation) {
    case Activation::Gelu:
      return linear_pointwise()->call(x.contiguous(), weight.contiguous(), bias, "gelu",
                                      c10::List<std::optional<c10::Scalar>>(), std::optional<c10::string_view>("tanh"));
    case Activation::Relu: return at::relu(linear_low_precision(x, weight, bias));  // exact on a rounded value
    case Activation::None: break;
  }
  return linear_low_precision(x, weight, bias);
}

std::tuple<at::Tensor, at::Tensor> linear_forward_low_precision(const at::Tensor& input, const at::Tensor& weight,
                                                                const std::optional<at::Tensor>& bias,
                                                                Activation activation, const LinearShape& shape) {
  const at::Tensor x = input.reshape({shape.rows, shape.in_features});
  at::Tensor saved = detail::empty_saved(activation, shape, input.options());
  if (activation == Activation::Gelu) {
    // The GELU input for the backward, rounded to the input dtype as the CUDA path's GELU_AUX
    // epilogue stores it; the output below comes from the post-op on the unrounded accumulator: two
    // GEMMs, because oneDNN returns one result per GEMM and the output must be rounded only once.
    if (saved.size(1) == shape.out_features) {
      linear_low_precision_out(saved, x, weight, bias);  // no padding: the GEMM writes the buffer itself
    } else {
      saved.narrow(1, shape.out_features, saved.size(1) - shape.out_features).zero_();
      saved.narrow(1, 0, shape.out_features).copy_(linear_low_precision(x, weight, bias));
    }
  }
  const at::Tensor output = linear_activation_low_precision(x, weight, bias, activation);
  return {output.reshape(shape.output_sizes), saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_low_precision(const at::Tensor& grad_output,
                                                                             const at::Tensor& input,
                                                                             const at::Tensor& weight,
                                                                             const at::Tensor& saved,
                                                                             Activation activation,
                                                                             const LinearShape& shape) {
  const at::Tensor grad = grad_output.reshape({shape.rows, shape.out_features});
  // gelu_backward and threshold_backward compute in fp32 and round the result once.
  const at::Tensor grad_pre = detail::activation_backward(grad, saved, activation, shape.rows, shape.out_features);
  const at::Tensor x = input.reshape({shape.rows, shape.in_features});
  at::Tensor grad_input = at::mm(grad_pre, weight).reshape(input.sizes());
  at::Tensor grad_weight = at::mm(grad_pre.t(), x);
  at::Tensor grad_bias = at::sum(grad_pre, {0});  // fp32 accumulation, one rounding
  return {grad_input, grad_weight, grad_bias};
}

at::Tensor fused_linear_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            c10::string_view activation) {
  const Activation act = detail::parse_activation(detail::kFusedLinearOp, activation);
  const LinearShape shape = detail::check_fused_linear_args(detail::kFusedLinearOp, input, weight, bias);
  if (low_precision_route(input, shape)) {
    const at::Tensor x = input.reshape({shape.rows, shape.in_features});
    return linear_activation_low_precision(x, weight, bias, act).reshape(shape.output_sizes);
  }
  return detail::fused_linear_fp32(input, weight, bias, act, shape);
}

std::tuple<at::Tensor, at::Tensor> fused_linear_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                                                            const std::optional<at::Tensor>& bias,
                                                            c10::string_view activation) {
  const Activation act = detail::parse_activation(detail::kFusedLinearForwardOp, activation);
  const LinearShape shape = detail::check_fused_linear_args(detail::kFusedLinearForwardOp, input, weight, bias);
  if (low_precision_route(input, shape)) return linear_forward_low_precision(input, weight, bias, act, shape);
  return detail::fused_linear_forward_fp32(input, weight, bias, act, shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_backward_cpu(const at::Tensor& grad_output,
                                                                         const at::Tensor& input,
                                                                         const at::Tensor& weight,
                                                                         const at::Tensor& saved,
                                                                         c10::string_view activation) {
  const Activation act = detail::parse_activation(detail::kFusedLinearBackwardOp, activation);
  const LinearShape shape = detail::check_fused_linear_backward_args(grad_output, input, weight, saved, act);
  if (low_precision_route(input, shape) && grad_output.scalar_type() == input.scalar_type()) {
    return linear_backward_low_precision(grad_output, input, weight, saved, act, shape);
  }
  return detail::fused_linear_backward_fp32(grad_output, input, weight, saved, act, shape);
}

bool mlp_low_precision_route(const at::Tensor& input, const detail::MlpShape& shape) {
  return low_precision_route(input, shape.first) && low_precision_route(input, shape.second);
}

// (output, hidden, pre), as fused_mlp_forward_fp32 returns them.
std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_forward_low_precision(const at::Tensor& input,
                                                                         const at::Tensor& weight1,
                                                                         const std::optional<at::Tensor>& bias1,
                                                                         const at::Tensor& weight2,
                                                                         const std::optional<at::Tensor>& bias2,
                                                                         const detail::MlpShape& shape) {
  // shape.first's output sizes are 2-D: hidden is [rows, hidden_features] as it comes.
  auto [hidden, pre] = linear_forward_low_precision(input, weight1, bias1, Activation::Gelu, shape.first);
  at::Tensor output = linear_low_precision(hidden, weight2, bias2);
  return {output.reshape(shape.second.output_sizes), hidden, pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_backward_low_precision(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight1, const at::Tensor& weight2,
    const at::Tensor& hidden, const at::Tensor& pre, const detail::MlpShape& shape) {
  auto [grad_hidden, grad_weight2, grad_bias2] =
      linear_backward_low_precision(grad_output, hidden, weight2, at::Tensor(), Activation::None, shape.second);
  auto [grad_input, grad_weight1, grad_bias1] =
      linear_backward_low_precision(grad_hidden, input, weight1, pre, Activation::Gelu, shape.first);
  return {grad_input, grad_weight1, grad_bias1, grad_weight2, grad_bias2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_mlp_forward_cpu(const at::Tensor& input, const at::Tensor& weight1,
                                                                     const std::optional<at::Tensor>& bias1,
                                                                     const at::Tensor& weight2,
                                                                     const std::optional<at::Tensor>& bias2) {
  const auto shape = detail::check_fused_mlp_args(detail::kFusedMlpForwardOp, input, weight1, bias1, weight2, bias2);
  if (mlp_low_precision_route(input, shape)) {
    return mlp_forward_low_precision(input, weight1, bias1, weight2, bias2, shape);
  }
  return detail::fused_mlp_forward_fp32(input, weight1, bias1, weight2, bias2, shape);
}

at::Tensor fused_mlp_cpu(const at::Tensor& input, const at::Tensor& weight1, const std::optional<at::Tensor>& bias1,
                         const at::Tensor& weight2, const std::optional<at::Tensor>& bias2) {
  const auto shape = detail::check_fused_mlp_args(detail::kFusedMlpOp, input, weight1, bias1, weight2, bias2);
  if (mlp_low_precision_route(input, shape)) {
    // Inference: no GELU input to keep, so one GEMM per layer.
    const at::Tensor x = input.reshape({shape.first.rows, shape.first.in_features});
    const at::Tensor hidden = linear_activation_low_precision(x, weight1, bias1, Activation::Gelu);
    return linear_low_precision(hidden, weight2, bias2).reshape(shape.second.output_sizes);
  }
  return std::get<0>(detail::fused_mlp_forward_fp32(input, weight1, bias1, weight2, bias2, shape));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_mlp_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight1, const at::Tensor& weight2,
    const at::Tensor& hidden, const at::Tensor& pre) {
  const auto shape = detail::check_fused_mlp_backward_args(grad_output, input, weight1, weight2, hidden, pre);
  if (mlp_low_precision_route(input, shape) && grad_output.scalar_type() == input.scalar_type()) {
    return mlp_backward_low_precision(grad_output, input, weight1, weight2, hidden, pre, shape);
  }
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
