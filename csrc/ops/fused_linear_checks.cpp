// fused_linear and fused_mlp: the argument checks and shape rules (ops/fused_linear.h) and the
// Meta kernels, which are those checks plus empty outputs of the right shapes and dtypes (for
// torch.compile, opcheck and FakeTensor). The Autograd and Autocast kernels are in
// ops/fused_linear_autograd.cpp.
#include "ops/fused_linear.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <sstream>
#include <string>

#include "ops/registration.h"
#include "ops/validation.h"

namespace ampkit::detail {

const std::vector<std::string>& activation_names() {
  static const std::vector<std::string> names = {"none", "relu", "gelu"};
  return names;
}

Activation parse_activation(c10::string_view op, c10::string_view name) {
  if (name == "none") return Activation::None;
  if (name == "relu") return Activation::Relu;
  if (name == "gelu") return Activation::Gelu;
  TORCH_CHECK_VALUE(false, std::string(op), ": activation must be one of 'none', 'relu', 'gelu' (tanh approximation), got '",
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
  return activation == Activation::Gelu ? ampkit_kernels::linear_aux_ld(out_features) : 0;
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

// ---- fused_mlp ----
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

}  // namespace

// The ops users call take sparse tensors to their checks too (register_meta_and_sparse); the
// forward/backward halves are reached only through them.
TORCH_LIBRARY_IMPL(ampkit, CatchAll, m) {
  register_meta_and_sparse(m, "fused_linear", &fused_linear_meta);
  register_meta_and_sparse(m, "fused_mlp", &fused_mlp_meta);
}
TORCH_LIBRARY_IMPL(ampkit, Meta, m) {
  m.impl("fused_linear_forward", &fused_linear_forward_meta);
  m.impl("fused_linear_backward", &fused_linear_backward_meta);
  m.impl("fused_mlp_forward", &fused_mlp_forward_meta);
  m.impl("fused_mlp_backward", &fused_mlp_backward_meta);
}

}  // namespace ampkit::detail
