#pragma once

// What the C++ optimizer tests compare: every tensor an ampkit master-weight optimizer holds.
#include <torch/torch.h>

#include <vector>

#include "ampkit/optim.h"

namespace ampkit_test {

// Copies of the parameters, the FP32 masters and each parameter's defined state tensors, in order.
inline std::vector<torch::Tensor> optimizer_tensors(ampkit::optim::MasterWeightOptimizer& optimizer,
                                                    const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> result;
  for (const auto& p : params) result.push_back(p.detach().clone());
  for (const auto& m : optimizer.master_params()) result.push_back(m.clone());
  for (const auto& p : params) {
    auto& state = static_cast<ampkit::optim::MasterParamState&>(*optimizer.state().at(p.unsafeGetTensorImpl()));
    for (const auto& t : {state.step(), state.momentum_buffer(), state.exp_avg(), state.exp_avg_sq()}) {
      if (t.defined()) result.push_back(t.clone());
    }
  }
  return result;
}

}  // namespace ampkit_test
