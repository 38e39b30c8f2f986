#include "ops/fused_linear.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <sstream>
#include <string>

#include "autocast/self_routed.h"
#include "ops/validation.h"

namespace ampkit::detail {

Activation parse_activation(const char* op, c10::string_view name) {
  if (name == "none") return Activation::None;
  if (name == "relu") return Activation::Relu;
  if (name == "gelu") return Activation::Gelu;
  TORCH_CHECK_VALUE(false, op, ": activation must be one of 'none', 'relu', 'gelu' (tanh approximation), got '",
                    std::string(name), "'");
}

namespace {

std::string sizes_text(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << sizes;
  return out.str();
}

void check_same_dtype(const char* op, const char* name, const at::Tensor& tensor, const at::Tensor& input) {
  TORCH_CHECK_TYPE(tensor.scalar_type() == input.scalar_type(), op, ": ", name, " must have the dtype of input (",
                   dtype_name(input.scalar_type()), "), got ", dtype_name(tensor.scalar_type()),
                   "; cast it, or run under autocast");
}

}  // namespace

namespace {

// "weight (argument 1)": the name and position in the calling op's schema.
std::string argument(const char* name, int index) {
  return std::string(name) + " (argument " + std::to_string(index) + ")";
}

// input, weight and bias sit at positions first, first + 1 and first + 2 of the op's schema.
LinearShape check_linear_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, int first, const char* weight_label = "weight",
                              const char* bias_label = "bias") {
  const std::string input_name = argument("input", first), weight_name = argument(weight_label, first + 1),
                    bias_name = argument(bias_label, first + 2);
  check_float_tensor(op, input_name, input);
  check_float_tensor(op, weight_name, weight);
  TORCH_CHECK(input.dim() >= 1, op, ": ", input_name,
              " must have at least one dimension [..., in_features], got a 0-dimensional tensor");
  TORCH_CHECK(weight.dim() == 2, op, ": ", weight_name, " must be 2-D [out_features, in_features], got shape ",
              weight.sizes());
  check_same_dtype(op, weight_name.c_str(), weight, input);
  check_device(op, weight_name, weight, input.device(), "input");
  const int64_t in_features = input.size(-1);
  TORCH_CHECK(weight.size(1) == in_features, op, ": ", weight_name, " must have shape [out_features, ", in_features,
              "] to match the last dimension of input ", input.sizes(), ", got ", weight.sizes());
  LinearShape shape;
  shape.in_features = in_features;
  shape.out_features = weight.size(0);
  shape.rows = 1;
  for (int64_t d = 0; d + 1 < input.dim(); ++d) shape.rows *= input.size(d);
  shape.output_sizes.assign(input.sizes().begin(), input.sizes().end() - 1);
  shape.output_sizes.push_back(shape.out_features);
  if (bias.has_value() && bias->defined()) {
    check_float_tensor(op, bias_name, *bias);
    check_same_dtype(op, bias_name.c_str(), *bias, input);
    check_device(op, bias_name, *bias, input.device(), "input");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == shape.out_features, op, ": ", bias_name, " must have shape [",
                shape.out_features, "] (out_features of weight ", weight.sizes(), "), got ", sizes_text(bias->sizes()));
  }
  return shape;
}

}  // namespace

LinearShape check_fused_linear_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias) {
  return check_linear_args(op, input, weight, bias, 0);
}

int64_t saved_width(Activation activation, int64_t out_features) {
  return activation == Activation::Gelu ? (out_features + 7) / 8 * 8 : 0;
}

at::Tensor empty_saved(Activation activation, const LinearShape& shape, const at::TensorOptions& options) {
  if (activation != Activation::Gelu) return at::empty({0}, options);
  return at::empty({shape.rows, saved_width(activation, shape.out_features)}, options);
}

LinearShape check_fused_linear_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                             const at::Tensor& weight, const at::Tensor& saved, Activation activation) {
  const char* op = kFusedLinearBackwardOp;
  check_float_tensor(op, "grad_output (argument 0)", grad_output);
  LinearShape shape = check_linear_args(op, input, weight, std::nullopt, 1);
  check_same_dtype(op, "grad_output (argument 0)", grad_output, input);
  check_device(op, "grad_output (argument 0)", grad_output, input.device(), "input");
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(shape.output_sizes), op,
              ": grad_output (argument 0) must have the output's shape ", sizes_text(shape.output_sizes), ", got ",
              grad_output.sizes());
  check_float_tensor(op, "saved (argument 3)", saved);
  check_same_dtype(op, "saved (argument 3)", saved, input);
  check_device(op, "saved (argument 3)", saved, input.device(), "input");
  std::vector<int64_t> expected;
  switch (activation) {
    case Activation::Gelu: expected = {shape.rows, saved_width(activation, shape.out_features)}; break;
    case Activation::Relu: expected = shape.output_sizes; break;
    case Activation::None: expected = {0}; break;
  }
  TORCH_CHECK(saved.sizes() == at::IntArrayRef(expected), op, ": saved (argument 3) must have shape ",
              sizes_text(expected), " for this activation (what fused_linear_forward returns), got ", saved.sizes());
  return shape;
}

namespace {

// weight2 [out_features, hidden_features] and bias2 [out_features] at positions `first`, `first + 1`.
LinearShape check_second_layer(const char* op, const at::Tensor& input, const LinearShape& first_layer,
                               const at::Tensor& weight2, const std::optional<at::Tensor>& bias2, int first) {
  const std::string weight_name = argument("weight2", first), bias_name = argument("bias2", first + 1);
  check_float_tensor(op, weight_name, weight2);
  TORCH_CHECK(weight2.dim() == 2, op, ": ", weight_name, " must be 2-D [out_features, hidden_features], got shape ",
              weight2.sizes());
  check_same_dtype(op, weight_name.c_str(), weight2, input);
  check_device(op, weight_name, weight2, input.device(), "input");
  TORCH_CHECK(weight2.size(1) == first_layer.out_features, op, ": ", weight_name, " must have shape [out_features, ",
              first_layer.out_features, "] to match the hidden features of weight1, got ", weight2.sizes());
  LinearShape shape;
  shape.rows = first_layer.rows;
  shape.in_features = first_layer.out_features;
  shape.out_features = weight2.size(0);
  shape.output_sizes.assign(input.sizes().begin(), input.sizes().end() - 1);
  shape.output_sizes.push_back(shape.out_features);
  if (bias2.has_value() && bias2->defined()) {
    check_float_tensor(op, bias_name, *bias2);
    check_same_dtype(op, bias_name.c_str(), *bias2, input);
    check_device(op, bias_name, *bias2, input.device(), "input");
    TORCH_CHECK(bias2->dim() == 1 && bias2->size(0) == shape.out_features, op, ": ", bias_name, " must have shape [",
                shape.out_features, "] (out_features of weight2 ", weight2.sizes(), "), got ",
                sizes_text(bias2->sizes()));
  }
  return shape;
}

void check_tensor_shape(const char* op, const std::string& name, const at::Tensor& tensor, const at::Tensor& input,
                        at::IntArrayRef expected, const char* what) {
  check_float_tensor(op, name, tensor);
  check_same_dtype(op, name.c_str(), tensor, input);
  check_device(op, name, tensor, input.device(), "input");
  TORCH_CHECK(tensor.sizes() == expected, op, ": ", name, " must have shape ", sizes_text(expected), " (", what,
              "), got ", tensor.sizes());
}

at::Tensor widen(const at::Tensor& tensor) { return tensor.to(at::kFloat); }

at::Tensor linear_fp32(const at::Tensor& x32, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  if (bias.has_value() && bias->defined()) return at::addmm(widen(*bias), x32, widen(weight).t());
  return at::mm(x32, widen(weight).t());
}

}  // namespace

MlpShape check_fused_mlp_args(const char* op, const at::Tensor& input, const at::Tensor& weight1,
                              const std::optional<at::Tensor>& bias1, const at::Tensor& weight2,
                              const std::optional<at::Tensor>& bias2) {
  MlpShape shape;
  shape.first = check_linear_args(op, input, weight1, bias1, 0, "weight1", "bias1");
  shape.first.output_sizes = {shape.first.rows, shape.first.out_features};
  shape.second = check_second_layer(op, input, shape.first, weight2, bias2, 3);
  return shape;
}

MlpShape check_fused_mlp_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                       const at::Tensor& weight1, const at::Tensor& weight2,
                                       const at::Tensor& hidden, const at::Tensor& pre) {
  const char* op = kFusedMlpBackwardOp;
  MlpShape shape;
  shape.first = check_linear_args(op, input, weight1, std::nullopt, 1, "weight1", "bias1");
  shape.first.output_sizes = {shape.first.rows, shape.first.out_features};
  shape.second = check_second_layer(op, input, shape.first, weight2, std::nullopt, 3);
  check_tensor_shape(op, argument("grad_output", 0), grad_output, input, shape.second.output_sizes,
                     "the output's shape");
  check_tensor_shape(op, argument("hidden", 4), hidden, input, shape.first.output_sizes,
                     "fused_mlp_forward's second output");
  const std::vector<int64_t> pre_sizes = {shape.first.rows, saved_width(Activation::Gelu, shape.first.out_features)};
  check_tensor_shape(op, argument("pre", 5), pre, input, pre_sizes, "fused_mlp_forward's third output");
  return shape;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_mlp_forward_fp32(const at::Tensor& input, const at::Tensor& weight1,
                                                                      const std::optional<at::Tensor>& bias1,
                                                                      const at::Tensor& weight2,
                                                                      const std::optional<at::Tensor>& bias2,
                                                                      const MlpShape& shape) {
  const at::ScalarType dtype = input.scalar_type();
  const int64_t hidden_features = shape.first.out_features;
  const at::Tensor pre32 = linear_fp32(widen(input.reshape({shape.first.rows, shape.first.in_features})), weight1, bias1);
  at::Tensor pre = empty_saved(Activation::Gelu, shape.first, input.options());
  pre.narrow(1, hidden_features, pre.size(1) - hidden_features).zero_();
  pre.narrow(1, 0, hidden_features).copy_(pre32);
  // The second layer reads the hidden activations as stored (rounded), as the CUDA path does.
  at::Tensor hidden = at::gelu(pre32, "tanh").to(dtype);
  at::Tensor output = linear_fp32(widen(hidden), weight2, bias2).to(dtype).reshape(shape.second.output_sizes);
  return {output, hidden, pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_mlp_backward_fp32(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight1, const at::Tensor& weight2,
    const at::Tensor& hidden, const at::Tensor& pre, const MlpShape& shape) {
  const at::ScalarType dtype = input.scalar_type();
  const int64_t rows = shape.first.rows, hidden_features = shape.first.out_features;
  const at::Tensor grad = widen(grad_output.reshape({rows, shape.second.out_features}));
  const at::Tensor x = widen(input.reshape({rows, shape.first.in_features}));
  at::Tensor grad_weight2 = at::mm(grad.t(), widen(hidden)).to(dtype);
  at::Tensor grad_bias2 = at::sum(grad, {0}).to(dtype);
  const at::Tensor grad_pre =
      at::gelu_backward(at::mm(grad, widen(weight2)), widen(pre.narrow(1, 0, hidden_features)), "tanh");
  at::Tensor grad_bias1 = at::sum(grad_pre, {0}).to(dtype);
  at::Tensor grad_input = at::mm(grad_pre, widen(weight1)).to(dtype).reshape(input.sizes());
  at::Tensor grad_weight1 = at::mm(grad_pre.t(), x).to(dtype);
  return {grad_input, grad_weight1, grad_bias1, grad_weight2, grad_bias2};
}

namespace {

// ---- Meta: shapes and dtypes only (torch.compile, opcheck, FakeTensor) ----
at::Tensor fused_linear_meta(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             c10::string_view activation) {
  parse_activation(kFusedLinearOp, activation);
  const LinearShape shape = check_fused_linear_args(kFusedLinearOp, input, weight, bias);
  return at::empty(shape.output_sizes, input.options());
}

std::tuple<at::Tensor, at::Tensor> fused_linear_forward_meta(const at::Tensor& input, const at::Tensor& weight,
                                                             const std::optional<at::Tensor>& bias,
                                                             c10::string_view activation) {
  const Activation act = parse_activation(kFusedLinearForwardOp, activation);
  const LinearShape shape = check_fused_linear_args(kFusedLinearForwardOp, input, weight, bias);
  return {at::empty(shape.output_sizes, input.options()), empty_saved(act, shape, input.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_backward_meta(const at::Tensor& grad_output,
                                                                          const at::Tensor& input,
                                                                          const at::Tensor& weight,
                                                                          const at::Tensor& saved,
                                                                          c10::string_view activation) {
  const Activation act = parse_activation(kFusedLinearBackwardOp, activation);
  const LinearShape shape = check_fused_linear_backward_args(grad_output, input, weight, saved, act);
  return {at::empty(input.sizes(), input.options()), at::empty(weight.sizes(), weight.options()),
          at::empty({shape.out_features}, weight.options())};
}

// ---- Autograd ----
const c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view)>&
forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ampkit::fused_linear_forward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                       const std::optional<at::Tensor>&,
                                                                       c10::string_view)>();
  return op;
}

const c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view)>&
backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ampkit::fused_linear_backward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 c10::string_view)>();
  return op;
}

const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                          c10::string_view)>&
fused_linear_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ampkit::fused_linear", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               c10::string_view)>();
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

// ---- Autocast: fp32 inputs run in the autocast dtype (fp16/bf16), like torch's linear, unless
// the current ampkit policy lists the op otherwise (autocast/self_routed.h) ----
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

}  // namespace

namespace {

// ---- fused_mlp: Meta, Autograd, Autocast ----
using MlpForward = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using MlpGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

at::Tensor fused_mlp_meta(const at::Tensor& input, const at::Tensor& weight1, const std::optional<at::Tensor>& bias1,
                          const at::Tensor& weight2, const std::optional<at::Tensor>& bias2) {
  const MlpShape shape = check_fused_mlp_args(kFusedMlpOp, input, weight1, bias1, weight2, bias2);
  return at::empty(shape.second.output_sizes, input.options());
}

MlpForward fused_mlp_forward_meta(const at::Tensor& input, const at::Tensor& weight1,
                                  const std::optional<at::Tensor>& bias1, const at::Tensor& weight2,
                                  const std::optional<at::Tensor>& bias2) {
  const MlpShape shape = check_fused_mlp_args(kFusedMlpForwardOp, input, weight1, bias1, weight2, bias2);
  return {at::empty(shape.second.output_sizes, input.options()), at::empty(shape.first.output_sizes, input.options()),
          empty_saved(Activation::Gelu, shape.first, input.options())};
}

MlpGrads fused_mlp_backward_meta(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight1,
                                 const at::Tensor& weight2, const at::Tensor& hidden, const at::Tensor& pre) {
  const MlpShape shape = check_fused_mlp_backward_args(grad_output, input, weight1, weight2, hidden, pre);
  return {at::empty(input.sizes(), input.options()), at::empty(weight1.sizes(), input.options()),
          at::empty({shape.first.out_features}, input.options()), at::empty(weight2.sizes(), input.options()),
          at::empty({shape.second.out_features}, input.options())};
}

using MlpSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                const at::Tensor&, const std::optional<at::Tensor>&);
using MlpForwardSignature = MlpForward(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                       const at::Tensor&, const std::optional<at::Tensor>&);
using MlpBackwardSignature = MlpGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&);

template <typename Signature>
const c10::TypedOperatorHandle<Signature>& typed_op(const char* name) {
  // One static per Signature: each of the signatures above belongs to exactly one op.
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
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

TORCH_LIBRARY_IMPL(ampkit, Meta, m) {
  m.impl("fused_mlp", &fused_mlp_meta);
  m.impl("fused_mlp_forward", &fused_mlp_forward_meta);
  m.impl("fused_mlp_backward", &fused_mlp_backward_meta);
}
TORCH_LIBRARY_IMPL(ampkit, SparseCPU, m) { m.impl("fused_mlp", &fused_mlp_meta); }
TORCH_LIBRARY_IMPL(ampkit, SparseCUDA, m) { m.impl("fused_mlp", &fused_mlp_meta); }
TORCH_LIBRARY_IMPL(ampkit, Autograd, m) {
  m.impl("fused_mlp", &fused_mlp_autograd);
  m.impl("fused_mlp_forward", &fused_mlp_forward_autograd);
  m.impl("fused_mlp_backward", &fused_mlp_backward_autograd);
}
TORCH_LIBRARY_IMPL(ampkit, AutocastCPU, m) { m.impl("fused_mlp", &fused_mlp_autocast<c10::DeviceType::CPU>); }
TORCH_LIBRARY_IMPL(ampkit, AutocastCUDA, m) { m.impl("fused_mlp", &fused_mlp_autocast<c10::DeviceType::CUDA>); }

TORCH_LIBRARY_IMPL(ampkit, Meta, m) {
  m.impl("fused_linear", &fused_linear_meta);
  m.impl("fused_linear_forward", &fused_linear_forward_meta);
  m.impl("fused_linear_backward", &fused_linear_backward_meta);
}
// Sparse tensors reach no kernel; the checks turn the dispatcher's generic message into one that
// names the argument.
TORCH_LIBRARY_IMPL(ampkit, SparseCPU, m) { m.impl("fused_linear", &fused_linear_meta); }
TORCH_LIBRARY_IMPL(ampkit, SparseCUDA, m) { m.impl("fused_linear", &fused_linear_meta); }
TORCH_LIBRARY_IMPL(ampkit, Autograd, m) {
  m.impl("fused_linear", &fused_linear_autograd);
  m.impl("fused_linear_forward", &fused_linear_forward_autograd);
  m.impl("fused_linear_backward", &fused_linear_backward_autograd);
}
TORCH_LIBRARY_IMPL(ampkit, AutocastCPU, m) { m.impl("fused_linear", &fused_linear_autocast<c10::DeviceType::CPU>); }
TORCH_LIBRARY_IMPL(ampkit, AutocastCUDA, m) { m.impl("fused_linear", &fused_linear_autocast<c10::DeviceType::CUDA>); }

}  // namespace ampkit::detail
