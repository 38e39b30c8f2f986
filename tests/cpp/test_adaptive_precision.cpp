// ampkit::AdaptivePrecision in a torch:: C++ loop: a layer whose fp16 outputs pass 65,504 (brought back
// by a LayerNorm) makes every step skip under plain fp16 autocast; the controller promotes exactly
// that layer to FP32, the others stay fp16, training proceeds; demotion after clean steps with
// backoff; state round trip and refusal. fp16 autocast on the CPU (torch 2.11 supports it).
#include "test_helpers.h"

#include <sstream>
#include <string>
#include <vector>

#include "ampkit/ampkit.h"

using ampkit::AdaptivePrecision;
using ampkit::AdaptivePrecisionOptions;
using ampkit_test::throws_with;

namespace {

constexpr int kLogEvery = 5;

struct Model {
  explicit Model(AdaptivePrecision& adaptive, double boom_gain) {
    torch::manual_seed(0);
    fc = adaptive.wrap("fc", torch::nn::Linear(16, 32));
    boom = adaptive.wrap("boom", torch::nn::Linear(32, 32));
    head = adaptive.wrap("head", torch::nn::Linear(32, 4));
    set_boom_gain(boom_gain);
    net = torch::nn::Sequential(fc, torch::nn::ReLU(), boom, torch::nn::LayerNorm(torch::nn::LayerNormOptions({32})),
                                head);
  }
  // gain 1e5: the fp16 GEMM's outputs pass 65,504 (inf); in fp32 they are large but finite.
  void set_boom_gain(double gain) {
    torch::NoGradGuard no_grad;
    auto& linear = *boom->modules(false)[0]->as<torch::nn::Linear>();
    torch::manual_seed(1);
    linear.weight.copy_(torch::randn({32, 32}) * (gain / 32.0));
  }
  ampkit::AdaptiveLayer fc{nullptr}, boom{nullptr}, head{nullptr};
  torch::nn::Sequential net{nullptr};
};

// Four separable blobs in 16 dimensions.
std::pair<torch::Tensor, torch::Tensor> blobs() {
  torch::manual_seed(2);
  const torch::Tensor labels = torch::arange(256) % 4;
  const torch::Tensor centers = torch::randn({4, 16}) * 3;
  return {centers.index_select(0, labels) + torch::randn({256, 16}), labels};
}

struct Run {
  int64_t skipped = 0;
  int64_t skipped_after_promotion = 0;
  int64_t promotion_step = -1;
  std::vector<ampkit::PrecisionChange> changes;
  double accuracy = 0;
};

Run train(AdaptivePrecision& adaptive, Model& model, int steps, const std::function<void(int)>& before_step = {}) {
  const auto [x, y] = blobs();
  ampkit::GradScaler scaler(ampkit::GradScalerOptions().init_scale(1024));
  ampkit::optim::AdamW optimizer(model.net->parameters(), ampkit::optim::AdamWOptions(1e-2));
  Run run;
  for (int step = 1; step <= steps; ++step) {
    if (before_step) before_step(step);
    optimizer.zero_grad();
    torch::Tensor loss;
    {
      const auto region = adaptive.region();
      loss = torch::nn::functional::cross_entropy(model.net->forward(x), y);
    }
    scaler.scale(loss).backward();
    adaptive.after_backward();
    scaler.step(optimizer);
    scaler.update();
    const bool skipped = scaler.found_inf().item<float>() != 0;  // the test's own read, not the controller's
    run.skipped += skipped;
    if (run.promotion_step >= 0) run.skipped_after_promotion += skipped;
    if (step % kLogEvery == 0) {
      for (const auto& change : adaptive.update(step)) {
        run.changes.push_back(change);
        if (change.to_dtype == "float32" && run.promotion_step < 0) run.promotion_step = step;
      }
    }
  }
  torch::NoGradGuard no_grad;
  const auto region = adaptive.region();
  run.accuracy = (model.net->forward(x).argmax(1) == y).to(torch::kFloat).mean().item<double>();
  return run;
}

ampkit::autocast::Policy fp16_cpu() { return ampkit::autocast::Policy::torch_default(torch::kCPU, torch::kHalf); }

}  // namespace

TEST_CASE("adaptive precision promotes exactly the overflowing layer; the others stay fp16", "[adaptive]") {
  SECTION("frozen from the start (plain fp16): every step skips") {
    AdaptivePrecision adaptive(fp16_cpu());
    Model model(adaptive, 1e5);
    adaptive.freeze();
    const Run run = train(adaptive, model, 20);
    CHECK(run.skipped == 20);
    CHECK(run.changes.empty());
  }
  SECTION("adaptive") {
    AdaptivePrecision adaptive(fp16_cpu());
    Model model(adaptive, 1e5);
    const Run run = train(adaptive, model, 120);
    REQUIRE(run.changes.size() == 1);
    CHECK(run.changes[0].target == "boom");
    CHECK(run.changes[0].from_dtype == "float16");
    CHECK(run.changes[0].to_dtype == "float32");
    CHECK(run.promotion_step == 2 * kLogEvery);  // blamed in 2 of the first 2 logging windows
    CHECK(run.skipped == run.promotion_step);    // every step until then, none after
    CHECK(run.skipped_after_promotion == 0);
    CHECK(run.accuracy >= 0.95);
    CHECK(adaptive.is_promoted("boom"));
    CHECK_FALSE(adaptive.is_promoted("fc"));

    // The dtypes the layers now run in: fc and head fp16, boom fp32.
    const auto [x, y] = blobs();
    const auto region = adaptive.region();
    const torch::Tensor hidden = model.fc->forward(x);
    CHECK(hidden.scalar_type() == torch::kHalf);
    CHECK(model.boom->forward(torch::relu(hidden)).scalar_type() == torch::kFloat);
    CHECK(model.head->forward(torch::randn({2, 32})).scalar_type() == torch::kHalf);
    std::ostringstream text;
    text << run.changes[0];
    CHECK(text.str().rfind("step 10: boom float16 -> float32 (first non-finite output or gradient in 2 of", 0) == 0);
  }
}

TEST_CASE("adaptive precision demotes after clean steps and doubles the wait on a relapse", "[adaptive]") {
  AdaptivePrecision adaptive(fp16_cpu(), AdaptivePrecisionOptions{3, 2, /*demote_after=*/10});
  Model model(adaptive, 1e5);
  // In fp16 the layer overflows until step 20 and again from step 61 (the gain), never in fp32.
  const Run run = train(adaptive, model, 110, [&](int step) {
    if (step == 21) model.set_boom_gain(1.0);
    if (step == 61) model.set_boom_gain(1e5);
  });
  std::vector<std::string> moves;
  for (const auto& change : run.changes) moves.push_back(change.target + " " + change.to_dtype + " " + std::to_string(change.step));
  // Promoted at 10; 10 clean steps in fp32 -> back to fp16 at 20 (it stays: gain 1). Relapse from 61:
  // promoted at 70; the wait has doubled to 20 clean steps -> fp16 at 90, overflows -> fp32 at 100.
  CHECK(moves == std::vector<std::string>{"boom float32 10", "boom float16 20", "boom float32 70", "boom float16 90",
                                          "boom float32 100"});
  CHECK(adaptive.state_dict().promotions.at("boom") == 3);
  CHECK(run.changes[1].reason == "clean for 10 steps");
  CHECK(run.changes[3].reason == "clean for 20 steps");
}

TEST_CASE("adaptive precision state: round trip, refusal leaves it unchanged, bad options", "[adaptive]") {
  AdaptivePrecision adaptive(fp16_cpu());
  Model model(adaptive, 1e5);
  train(adaptive, model, 15);
  const ampkit::AdaptivePrecisionState state = adaptive.state_dict();
  REQUIRE(state.promoted_at.count("boom") == 1);

  AdaptivePrecision restored(fp16_cpu());
  Model other(restored, 1e5);
  restored.load_state_dict(state);
  CHECK(restored.state_dict() == state);
  CHECK(other.boom->promoted());

  ampkit::AdaptivePrecisionState bad = state;
  bad.promoted_at["nope"] = 3;
  CHECK(throws_with([&] { restored.load_state_dict(bad); }, "names 'nope', which is not a wrapped layer"));
  bad = state;
  bad.clean_steps["boom"] = -1;
  CHECK(throws_with([&] { restored.load_state_dict(bad); }, "the counter of 'boom' must be >= 0, got -1"));
  CHECK(restored.state_dict() == state);

  CHECK(throws_with([] { AdaptivePrecision(fp16_cpu(), AdaptivePrecisionOptions{3, 4, 0}); },
                    "promote_after must be in [1, window = 3], got 4"));
  CHECK(throws_with([&] { adaptive.wrap("fc", torch::nn::Linear(2, 2)); }, "a layer named 'fc' is wrapped already"));
}
