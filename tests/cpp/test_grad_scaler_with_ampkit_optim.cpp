// ampkit::GradScaler driving an ampkit::optim optimizer: the optimizer unscales and skips on the
// device (no found_inf read on the host), with the same results as the plain-optimizer path.
#include "test_helpers.h"

#include <limits>
#include <set>

#include "ampkit/ampkit.h"

using ampkit_test::devices_under_test;

namespace {

struct Trajectory {
  std::vector<double> scales;
  std::vector<torch::Tensor> weights;  // after every step
  int64_t skipped = 0;
};

// Trains a Linear(8, 3) with SGD(momentum) under a GradScaler, forcing inf into the gradient at
// `poisoned` steps. `device_skipping` picks ampkit::optim::SGD (unscale + skip in its kernel)
// or torch::optim::SGD (the scaler unscales, reads found_inf, and decides on the host).
Trajectory train(const torch::Device& device, bool device_skipping, const std::set<int>& poisoned) {
  torch::manual_seed(0);
  torch::nn::Linear model(8, 3);
  model->to(device);
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  if (device_skipping) {
    optimizer = std::make_unique<ampkit::optim::SGD>(model->parameters(), ampkit::optim::SGDOptions(0.1).momentum(0.9));
  } else {
    optimizer = std::make_unique<torch::optim::SGD>(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  }
  ampkit::GradScaler scaler(ampkit::GradScalerOptions().init_scale(256.0).growth_interval(3));
  Trajectory result;
  for (int step = 0; step < 12; ++step) {
    auto x = torch::randn({16, 8}, torch::device(device));
    auto y = torch::randn({16, 3}, torch::device(device));
    optimizer->zero_grad();
    scaler.scale(torch::mse_loss(model(x), y)).backward();
    if (poisoned.count(step)) model->weight.grad()[0][0] = std::numeric_limits<float>::infinity();
    scaler.step(*optimizer);
    scaler.update();
    result.scales.push_back(scaler.get_scale());
    result.weights.push_back(model->weight.detach().clone());
  }
  result.skipped = scaler.skipped_steps().item<int64_t>();
  return result;
}

}  // namespace

TEST_CASE("GradScaler + ampkit::optim skips overflowed steps on the device", "[grad_scaler][optim]") {
  const std::set<int> poisoned = {2, 3, 7};
  for (const auto& device : devices_under_test()) {
    const Trajectory fused = train(device, /*device_skipping=*/true, poisoned);
    const Trajectory plain = train(device, /*device_skipping=*/false, poisoned);
    REQUIRE(fused.skipped == 3);
    REQUIRE(fused.scales == plain.scales);  // same back-offs and growths
    for (int step : poisoned) {
      // A skipped step leaves the weights exactly as the previous step left them.
      REQUIRE(torch::equal(fused.weights[step], fused.weights[step - 1]));
    }
    // The fused kernel and torch's SGD round differently (fused multiply-adds), so the weights
    // agree to fp32 rounding accumulated over 12 steps, not bitwise.
    for (size_t i = 0; i < fused.weights.size(); ++i) {
      REQUIRE(torch::allclose(fused.weights[i], plain.weights[i], /*rtol=*/1e-5, /*atol=*/1e-6));
    }
  }
}
