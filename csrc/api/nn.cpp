#include "ampkit/nn.h"

#include <torch/nn/init.h>

#include <cmath>

#include "ampkit/fused_linear.h"

namespace ampkit::nn {

FusedLinearImpl::FusedLinearImpl(const FusedLinearOptions& options_) : options(options_) {
  reset();
}

void FusedLinearImpl::reset() {
  // Fails early, with the op's own rule and message, on an activation name the op would reject.
  check_fused_linear_activation("ampkit::nn::FusedLinear", options.activation());
  TORCH_CHECK_VALUE(options.in_features() >= 0 && options.out_features() >= 0,
                    "ampkit::nn::FusedLinear: in_features and out_features must be >= 0, got ", options.in_features(),
                    " and ", options.out_features());
  weight = register_parameter("weight", torch::empty({options.out_features(), options.in_features()}));
  if (options.bias()) {
    bias = register_parameter("bias", torch::empty(options.out_features()));
  } else {
    bias = register_parameter("bias", {}, /*requires_grad=*/false);
  }
  reset_parameters();
}

void FusedLinearImpl::reset_parameters() {
  // torch::nn::Linear's initialisation: kaiming_uniform(a = sqrt(5)) and U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const int64_t fan_in = options.in_features();
    const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

void FusedLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "ampkit::nn::FusedLinear(in_features=" << options.in_features()
         << ", out_features=" << options.out_features() << ", bias=" << std::boolalpha << options.bias()
         << ", activation=" << options.activation() << ")";
}

at::Tensor FusedLinearImpl::forward(const at::Tensor& input) {
  return ampkit::fused_linear(input, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt,
                              options.activation());
}

FusedMLPImpl::FusedMLPImpl(const FusedMLPOptions& options_) : options(options_) { reset(); }

void FusedMLPImpl::reset() {
  TORCH_CHECK_VALUE(options.in_features() >= 0 && options.hidden_features() >= 0 && options.out_features() >= 0,
                    "ampkit::nn::FusedMLP: in_features, hidden_features and out_features must be >= 0, got ",
                    options.in_features(), ", ", options.hidden_features(), " and ", options.out_features());
  fc1 = register_module(
      "fc1", torch::nn::Linear(torch::nn::LinearOptions(options.in_features(), options.hidden_features())
                                   .bias(options.bias())));
  fc2 = register_module(
      "fc2", torch::nn::Linear(torch::nn::LinearOptions(options.hidden_features(), options.out_features())
                                   .bias(options.bias())));
}

void FusedMLPImpl::pretty_print(std::ostream& stream) const {
  stream << "ampkit::nn::FusedMLP(in_features=" << options.in_features()
         << ", hidden_features=" << options.hidden_features() << ", out_features=" << options.out_features()
         << ", bias=" << std::boolalpha << options.bias() << ")";
}

at::Tensor FusedMLPImpl::forward(const at::Tensor& input) {
  auto optional = [](const at::Tensor& bias) {
    return bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt;
  };
  return ampkit::fused_mlp(input, fc1->weight, optional(fc1->bias), fc2->weight, optional(fc2->bias));
}

}  // namespace ampkit::nn
