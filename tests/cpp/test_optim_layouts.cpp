// ampkit::optim on parameters of any layout torch::optim accepts: dense layouts (channels_last,
// transposed) are stepped in place with state in the parameter's strides, strided slices and
// gradients in another memory order through dense copies written back. Against torch::optim::AdamW
// on the same values; tolerance as test_optim.cpp (1e-6 of the largest reference value: rounding).
#include "test_helpers.h"

#include <functional>
#include <string>
#include <vector>

#include "ampkit/ampkit.h"

namespace {

struct Layout {
  std::string name;
  std::function<torch::Tensor()> make;
  bool dense;
};

std::vector<Layout> layouts() {
  return {
      {"channels_last", [] { return torch::randn({6, 3, 3, 3}).contiguous(at::MemoryFormat::ChannelsLast); }, true},
      {"transposed", [] { return torch::randn({17, 33}).t(); }, true},
      {"strided slice", [] { return torch::randn({18, 5}).slice(0, 0, 18, 2); }, false},
  };
}

}  // namespace

TEST_CASE("ampkit::optim::AdamW steps every layout like torch::optim::AdamW", "[optim][layout]") {
  for (const auto& layout : layouts()) {
    SECTION(layout.name) {
      torch::manual_seed(0);
      const torch::Tensor initial = layout.make();
      torch::Tensor ours = layout.dense ? initial.clone(at::MemoryFormat::Preserve).requires_grad_(true)
                                        : torch::zeros({18, 5}).slice(0, 0, 18, 2).copy_(initial).requires_grad_(true);
      torch::Tensor reference = initial.clone().requires_grad_(true);
      const auto strides = ours.strides().vec();
      ampkit::optim::AdamW optimizer({ours}, ampkit::optim::AdamWOptions(1e-2));
      torch::optim::AdamW torch_optimizer({reference}, torch::optim::AdamWOptions(1e-2));
      for (int step = 0; step < 20; ++step) {
        torch::manual_seed(100 + step);
        const torch::Tensor grad = torch::randn(ours.sizes());  // contiguous: for channels_last a copy
        ours.mutable_grad() = grad.clone();
        reference.mutable_grad() = grad.clone();
        optimizer.step();
        torch_optimizer.step();
        CHECK(torch::equal(ours.grad(), grad));  // the gradient is left as it was
      }
      CHECK(ours.strides().vec() == strides);
      const double tolerance = 1e-6 * reference.abs().max().item<double>();
      CHECK((ours.detach() - reference.detach()).abs().max().item<double>() <= tolerance);
      auto& state = static_cast<ampkit::optim::MasterParamState&>(*optimizer.state().at(ours.unsafeGetTensorImpl()));
      if (layout.dense) {
        CHECK(state.exp_avg().strides().vec() == strides);
        CHECK(state.exp_avg_sq().strides().vec() == strides);
      }
    }
  }
}

TEST_CASE("ampkit::optim state follows a parameter whose layout changed", "[optim][layout]") {
  // The same two steps on a twin whose layout never changes: the re-layout is a copy, so the
  // masters and state must come out with the same values, bit for bit, in the new layout.
  torch::manual_seed(0);
  torch::Tensor param = torch::randn({8, 4, 3, 3}).to(torch::kHalf).requires_grad_(true);
  torch::Tensor twin = param.detach().clone().requires_grad_(true);
  ampkit::optim::AdamW optimizer({param}, ampkit::optim::AdamWOptions(1e-2));
  ampkit::optim::AdamW twin_optimizer({twin}, ampkit::optim::AdamWOptions(1e-2));
  param.mutable_grad() = torch::ones_like(param);
  twin.mutable_grad() = torch::ones_like(twin);
  optimizer.step();
  twin_optimizer.step();
  {
    const torch::NoGradGuard no_grad;
    param.set_data(param.contiguous(at::MemoryFormat::ChannelsLast));  // what converting a model does
  }
  param.mutable_grad() = torch::full_like(param, 0.5);
  twin.mutable_grad() = torch::full_like(twin, 0.5);
  optimizer.step();
  twin_optimizer.step();
  auto& state = static_cast<ampkit::optim::MasterParamState&>(*optimizer.state().at(param.unsafeGetTensorImpl()));
  auto& twin_state =
      static_cast<ampkit::optim::MasterParamState&>(*twin_optimizer.state().at(twin.unsafeGetTensorImpl()));
  CHECK(param.is_contiguous(at::MemoryFormat::ChannelsLast));
  CHECK(state.master().is_contiguous(at::MemoryFormat::ChannelsLast));
  CHECK(state.exp_avg().strides() == param.strides());
  CHECK(torch::equal(state.master().contiguous(), twin_state.master()));
  CHECK(torch::equal(state.exp_avg_sq().contiguous(), twin_state.exp_avg_sq()));
  CHECK(torch::equal(param.detach().contiguous(), twin.detach()));
}
