// ampkit::GradScaler with float64 parameters (an fp32 body and a float64 head), against the same
// loop driven by torch's own loss-scaling ops (what torch.amp.GradScaler runs: the float64 grads
// times the float32 inv_scale in double, the inf/NaN test in double). Bitwise: scales, skipped
// steps, every gradient after every step and the parameters.
#include "test_helpers.h"

#include <cmath>
#include <limits>
#include <map>
#include <vector>

#include "ampkit/ampkit.h"

using ampkit_test::devices_under_test;
using ampkit_test::throws_with;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// Step -> non-finite value written into a head (float64) or body (fp32) gradient.
const std::map<int, double> kHeadValues = {{2, kInf}, {9, kNaN}, {10, -kInf}};
const std::map<int, double> kBodyValues = {{14, kNaN}};
constexpr int kSteps = 20;
constexpr int64_t kGrowthInterval = 3;

struct StepRecord {
  double scale;
  bool stepped;
  std::vector<torch::Tensor> grads;
};

struct Float64HeadLoop {
  torch::nn::Linear body{nullptr};
  torch::nn::Linear head{nullptr};
  std::unique_ptr<torch::optim::SGD> optimizer;
  std::vector<torch::Tensor> inputs, targets;

  explicit Float64HeadLoop(const torch::Device& device) {
    torch::manual_seed(0);
    body = torch::nn::Linear(16, 8);
    head = torch::nn::Linear(8, 4);
    body->to(device);
    head->to(device, torch::kDouble);
    std::vector<torch::Tensor> params = body->parameters();
    for (const auto& p : head->parameters()) params.push_back(p);
    optimizer = std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(0.05).momentum(0.9));
    for (int i = 0; i < kSteps; ++i) {
      inputs.push_back(torch::randn({8, 16}).to(device));
      targets.push_back(torch::randn({8, 4}, torch::kDouble).to(device));
    }
  }

  void backward(int step, const std::function<torch::Tensor(torch::Tensor)>& scale) {
    optimizer->zero_grad();
    const auto hidden = torch::relu(body->forward(inputs[step])).to(torch::kDouble);
    scale(torch::mse_loss(head->forward(hidden), targets[step])).backward();
    torch::NoGradGuard no_grad;
    if (auto it = kHeadValues.find(step); it != kHeadValues.end()) head->weight.grad()[1][step % 8] = it->second;
    if (auto it = kBodyValues.find(step); it != kBodyValues.end()) body->bias.grad()[step % 8] = it->second;
  }

  std::vector<torch::Tensor> grads() const {
    std::vector<torch::Tensor> result;
    for (const auto& p : optimizer->parameters()) result.push_back(p.grad().clone());
    return result;
  }
};

std::vector<StepRecord> run_with_ampkit(Float64HeadLoop& loop) {
  ampkit::GradScaler scaler(ampkit::GradScalerOptions().init_scale(4096.0).growth_interval(kGrowthInterval));
  std::vector<StepRecord> records;
  for (int step = 0; step < kSteps; ++step) {
    loop.backward(step, [&](torch::Tensor loss) { return scaler.scale(loss); });
    const bool stepped = scaler.step(*loop.optimizer);
    std::vector<torch::Tensor> grads = loop.grads();
    scaler.update();
    records.push_back({scaler.get_scale(), stepped, grads});
  }
  return records;
}

// torch.amp.GradScaler's algorithm with torch's ops: one unscale call per dtype, as torch's does.
std::vector<StepRecord> run_with_torch_ops(Float64HeadLoop& loop, const torch::Device& device) {
  auto scale = torch::full({}, 4096.0, torch::dtype(torch::kFloat).device(device));
  auto growth_tracker = torch::zeros({}, torch::dtype(torch::kInt).device(device));
  std::vector<StepRecord> records;
  for (int step = 0; step < kSteps; ++step) {
    loop.backward(step, [&](torch::Tensor loss) { return loss * scale; });
    std::map<torch::ScalarType, std::vector<torch::Tensor>> by_dtype;
    for (const auto& p : loop.optimizer->parameters()) by_dtype[p.grad().scalar_type()].push_back(p.grad());
    auto found_inf = torch::zeros({}, torch::dtype(torch::kFloat).device(device));
    const auto inv_scale = scale.to(torch::kDouble).reciprocal().to(torch::kFloat);
    for (auto& [dtype, grads] : by_dtype) at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale);
    const bool clean = found_inf.item<float>() == 0.0f;
    if (clean) loop.optimizer->step();
    std::vector<torch::Tensor> grads = loop.grads();
    at::_amp_update_scale_(scale, growth_tracker, found_inf, 2.0, 0.5, kGrowthInterval);
    records.push_back({scale.item<float>(), clean, grads});
  }
  return records;
}

}  // namespace

TEST_CASE("GradScaler unscales float64 gradients exactly as torch's loss scaling does", "[grad_scaler][float64]") {
  for (const auto& device : devices_under_test()) {
    Float64HeadLoop ours_loop(device);
    Float64HeadLoop reference_loop(device);
    REQUIRE(ours_loop.head->weight.scalar_type() == torch::kDouble);
    const auto ours = run_with_ampkit(ours_loop);
    const auto reference = run_with_torch_ops(reference_loop, device);
    REQUIRE(ours.size() == reference.size());
    int skipped = 0;
    for (size_t step = 0; step < ours.size(); ++step) {
      INFO("step " << step << " on " << device);
      REQUIRE(ours[step].scale == reference[step].scale);
      REQUIRE(ours[step].stepped == reference[step].stepped);
      for (size_t i = 0; i < ours[step].grads.size(); ++i) {
        const auto& a = ours[step].grads[i];
        const auto& b = reference[step].grads[i];
        REQUIRE(a.scalar_type() == b.scalar_type());
        // NaN == NaN here: the gradients of a skipped step keep their NaN.
        REQUIRE(torch::equal(torch::isnan(a), torch::isnan(b)));
        REQUIRE(torch::equal(torch::nan_to_num(a, 0.0), torch::nan_to_num(b, 0.0)));
      }
      skipped += ours[step].stepped ? 0 : 1;
    }
    // The non-finite steps were skipped, and only those.
    REQUIRE(skipped == 4);
    const auto ours_params = ours_loop.optimizer->parameters();
    const auto reference_params = reference_loop.optimizer->parameters();
    for (size_t i = 0; i < ours_params.size(); ++i) REQUIRE(torch::equal(ours_params[i], reference_params[i]));
  }
}

TEST_CASE("GradScaler::unscale_with_norm_ includes float64 gradients, summed in double", "[grad_scaler][float64]") {
  for (const auto& device : devices_under_test()) {
    Float64HeadLoop loop(device);
    ampkit::GradScaler scaler(ampkit::GradScalerOptions().init_scale(1024.0));
    loop.backward(0, [&](torch::Tensor loss) { return scaler.scale(loss); });
    const auto norm = scaler.unscale_with_norm_(*loop.optimizer);
    REQUIRE(norm.scalar_type() == torch::kFloat);
    double exact = 0.0;
    for (const auto& p : loop.optimizer->parameters()) {
      exact += p.grad().to(torch::kDouble).square().sum().item<double>();
    }
    exact = std::sqrt(exact);
    // CPU: double sums, one rounding to float32; CUDA's fp32 kernel sums per thread first.
    REQUIRE(std::abs(norm.item<double>() - exact) <= 2e-5 * exact);
    REQUIRE(scaler.step(*loop.optimizer));
    scaler.update();
  }
}

TEST_CASE("GradScaler: a float64 gradient beyond float32's range is not an overflow", "[grad_scaler][float64]") {
  // 1e300 is finite in double: torch unscales it in double and steps; a float32 test would call it inf.
  for (const auto& device : devices_under_test()) {
    Float64HeadLoop loop(device);
    ampkit::GradScaler scaler(ampkit::GradScalerOptions().init_scale(1024.0));
    loop.backward(0, [&](torch::Tensor loss) { return scaler.scale(loss); });
    {
      torch::NoGradGuard no_grad;
      loop.head->bias.grad()[0] = 1e300;
    }
    scaler.unscale_(*loop.optimizer);
    REQUIRE(loop.head->bias.grad()[0].item<double>() == 1e300 * (1.0 / 1024.0));
    REQUIRE(scaler.step(*loop.optimizer));
    scaler.update();
    REQUIRE(scaler.found_inf().item<float>() == 0.0f);
  }
}

TEST_CASE("GradScaler refuses integer gradients as torch does, naming the accepted dtypes", "[grad_scaler][float64]") {
  auto param = torch::zeros({3}, torch::kInt);
  param.mutable_grad() = torch::ones({3}, torch::kInt);
  torch::optim::SGD optimizer({param}, torch::optim::SGDOptions(0.1));
  ampkit::GradScaler scaler;
  scaler.scale(torch::ones({}));
  CHECK(throws_with([&] { scaler.unscale_(optimizer); },
                    "grads[0] must have dtype float32, float16, bfloat16 or float64, got int32"));
}
