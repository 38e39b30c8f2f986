// fused_linear and fused_mlp: the Autograd kernels (the public op records its backward as a
// registered op; the forward/backward ops are first-order only) and the Autocast kernels, which
// route by the current ampkit policy: the ops declare themselves self-routed to the autocast layer
// (ampkit/autocast_self_routed.h), which therefore never registers a kernel over theirs. The
// argument checks and the Meta kernels are in ops/fused_linear_checks.cpp.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <string>

#include "ampkit/autocast_self_routed.h"
#include "ops/fused_linear.h"
#include "ops/op_lookup.h"

namespace ampkit::detail {
namespace {

const ampkit::autocast::SelfRoutedRegistration fused_linear_is_self_routed("ampkit::fused_linear");
const ampkit::autocast::SelfRoutedRegistration fused_mlp_is_self_routed("ampkit::fused_mlp");

// ---- fused_linear ----
const c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view)>&
forward_op() {
  static const auto op =
      find_typed_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                       const std::optional<at::Tensor>&, c10::string_view)>(
          "ampkit::fused_linear_forward");
  return op;
}

const c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view)>&
backward_op() {
  static const auto op = find_typed_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view)>(
      "ampkit::fused_linear_backward");
  return op;
}

const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                          c10::string_view)>&
fused_linear_op() {
  static const auto op =
      find_typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                               c10::string_view)>("ampkit::fused_linear");
  return op;
}

// The backward is one registered op, so torch.compile traces it as a node and C++ users get it
// through the same autograd graph as Python users.
class FusedLinearFunction : public torch::autograd::Function<FusedLinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::string_view activation) {
    const Activation act = parse_activation(kFusedLinearOp, activation);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, saved] = forward_op().call(input, weight, bias, activation);
    ctx->save_for_backward({input, weight, act == Activation::Relu ? output : saved});
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    auto [grad_input, grad_weight, grad_bias] =
        backward_op().call(grad_outputs[0], saved[0], saved[1], saved[2], activation);
    if (!ctx->saved_data["has_bias"].toBool()) grad_bias = at::Tensor();
    return {grad_input, grad_weight, grad_bias, at::Tensor()};
  }
};

// fused_linear_forward / fused_linear_backward are first-order only. Their results get a graph
// node that refuses to be differentiated, so a double backward (create_graph=True, then a backward
// through the gradients) is a clear error instead of a silently wrong second derivative.
[[noreturn]] void refuse_double_backward(const char* op) {
  TORCH_CHECK(false, op, ": differentiating through it is not supported (fused_linear has no double backward: "
              "create_graph=True gradients of fused_linear cannot themselves be differentiated)");
}

class FusedLinearForwardFunction : public torch::autograd::Function<FusedLinearForwardFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                                                const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                                c10::string_view activation) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, saved] = forward_op().call(input, weight, bias, activation);
    ctx->mark_non_differentiable({saved});
    return {output, saved};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*, torch::autograd::variable_list) {
    refuse_double_backward(kFusedLinearForwardOp);
  }
};

class FusedLinearBackwardFunction : public torch::autograd::Function<FusedLinearBackwardFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext*, const at::Tensor& grad_output,
                                                const at::Tensor& input, const at::Tensor& weight,
                                                const at::Tensor& saved, c10::string_view activation) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_input, grad_weight, grad_bias] = backward_op().call(grad_output, input, weight, saved, activation);
    return {grad_input, grad_weight, grad_bias};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*, torch::autograd::variable_list) {
    refuse_double_backward(kFusedLinearBackwardOp);
  }
};

std::tuple<at::Tensor, at::Tensor> fused_linear_forward_autograd(const at::Tensor& input, const at::Tensor& weight,
                                                                 const std::optional<at::Tensor>& bias,
                                                                 c10::string_view activation) {
  auto outputs = FusedLinearForwardFunction::apply(input, weight, bias, activation);
  return {outputs[0], outputs[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_backward_autograd(const at::Tensor& grad_output,
                                                                              const at::Tensor& input,
                                                                              const at::Tensor& weight,
                                                                              const at::Tensor& saved,
                                                                              c10::string_view activation) {
  auto outputs = FusedLinearBackwardFunction::apply(grad_output, input, weight, saved, activation);
  return {outputs[0], outputs[1], outputs[2]};
}

at::Tensor fused_linear_autograd(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, c10::string_view activation) {
  // Checked here too, so a bad argument (e.g. a sparse tensor, which has no forward kernel) is
  // reported as such rather than as a missing kernel of the internal ops.
  parse_activation(kFusedLinearOp, activation);
  check_fused_linear_args(kFusedLinearOp, input, weight, bias);
  const bool bias_requires_grad = bias.has_value() && bias->defined() && bias->requires_grad();
  if (!at::GradMode::is_enabled() || !(input.requires_grad() || weight.requires_grad() || bias_requires_grad)) {
    // No graph to record: the plain kernel, which skips saving the pre-activation.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fused_linear_op().call(input, weight, bias, activation);
  }
  return FusedLinearFunction::apply(input, weight, bias, activation);
}

// Autocast: fp32 inputs run in the autocast dtype (fp16/bf16), like torch's linear, unless the
// current ampkit policy lists the op otherwise.
template <c10::DeviceType device_type>
at::Tensor fused_linear_autocast(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, c10::string_view activation) {
  static const uint32_t slot = ampkit::autocast::self_routed_slot("ampkit::fused_linear");
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device_type));
  const auto dtype =
      ampkit::autocast::self_routed_dtype(device_type, slot, {&input, &weight, bias ? &*bias : nullptr});
  if (!dtype) return fused_linear_op().call(input, weight, bias, activation);
  return fused_linear_op().call(at::autocast::cached_cast(*dtype, input, device_type),
                                at::autocast::cached_cast(*dtype, weight, device_type),
                                at::autocast::cached_cast(*dtype, bias, device_type), activation);
}

// ---- fused_mlp ----
using MlpForward = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using MlpGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

using MlpSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                const at::Tensor&, const std::optional<at::Tensor>&);
using MlpForwardSignature = MlpForward(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                       const at::Tensor&, const std::optional<at::Tensor>&);
using MlpBackwardSignature = MlpGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&);

template <typename Signature>
const c10::TypedOperatorHandle<Signature>& typed_op(const char* name) {
  // One static per Signature: each of the signatures above belongs to exactly one op.
  static const auto op = find_typed_op<Signature>(name);
  return op;
}

class FusedMlpFunction : public torch::autograd::Function<FusedMlpFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight1,
                            const std::optional<at::Tensor>& bias1, const at::Tensor& weight2,
                            const std::optional<at::Tensor>& bias2) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, hidden, pre] =
        typed_op<MlpForwardSignature>("ampkit::fused_mlp_forward").call(input, weight1, bias1, weight2, bias2);
    ctx->save_for_backward({input, weight1, weight2, hidden, pre});
    ctx->saved_data["has_bias1"] = bias1.has_value() && bias1->defined();
    ctx->saved_data["has_bias2"] = bias2.has_value() && bias2->defined();
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto [grad_input, grad_weight1, grad_bias1, grad_weight2, grad_bias2] =
        typed_op<MlpBackwardSignature>("ampkit::fused_mlp_backward")
            .call(grad_outputs[0], saved[0], saved[1], saved[2], saved[3], saved[4]);
    if (!ctx->saved_data["has_bias1"].toBool()) grad_bias1 = at::Tensor();
    if (!ctx->saved_data["has_bias2"].toBool()) grad_bias2 = at::Tensor();
    return {grad_input, grad_weight1, grad_bias1, grad_weight2, grad_bias2};
  }
};

class FusedMlpForwardFunction : public torch::autograd::Function<FusedMlpForwardFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                                                const at::Tensor& weight1, const std::optional<at::Tensor>& bias1,
                                                const at::Tensor& weight2, const std::optional<at::Tensor>& bias2) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, hidden, pre] =
        typed_op<MlpForwardSignature>("ampkit::fused_mlp_forward").call(input, weight1, bias1, weight2, bias2);
    ctx->mark_non_differentiable({hidden, pre});
    return {output, hidden, pre};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*, torch::autograd::variable_list) {
    refuse_double_backward(kFusedMlpForwardOp);
  }
};

class FusedMlpBackwardFunction : public torch::autograd::Function<FusedMlpBackwardFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext*, const at::Tensor& grad_output,
                                                const at::Tensor& input, const at::Tensor& weight1,
                                                const at::Tensor& weight2, const at::Tensor& hidden,
                                                const at::Tensor& pre) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [a, b, c, d, e] = typed_op<MlpBackwardSignature>("ampkit::fused_mlp_backward")
                               .call(grad_output, input, weight1, weight2, hidden, pre);
    return {a, b, c, d, e};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*, torch::autograd::variable_list) {
    refuse_double_backward(kFusedMlpBackwardOp);
  }
};

at::Tensor fused_mlp_autograd(const at::Tensor& input, const at::Tensor& weight1,
                              const std::optional<at::Tensor>& bias1, const at::Tensor& weight2,
                              const std::optional<at::Tensor>& bias2) {
  check_fused_mlp_args(kFusedMlpOp, input, weight1, bias1, weight2, bias2);
  const auto requires_grad = [](const std::optional<at::Tensor>& t) { return t.has_value() && t->defined() && t->requires_grad(); };
  if (!at::GradMode::is_enabled() ||
      !(input.requires_grad() || weight1.requires_grad() || weight2.requires_grad() || requires_grad(bias1) ||
        requires_grad(bias2))) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return typed_op<MlpSignature>("ampkit::fused_mlp").call(input, weight1, bias1, weight2, bias2);
  }
  return FusedMlpFunction::apply(input, weight1, bias1, weight2, bias2);
}

MlpForward fused_mlp_forward_autograd(const at::Tensor& input, const at::Tensor& weight1,
                                      const std::optional<at::Tensor>& bias1, const at::Tensor& weight2,
                                      const std::optional<at::Tensor>& bias2) {
  auto outputs = FusedMlpForwardFunction::apply(input, weight1, bias1, weight2, bias2);
  return {outputs[0], outputs[1], outputs[2]};
}

MlpGrads fused_mlp_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight1,
                                     const at::Tensor& weight2, const at::Tensor& hidden, const at::Tensor& pre) {
  auto outputs = FusedMlpBackwardFunction::apply(grad_output, input, weight1, weight2, hidden, pre);
  return {outputs[0], outputs[1], outputs[2], outputs[3], outputs[4]};
}

template <c10::DeviceType device_type>
at::Tensor fused_mlp_autocast(const at::Tensor& input, const at::Tensor& weight1,
                              const std::optional<at::Tensor>& bias1, const at::Tensor& weight2,
                              const std::optional<at::Tensor>& bias2) {
  static const uint32_t slot = ampkit::autocast::self_routed_slot("ampkit::fused_mlp");
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device_type));
  const auto dtype = ampkit::autocast::self_routed_dtype(
      device_type, slot, {&input, &weight1, bias1 ? &*bias1 : nullptr, &weight2, bias2 ? &*bias2 : nullptr});
  const auto op = typed_op<MlpSignature>("ampkit::fused_mlp");
  if (!dtype) return op.call(input, weight1, bias1, weight2, bias2);
  using at::autocast::cached_cast;
  return op.call(cached_cast(*dtype, input, device_type), cached_cast(*dtype, weight1, device_type),
                 cached_cast(*dtype, bias1, device_type), cached_cast(*dtype, weight2, device_type),
                 cached_cast(*dtype, bias2, device_type));
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, Autograd, m) {
  m.impl("fused_linear", &fused_linear_autograd);
  m.impl("fused_linear_forward", &fused_linear_forward_autograd);
  m.impl("fused_linear_backward", &fused_linear_backward_autograd);
  m.impl("fused_mlp", &fused_mlp_autograd);
  m.impl("fused_mlp_forward", &fused_mlp_forward_autograd);
  m.impl("fused_mlp_backward", &fused_mlp_backward_autograd);
}
TORCH_LIBRARY_IMPL(ampkit, AutocastCPU, m) {
  m.impl("fused_linear", &fused_linear_autocast<c10::DeviceType::CPU>);
  m.impl("fused_mlp", &fused_mlp_autocast<c10::DeviceType::CPU>);
}
TORCH_LIBRARY_IMPL(ampkit, AutocastCUDA, m) {
  m.impl("fused_linear", &fused_linear_autocast<c10::DeviceType::CUDA>);
  m.impl("fused_mlp", &fused_mlp_autocast<c10::DeviceType::CUDA>);
}

}  // namespace ampkit::detail
