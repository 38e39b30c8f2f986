// torch::nn modules of ampkit for C++ frontend training loops.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/arg.h>

#include <ostream>
#include <string>

#include "ampkit/fused_linear.h"

namespace ampkit::nn {

struct FusedLinearOptions {
  FusedLinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
  // "none", "relu" or "gelu" (tanh approximation).
  TORCH_ARG(std::string, activation) = "none";
};

// torch::nn::Linear followed by an activation, in one ampkit::fused_linear call. Parameters are
// named and initialised as torch::nn::Linear's ("weight" [out, in], "bias" [out]), so a Linear's
// state loads into it unchanged.
class FusedLinearImpl : public torch::nn::Cloneable<FusedLinearImpl> {
 public:
  FusedLinearImpl(int64_t in_features, int64_t out_features)
      : FusedLinearImpl(FusedLinearOptions(in_features, out_features)) {}
  explicit FusedLinearImpl(const FusedLinearOptions& options);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& input);

  FusedLinearOptions options;
  at::Tensor weight;
  at::Tensor bias;  // undefined when options.bias() is false
};
TORCH_MODULE(FusedLinear);

}  // namespace ampkit::nn
