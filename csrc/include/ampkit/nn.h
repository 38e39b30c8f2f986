// torch::nn modules of ampkit for C++ frontend training loops.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
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

struct FusedMLPOptions {
  FusedMLPOptions(int64_t in_features, int64_t hidden_features, int64_t out_features)
      : in_features_(in_features), hidden_features_(hidden_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, hidden_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
};

// fc1 -> GELU (tanh approximation) -> fc2, the transformer MLP block, in one ampkit::fused_mlp call
// (on CUDA its backward takes the GELU gradient and fc1's bias gradient out of a GEMM epilogue).
// fc1 and fc2 are torch::nn::Linear submodules holding the parameters, so the parameter names
// ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias") and the initialisation are Linear's, as in
// the Python ampkit.nn.FusedMLP.
class FusedMLPImpl : public torch::nn::Cloneable<FusedMLPImpl> {
 public:
  FusedMLPImpl(int64_t in_features, int64_t hidden_features, int64_t out_features)
      : FusedMLPImpl(FusedMLPOptions(in_features, hidden_features, out_features)) {}
  explicit FusedMLPImpl(const FusedMLPOptions& options);

  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& input);

  FusedMLPOptions options;
  torch::nn::Linear fc1{nullptr};
  torch::nn::Linear fc2{nullptr};
};
TORCH_MODULE(FusedMLP);

}  // namespace ampkit::nn
