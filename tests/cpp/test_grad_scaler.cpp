// ampkit::GradScaler in a torch::nn::Linear + torch::optim::SGD loop, against the same loop
// driven by torch's own loss-scaling ops (what torch.amp.GradScaler runs), plus the state
// machine, checkpoints and bad input.
#include "test_helpers.h"

#include <cmath>
#include <limits>
#include <map>
#include <sstream>
#include <vector>

#include "ampkit/ampkit.h"

using ampkit_test::devices_under_test;
using ampkit_test::throws_with;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// Steps whose gradients are forced non-finite: isolated, back to back, every kind.
const std::map<int, float> kCorrupted = {{3, kInf}, {8, kNaN}, {9, -kInf}, {10, kInf}, {21, kNaN}};
constexpr int kSteps = 30;
constexpr int64_t kGrowthInterval = 3;

struct RunResult {
  std::vector<double> scales;
  std::vector<bool> stepped;
  std::vector<torch::Tensor> params;
};

struct Loop {
  torch::nn::Linear model{nullptr};
  std::unique_ptr<torch::optim::SGD> optimizer;
  std::vector<torch::Tensor> inputs, targets;

  explicit Loop(const torch::Device& device) {
    torch::manual_seed(0);
    model = torch::nn::Linear(16, 4);
    model->to(device);
    optimizer = std::make_unique<torch::optim::SGD>(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
    for (int i = 0; i < kSteps; ++i) {
      inputs.push_back(torch::randn({8, 16}).to(device));
      targets.push_back(torch::randn({8, 4}).to(device));
    }
  }

  // Forward + backward of the scaled loss, then the chosen corruption.
  void backward(int step, const std::function<torch::Tensor(torch::Tensor)>& scale) {
    optimizer->zero_grad();
    auto loss = torch::mse_loss(model->forward(inputs[step]), targets[step]);
    scale(loss).backward();
    auto it = kCorrupted.find(step);
    if (it != kCorrupted.end()) {
      torch::NoGradGuard no_grad;
      model->weight.grad()[1][step % 16] = it->second;
    }
  }

  std::vector<torch::Tensor> params() const {
    std::vector<torch::Tensor> result;
    for (const auto& p : model->parameters()) result.push_back(p.detach().clone());
    return result;
  }
};

RunResult run_with_ampkit(const torch::Device& device) {
  Loop loop(device);
  ampkit::GradScaler scaler(ampkit::GradScalerOptions().init_scale(4096.0).growth_interval(kGrowthInterval));
  RunResult result;
  for (int step = 0; step < kSteps; ++step) {
    loop.backward(step, [&](torch::Tensor loss) { return scaler.scale(loss); });
    result.stepped.push_back(scaler.step(*loop.optimizer));
    scaler.update();
    result.scales.push_back(scaler.get_scale());
  }
  result.params = loop.params();
  REQUIRE(scaler.skipped_steps().item<int64_t>() == static_cast<int64_t>(kCorrupted.size()));
  REQUIRE(scaler.overflow_events().item<int64_t>() == static_cast<int64_t>(kCorrupted.size()));
  return result;
}

// torch.amp.GradScaler's algorithm written out with torch's own ops.
RunResult run_with_torch_ops(const torch::Device& device) {
  Loop loop(device);
  auto scale = torch::full({}, 4096.0, torch::dtype(torch::kFloat).device(device));
  auto growth_tracker = torch::zeros({}, torch::dtype(torch::kInt).device(device));
  RunResult result;
  for (int step = 0; step < kSteps; ++step) {
    loop.backward(step, [&](torch::Tensor loss) { return loss * scale; });
    std::vector<torch::Tensor> grads;
    for (const auto& p : loop.model->parameters()) grads.push_back(p.grad());
    auto found_inf = torch::zeros({}, torch::dtype(torch::kFloat).device(device));
    at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, scale.to(torch::kDouble).reciprocal().to(torch::kFloat));
    const bool clean = found_inf.item<float>() == 0.0f;
    if (clean) loop.optimizer->step();
    result.stepped.push_back(clean);
    at::_amp_update_scale_(scale, growth_tracker, found_inf, 2.0, 0.5, kGrowthInterval);
    result.scales.push_back(scale.item<float>());
  }
  result.params = loop.params();
  return result;
}

void scaled_backward(ampkit::GradScaler& scaler, torch::nn::Linear& model) {
  auto loss = model->forward(torch::randn({2, 16})).square().mean();
  scaler.scale(loss).backward();
}

}  // namespace

TEST_CASE("GradScaler drives a Linear + SGD loop exactly like torch's loss scaling", "[grad_scaler]") {
  for (const auto& device : devices_under_test()) {
    const RunResult ours = run_with_ampkit(device);
    const RunResult reference = run_with_torch_ops(device);
    REQUIRE(ours.scales == reference.scales);
    REQUIRE(ours.stepped == reference.stepped);
    for (size_t i = 0; i < ours.params.size(); ++i) REQUIRE(torch::equal(ours.params[i], reference.params[i]));
    // The run exercised both directions of the update.
    REQUIRE(*std::max_element(ours.scales.begin(), ours.scales.end()) > 4096.0);
    REQUIRE(*std::min_element(ours.scales.begin(), ours.scales.end()) < 4096.0);
  }
}

TEST_CASE("GradScaler::unscale_with_norm_ returns the norm of the unscaled grads", "[grad_scaler]") {
  for (const auto& device : devices_under_test()) {
    Loop loop(device);
    ampkit::GradScaler scaler(ampkit::GradScalerOptions().init_scale(1024.0));
    loop.backward(0, [&](torch::Tensor loss) { return scaler.scale(loss); });
    const auto norm = scaler.unscale_with_norm_(*loop.optimizer);
    double exact = 0.0;
    for (const auto& p : loop.model->parameters()) exact += p.grad().to(torch::kDouble).square().sum().item<double>();
    exact = std::sqrt(exact);
    // CPU accumulates in double (fp32 rounding of the result only); CUDA in fp32 per block.
    REQUIRE(std::abs(norm.item<double>() - exact) <= 2e-5 * exact);
    REQUIRE(scaler.step(*loop.optimizer));
    scaler.update();
  }
}

TEST_CASE("GradScaler hysteresis and bounds", "[grad_scaler]") {
  Loop loop(torch::kCPU);
  ampkit::GradScaler scaler(
      ampkit::GradScalerOptions().init_scale(64).growth_interval(1).hysteresis(2).min_scale(16).max_scale(128));
  std::vector<double> history;
  for (int step = 0; step < 9; ++step) {
    loop.optimizer->zero_grad();
    scaler.scale(torch::mse_loss(loop.model->forward(loop.inputs[step]), loop.targets[step])).backward();
    if (step == 1 || (step >= 3 && step <= 6)) {
      torch::NoGradGuard no_grad;
      loop.model->bias.grad()[0] = kInf;
    }
    scaler.step(*loop.optimizer);
    scaler.update();
    history.push_back(scaler.get_scale());
  }
  REQUIRE(history == std::vector<double>{128, 128, 128, 128, 64, 32, 16, 32, 64});
  REQUIRE(scaler.found_inf().item<float>() == 0.0f);
}

TEST_CASE("GradScaler state machine errors", "[grad_scaler]") {
  torch::nn::Linear model(16, 4);
  torch::optim::SGD optimizer(model->parameters(), 0.1);
  ampkit::GradScaler scaler;
  CHECK(throws_with([&] { scaler.step(optimizer); }, "attempted step but the scale was never initialised"));
  CHECK(throws_with([&] { scaler.update(); }, "attempted update but the scale was never initialised"));
  scaler.scale(torch::ones({}));
  CHECK(throws_with([&] { scaler.step(optimizer); }, "no inf checks were recorded for this optimizer"));
  scaled_backward(scaler, model);
  scaler.unscale_(optimizer);
  CHECK(throws_with([&] { scaler.unscale_(optimizer); }, "unscale_() has already been called on this optimizer"));
  scaler.step(optimizer);
  CHECK(throws_with([&] { scaler.step(optimizer); }, "step() has already been called since the last update()"));
  CHECK(throws_with([&] { scaler.unscale_(optimizer); }, "unscale_() is being called after step()"));
  scaler.update();
  CHECK(throws_with([&] { scaler.update(); }, "no inf checks were recorded prior to update()"));
  CHECK(throws_with([&] { scaler.update(0.0); }, "new_scale must be a finite number > 0, got 0"));
  scaler.update(256.0);
  CHECK(scaler.get_scale() == 256.0);
}

TEST_CASE("GradScaler rejects bad options", "[grad_scaler]") {
  using Options = ampkit::GradScalerOptions;
  CHECK(throws_with([] { ampkit::GradScaler(Options().growth_factor(1.0)); },
                    "growth_factor must be a finite number > 1, got 1"));
  CHECK(throws_with([] { ampkit::GradScaler(Options().backoff_factor(1.0)); }, "backoff_factor must be in (0, 1), got 1"));
  CHECK(throws_with([] { ampkit::GradScaler(Options().backoff_factor(0.0)); }, "backoff_factor must be in (0, 1), got 0"));
  CHECK(throws_with([] { ampkit::GradScaler(Options().growth_interval(0)); }, "growth_interval must be in [1, 2^31-1], got 0"));
  CHECK(throws_with([] { ampkit::GradScaler(Options().hysteresis(0)); }, "hysteresis must be in [1, 2^31-1], got 0"));
  CHECK(throws_with([] { ampkit::GradScaler(Options().init_scale(-1)); }, "init_scale must be a finite number > 0"));
  CHECK(throws_with([] { ampkit::GradScaler(Options().min_scale(8).max_scale(4)); },
                    "min_scale (8) must not exceed max_scale (4)"));
}

TEST_CASE("GradScaler state_dict round-trips and rejects malformed state", "[grad_scaler]") {
  Loop loop(torch::kCPU);
  ampkit::GradScaler scaler(ampkit::GradScalerOptions().init_scale(1024).growth_interval(2).hysteresis(2));
  for (int step = 0; step < 7; ++step) {
    loop.backward(step, [&](torch::Tensor loss) { return scaler.scale(loss); });
    scaler.step(*loop.optimizer);
    scaler.update();
  }
  const ampkit::GradScalerState state = scaler.state_dict();
  CHECK(state.hysteresis == 2);
  CHECK(state.skipped_steps == 1);
  ampkit::GradScaler restored;
  restored.load_state_dict(state);
  CHECK(restored.state_dict() == state);

  auto bad = state;
  bad.scale = 0.0;
  CHECK(throws_with([&] { restored.load_state_dict(bad); }, "load_state_dict: scale must be a finite number > 0, got 0"));
  bad = state;
  bad.growth_tracker = -1;
  CHECK(throws_with([&] { restored.load_state_dict(bad); }, "growth_tracker must be in [0, 2^31-1], got -1"));
  bad = state;
  bad.backoff_factor = 1.5;
  CHECK(throws_with([&] { restored.load_state_dict(bad); }, "backoff_factor must be in (0, 1), got 1.5"));
  CHECK(restored.state_dict() == state);  // nothing changed
}

TEST_CASE("GradScaler checkpoints through torch::save / torch::load", "[grad_scaler]") {
  Loop loop(torch::kCPU);
  ampkit::GradScaler scaler(ampkit::GradScalerOptions().init_scale(512).growth_interval(2).max_scale(1e6));
  for (int step = 0; step < 6; ++step) {
    loop.backward(step, [&](torch::Tensor loss) { return scaler.scale(loss); });
    scaler.step(*loop.optimizer);
    scaler.update();
  }
  std::stringstream stream;
  torch::save(scaler, stream);
  ampkit::GradScaler restored;
  torch::load(restored, stream);
  CHECK(restored.state_dict() == scaler.state_dict());
  CHECK(restored.options().max_scale() == 1e6);

  torch::serialize::OutputArchive unrelated;
  unrelated.write("something.else", c10::IValue(1.0));
  std::stringstream unrelated_stream;
  unrelated.save_to(unrelated_stream);
  CHECK(throws_with([&] { torch::load(restored, unrelated_stream); },
                    "the archive has no entry ampkit.grad_scaler.scale"));
}

TEST_CASE("A disabled GradScaler is transparent", "[grad_scaler]") {
  torch::nn::Linear model(16, 4);
  torch::optim::SGD optimizer(model->parameters(), 0.1);
  ampkit::GradScaler scaler(ampkit::GradScalerOptions().enabled(false));
  auto loss = model->forward(torch::randn({2, 16})).square().mean();
  CHECK(scaler.scale(loss).is_same(loss));
  loss.backward();
  const auto before = model->weight.detach().clone();
  CHECK(scaler.step(optimizer));
  CHECK(!torch::equal(before, model->weight.detach()));
  scaler.update();
  CHECK(scaler.get_scale() == 1.0);
  CHECK(!scaler.is_enabled());
}

TEST_CASE("unscale_and_check_ and update_scale_ through the C++ entry points", "[grad_scaler]") {
  for (const auto& device : devices_under_test()) {
    auto grads = std::vector<torch::Tensor>{torch::full({1000}, 8.0, torch::dtype(torch::kBFloat16).device(device)),
                                            torch::full({7, 3}, -4.0, torch::dtype(torch::kHalf).device(device)).t()};
    auto found_inf = torch::zeros({1}, torch::device(device));
    auto norm = torch::zeros({1}, torch::device(device));
    ampkit::unscale_and_check_(grads, found_inf, torch::full({1}, 0.25f, torch::device(device)), norm);
    CHECK(grads[0].eq(2.0).all().item<bool>());
    CHECK(grads[1].eq(-1.0).all().item<bool>());
    CHECK(found_inf.item<float>() == 0.0f);
    CHECK(std::abs(norm.item<double>() - std::sqrt(1000 * 4.0 + 21)) < 1e-4);

    auto scale = torch::full({}, 1024.0f, torch::device(device));
    auto growth = torch::zeros({}, torch::dtype(torch::kInt).device(device));
    auto hysteresis = torch::zeros({}, torch::dtype(torch::kInt).device(device));
    ampkit::update_scale_(scale, growth, hysteresis, torch::ones({}, torch::device(device)), 2.0, 0.5, 10);
    CHECK(scale.item<float>() == 512.0f);
    CHECK(throws_with([&] { ampkit::update_scale_(scale, growth, hysteresis, found_inf, 1.0, 0.5, 10); },
                      "growth_factor must be a finite number > 1, got 1"));
    CHECK(throws_with([&] { ampkit::update_scale_(scale, growth.to(torch::kLong), hysteresis, found_inf, 2.0, 0.5, 10); },
                      "growth_tracker must be a one-element int32 tensor, got dtype int64"));
  }
}
