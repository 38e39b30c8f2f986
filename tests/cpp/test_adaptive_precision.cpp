// ampkit::AdaptivePrecision in a torch:: C++ loop, on the CPU with fp16 autocast (torch 2.11 supports
// it). The model has a layer whose fp16 outputs pass 65,504 (brought back by a LayerNorm), so every
// step skips under plain fp16. Covered: per-layer promotion (blame after a non-finite step and on
// every step), demotion with backoff, blame of a nested layer's own parameters, per-op promotion from
// sampled diagnostic steps, the warm-up schedule, the fallback fp16 -> bf16 -> FP32, the underflow
// guide, a resumed run equal bit for bit to an uninterrupted one, and state validation.
#include "test_helpers.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "ampkit/ampkit.h"

using ampkit::AdaptivePrecision;
using ampkit::AdaptivePrecisionOptions;
using ampkit::BlameMode;
using ampkit_test::throws_with;

namespace {

constexpr int kLogEvery = 5;

// Returns inf whenever it runs in a reduced precision (the last-resort fallback's trigger), else x.
struct OverflowsBelowFloat32Impl : torch::nn::Module {
  torch::Tensor forward(const torch::Tensor& x) {
    if (x.scalar_type() == torch::kFloat) return x;
    return x + std::numeric_limits<float>::infinity();
  }
};
TORCH_MODULE(OverflowsBelowFloat32);

struct Model {
  Model(AdaptivePrecision& adaptive, double boom_gain, bool overflow_below_float32 = false) {
    torch::manual_seed(0);
    fc = adaptive.wrap("fc", torch::nn::Linear(16, 32));
    boom = adaptive.wrap("boom", torch::nn::Linear(32, 32));
    head = adaptive.wrap("head", torch::nn::Linear(32, 4));
    set_boom_gain(boom_gain);
    net = torch::nn::Sequential(fc, torch::nn::ReLU(), boom, torch::nn::LayerNorm(torch::nn::LayerNormOptions({32})),
                                head);
    if (overflow_below_float32) net->push_back(OverflowsBelowFloat32());
  }
  // gain 1e5: the fp16 GEMM's outputs pass 65,504 (inf); in fp32 and bf16 they are large but finite.
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

ampkit::autocast::Policy fp16_cpu() { return ampkit::autocast::Policy::torch_default(torch::kCPU, torch::kHalf); }

// A training setup: scaler, controller, model, optimizer.
struct Setup {
  explicit Setup(AdaptivePrecisionOptions options = {}, double boom_gain = 1e5,
                 ampkit::autocast::Policy policy = fp16_cpu(), bool overflow_below_float32 = false,
                 double init_scale = 1024)
      : scaler(ampkit::GradScalerOptions().init_scale(init_scale)),
        adaptive(policy, options, &scaler),
        model(adaptive, boom_gain, overflow_below_float32),
        optimizer(model.net->parameters(), ampkit::optim::AdamWOptions(1e-2)) {}
  ampkit::GradScaler scaler;
  AdaptivePrecision adaptive;
  Model model;
  ampkit::optim::AdamW optimizer;
};

struct Run {
  int64_t skipped = 0;
  int64_t skipped_after_first_change = 0;
  int64_t first_change_step = -1;
  std::vector<ampkit::PrecisionChange> changes;
  std::vector<torch::ScalarType> fc_dtypes;  // per step, the dtype fc's forward produced
  double accuracy = 0;
};

struct TrainHooks {
  std::function<void(int)> before_step;
  std::function<void()> after_backward_pass;  // between backward and after_backward
  double loss_factor = 1.0;
};

void train(Setup& setup, Run& run, int first_step, int last_step, const TrainHooks& hooks = {}) {
  const auto [x, y] = blobs();
  auto& [scaler, adaptive, model, optimizer] = setup;
  for (int step = first_step; step <= last_step; ++step) {
    if (hooks.before_step) hooks.before_step(step);
    optimizer.zero_grad();
    torch::Tensor loss;
    {
      const auto region = adaptive.region();
      run.fc_dtypes.push_back(model.fc->forward(x).scalar_type());
      loss = torch::nn::functional::cross_entropy(model.net->forward(x), y) * hooks.loss_factor;
    }
    scaler.scale(loss).backward();
    if (hooks.after_backward_pass) hooks.after_backward_pass();
    adaptive.after_backward(loss);
    scaler.step(optimizer);
    scaler.update();
    const bool skipped = scaler.found_inf().item<float>() != 0;  // the test's own read, not the controller's
    run.skipped += skipped;
    if (run.first_change_step >= 0) run.skipped_after_first_change += skipped;
    if (step % kLogEvery == 0) {
      for (const auto& change : adaptive.update(step, step / 20)) {
        run.changes.push_back(change);
        if (run.first_change_step < 0) run.first_change_step = step;
      }
    }
  }
  torch::NoGradGuard no_grad;
  const auto region = adaptive.region();
  run.accuracy = (model.net->forward(x).argmax(1) == y).to(torch::kFloat).mean().item<double>();
}

Run train(Setup& setup, int steps, const TrainHooks& hooks = {}) {
  Run run;
  train(setup, run, 1, steps, hooks);
  return run;
}

std::vector<std::string> moves(const std::vector<ampkit::PrecisionChange>& changes) {
  std::vector<std::string> result;
  for (const auto& change : changes) {
    result.push_back(change.target + " " + change.from_dtype + "->" + change.to_dtype + " " +
                     std::to_string(change.step));
  }
  return result;
}

// Collects TORCH_WARN messages while alive.
struct CapturedWarnings : c10::WarningHandler {
  CapturedWarnings() : previous(c10::WarningUtils::get_warning_handler()) { c10::WarningUtils::set_warning_handler(this); }
  ~CapturedWarnings() override { c10::WarningUtils::set_warning_handler(previous); }
  void process(const c10::Warning& warning) override { messages.push_back(warning.msg()); }
  c10::WarningHandler* previous;
  std::vector<std::string> messages;
};

}  // namespace

TEST_CASE("adaptive precision promotes exactly the overflowing layer; the others stay fp16", "[adaptive]") {
  SECTION("frozen from the start (plain fp16): every step skips") {
    Setup setup;
    setup.adaptive.freeze();
    const Run run = train(setup, 20);
    CHECK(run.skipped == 20);
    CHECK(run.changes.empty());
  }
  for (const BlameMode blame : {BlameMode::kAfterNonFinite, BlameMode::kAlways}) {
    DYNAMIC_SECTION("blame " << (blame == BlameMode::kAlways ? "on every step" : "after a non-finite step")) {
      AdaptivePrecisionOptions options;
      options.blame = blame;
      Setup setup(options);
      const Run run = train(setup, 120);
      REQUIRE(run.changes.size() == 1);
      CHECK(run.changes[0].target == "boom");
      CHECK(run.changes[0].from_dtype == "float16");
      CHECK(run.changes[0].to_dtype == "float32");
      // Every step: blamed in the first 2 windows. By default the first window only learns (from the
      // scaler's counter) that steps overflowed; blame is gathered from then on: the third.
      CHECK(run.first_change_step == (blame == BlameMode::kAlways ? 2 : 3) * kLogEvery);
      CHECK(run.skipped == run.first_change_step);  // every step until then, none after
      CHECK(run.skipped_after_first_change == 0);
      CHECK(run.accuracy >= 0.95);
      CHECK(setup.adaptive.is_promoted("boom"));
      CHECK_FALSE(setup.adaptive.is_promoted("fc"));

      // The dtypes the layers now run in: fc and head fp16, boom fp32.
      const auto [x, y] = blobs();
      const auto region = setup.adaptive.region();
      const torch::Tensor hidden = setup.model.fc->forward(x);
      CHECK(hidden.scalar_type() == torch::kHalf);
      CHECK(setup.model.boom->forward(torch::relu(hidden)).scalar_type() == torch::kFloat);
      CHECK(setup.model.head->forward(torch::randn({2, 32})).scalar_type() == torch::kHalf);
      std::ostringstream text;
      text << run.changes[0];
      CHECK(text.str().rfind("step " + std::to_string(run.first_change_step) +
                                 ": boom float16 -> float32 (first non-finite output or gradient in 2 of",
                             0) == 0);
    }
  }
}

TEST_CASE("adaptive precision demotes after clean steps and doubles the wait on a relapse", "[adaptive]") {
  AdaptivePrecisionOptions options{3, 2, /*demote_after=*/10};
  options.blame = BlameMode::kAlways;
  Setup setup(options);
  // In fp16 the layer overflows until step 20 and again from step 61 (the gain), never in fp32.
  const Run run = train(setup, 110, {[&](int step) {
                          if (step == 21) setup.model.set_boom_gain(1.0);
                          if (step == 61) setup.model.set_boom_gain(1e5);
                        }});
  // Promoted at 10; 10 clean steps in fp32 -> back to fp16 at 20 (it stays: gain 1). Relapse from 61:
  // promoted at 70; the wait has doubled to 20 clean steps -> fp16 at 90, overflows -> fp32 at 100.
  CHECK(moves(run.changes) == std::vector<std::string>{"boom float16->float32 10", "boom float32->float16 20",
                                                       "boom float16->float32 70", "boom float32->float16 90",
                                                       "boom float16->float32 100"});
  CHECK(setup.adaptive.state_dict().promotions.at("boom") == 3);
  CHECK(run.changes[1].reason == "clean for 10 steps");
  CHECK(run.changes[3].reason == "clean for 20 steps");
}

namespace {
// A block with a parameter of its own and a wrapped layer inside (registered after the block is
// wrapped, so the block comes first in wrap order).
struct BlockImpl : torch::nn::Module {
  BlockImpl() { gain = register_parameter("gain", torch::ones({8})); }
  torch::Tensor forward(const torch::Tensor& x) { return inner->forward(x) * gain; }
  torch::Tensor gain;
  ampkit::AdaptiveLayer inner{nullptr};
};
TORCH_MODULE(Block);
}  // namespace

TEST_CASE("adaptive precision blames a nested layer's parameters on it, and a block's own on the block",
          "[adaptive]") {
  for (const std::string poisoned : {"inner", "block"}) {
    DYNAMIC_SECTION("non-finite gradient in " << poisoned) {
      ampkit::GradScaler scaler(ampkit::GradScalerOptions().init_scale(1));
      AdaptivePrecisionOptions options{1, 1, 0};
      options.blame = BlameMode::kAlways;
      AdaptivePrecision adaptive(fp16_cpu(), options, &scaler);
      torch::manual_seed(0);
      Block block;
      ampkit::AdaptiveLayer wrapped = adaptive.wrap("block", block);
      block->inner = block->register_module("inner", adaptive.wrap("inner", torch::nn::Linear(8, 8)));
      {
        const auto region = adaptive.region();
        wrapped->forward(torch::randn({4, 8})).to(torch::kFloat).sum().backward();
      }
      torch::NoGradGuard no_grad;
      auto& linear = *block->inner->modules(false)[0]->as<torch::nn::Linear>();
      (poisoned == "inner" ? linear.weight : block->gain).grad()[0].fill_(std::numeric_limits<float>::infinity());
      adaptive.after_backward();
      const auto changes = adaptive.update(1);
      REQUIRE(changes.size() == 1);
      CHECK(changes[0].target == poisoned);
    }
  }
}

TEST_CASE("adaptive precision moves an op kind that overflows to the fp32 list from sampled steps", "[adaptive]") {
  AdaptivePrecisionOptions options;
  options.layers = false;
  options.ops = true;
  Setup setup(options);
  const Run run = train(setup, 60);
  // Window 1 (steps 1-5) overflows: step 6 is sampled, then step 11: the output of addmm (what
  // Linear runs on the CPU) is the first non-finite one in 2 of 2 sampled steps -> denied at the
  // logging point of step 15.
  REQUIRE(run.changes.size() == 1);
  CHECK(run.changes[0].target == "op:aten::addmm");
  CHECK(run.changes[0].step == 15);
  CHECK(run.changes[0].reason == "first non-finite op output in 2 of the last 2 sampled diagnostic steps");
  CHECK(setup.adaptive.policy().list_of("aten::addmm") == ampkit::autocast::OpList::kDeny);
  CHECK(run.skipped == 15);
  CHECK(run.skipped_after_first_change == 0);
  // Every Linear runs in fp32 now; before, fc ran fp16.
  CHECK(run.fc_dtypes.front() == torch::kHalf);
  CHECK(run.fc_dtypes.back() == torch::kFloat);
  CHECK(run.accuracy >= 0.95);
}

TEST_CASE("adaptive precision schedule: FP32 warm-up by steps, epochs or loss change", "[adaptive]") {
  SECTION("steps") {
    AdaptivePrecisionOptions options;
    options.warmup_steps = 10;
    Setup setup(options, /*boom_gain=*/1.0);
    CHECK_FALSE(setup.adaptive.active_dtype().has_value());
    const Run run = train(setup, 20);
    CHECK(moves(run.changes) == std::vector<std::string>{"<model> float32->float16 10"});
    CHECK(run.changes[0].reason == "warm-up of 10 steps done");
    // The dtype fc's forward actually ran in: fp32 for steps 1-10, fp16 after.
    CHECK(std::count(run.fc_dtypes.begin(), run.fc_dtypes.begin() + 10, torch::kFloat) == 10);
    CHECK(std::count(run.fc_dtypes.begin() + 10, run.fc_dtypes.end(), torch::kHalf) == 10);
    CHECK(setup.adaptive.state_dict().active_dtype == "float16");
  }
  SECTION("epochs (the test's epoch is step / 20)") {
    AdaptivePrecisionOptions options;
    options.warmup_epochs = 1;
    Setup setup(options, 1.0);
    const Run run = train(setup, 30);
    CHECK(moves(run.changes) == std::vector<std::string>{"<model> float32->float16 20"});
    CHECK(run.changes[0].reason == "warm-up of 1 epochs done");
  }
  SECTION("loss change") {
    AdaptivePrecisionOptions options;
    options.warmup_loss_change = 0.05;
    Setup setup(options, 1.0);
    const Run run = train(setup, 100);
    REQUIRE(run.changes.size() == 1);
    CHECK(run.changes[0].target == "<model>");
    CHECK(run.changes[0].reason.rfind("loss changed by ", 0) == 0);
    CHECK(run.changes[0].reason.find("< 5.00% between logging windows") != std::string::npos);
    const auto switched = static_cast<size_t>(run.changes[0].step);
    CHECK(switched > kLogEvery);
    CHECK(run.fc_dtypes[switched - 1] == torch::kFloat);
    CHECK(run.fc_dtypes[switched] == torch::kHalf);
  }
}

TEST_CASE("adaptive precision falls back fp16 -> bf16 -> FP32 when skips exceed the rate, with a warning",
          "[adaptive]") {
  SECTION("fp16 -> bf16") {
    AdaptivePrecisionOptions options;
    options.layers = false;
    Setup setup(options);
    CapturedWarnings warnings;
    const Run run = train(setup, 40);
    CHECK(moves(run.changes) == std::vector<std::string>{"<model> float16->bfloat16 15"});
    CHECK(run.changes[0].reason == "100% of steps non-finite (> 25%) for 3 logging windows");
    REQUIRE(warnings.messages.size() == 1);
    CHECK(warnings.messages[0].find("falling back from float16 to bfloat16") != std::string::npos);
    CHECK(run.skipped == 15);
    CHECK(run.skipped_after_first_change == 0);
    CHECK(run.fc_dtypes.back() == torch::kBFloat16);  // the dtype ops actually ran in
  }
  SECTION("bf16 -> FP32 (last resort)") {
    AdaptivePrecisionOptions options;
    options.layers = false;
    Setup setup(options, 1.0, ampkit::autocast::Policy::torch_default(torch::kCPU, torch::kBFloat16),
                /*overflow_below_float32=*/true);
    CapturedWarnings warnings;
    const Run run = train(setup, 25);
    CHECK(moves(run.changes) == std::vector<std::string>{"<model> bfloat16->float32 15"});
    CHECK(warnings.messages.size() == 1);
    CHECK(run.skipped == 15);
    CHECK(run.skipped_after_first_change == 0);
    CHECK(run.fc_dtypes.back() == torch::kFloat);
    CHECK_FALSE(setup.adaptive.active_dtype().has_value());
  }
}

TEST_CASE("adaptive precision: gradients that fp16 flushes to zero lead to bf16 or a higher scale floor",
          "[adaptive]") {
  AdaptivePrecisionOptions options;
  options.underflow_threshold = 0.5;
  options.sample_every = 1;
  // The loss times 1e-6 under a scale of 2^24: the scaled gradients are ordinary fp16 values, the
  // unscaled ones (~1e-8) lie below fp16's smallest subnormal (2^-24 ~ 6e-8).
  TrainHooks tiny;
  tiny.loss_factor = 1e-6;
  const double scale = 16777216.0;
  SECTION("bf16") {
    Setup setup(options, 1.0, fp16_cpu(), false, scale);
    const Run run = train(setup, 20, tiny);
    CHECK(moves(run.changes) == std::vector<std::string>{"<model> float16->bfloat16 10"});
    CHECK(run.changes[0].reason.find("of gradient values would flush to zero in float16 (> 50.0%) for 2 logging "
                                     "windows") != std::string::npos);
    CHECK(run.fc_dtypes.back() == torch::kBFloat16);
  }
  SECTION("scale floor") {
    options.prefer_bf16 = false;
    Setup setup(options, 1.0, fp16_cpu(), false, scale);
    const Run run = train(setup, 10, tiny);
    REQUIRE(run.changes.size() == 1);
    CHECK(run.changes[0].target == "<loss scale>");
    CHECK(setup.scaler.options().min_scale() == setup.scaler.get_scale());
    CHECK(setup.scaler.options().min_scale() > 0);
    CHECK(run.fc_dtypes.back() == torch::kHalf);
  }
}

TEST_CASE("adaptive precision: a run resumed before the promotion equals the uninterrupted run bit for bit",
          "[adaptive]") {
  AdaptivePrecisionOptions options;
  options.ops = true;
  options.demote_after = 10;
  Setup uninterrupted(options);
  Run full;
  train(uninterrupted, full, 1, 40);
  REQUIRE_FALSE(full.changes.empty());
  CHECK(full.changes.front().step == 15);

  // Stopped at step 7: mid-window, blame switched on, before any decision.
  Setup first(options);
  Run before;
  train(first, before, 1, 7);
  const ampkit::AdaptivePrecisionState state = first.adaptive.state_dict();
  CHECK(state.window.steps == 2);
  CHECK(state.blaming);
  std::stringstream optimizer_archive, model_archive;
  torch::save(first.optimizer, optimizer_archive);
  torch::save(first.model.net, model_archive);
  const ampkit::GradScalerState scaler_state = first.scaler.state_dict();

  Setup resumed(options);
  resumed.scaler.load_state_dict(scaler_state);
  torch::load(resumed.model.net, model_archive);
  torch::load(resumed.optimizer, optimizer_archive);
  resumed.adaptive.load_state_dict(state);
  Run after;
  train(resumed, after, 8, 40);

  CHECK(after.changes == full.changes);
  CHECK(resumed.adaptive.state_dict() == uninterrupted.adaptive.state_dict());
  const auto a = uninterrupted.model.net->parameters();
  const auto b = resumed.model.net->parameters();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) CHECK(torch::equal(a[i], b[i]));
}

TEST_CASE("adaptive precision state: round trip, refusal leaves it unchanged, bad options", "[adaptive]") {
  Setup setup;
  train(setup, 15);
  const ampkit::AdaptivePrecisionState state = setup.adaptive.state_dict();
  REQUIRE(state.promoted_at.count("boom") == 1);

  Setup other;
  other.adaptive.load_state_dict(state);
  CHECK(other.adaptive.state_dict() == state);
  CHECK(other.model.boom->promoted());

  ampkit::AdaptivePrecision& restored = other.adaptive;
  ampkit::AdaptivePrecisionState bad = state;
  bad.promoted_at["nope"] = 3;
  CHECK(throws_with([&] { restored.load_state_dict(bad); }, "names 'nope', which is not a wrapped layer"));
  bad = state;
  bad.clean_steps["boom"] = -1;
  CHECK(throws_with([&] { restored.load_state_dict(bad); }, "the counter of 'boom' must be >= 0, got -1"));
  bad = state;
  bad.active_dtype = "float8";
  CHECK(throws_with([&] { restored.load_state_dict(bad); },
                    "active_dtype must be 'float16', 'bfloat16' or 'float32', got 'float8'"));
  bad = state;
  bad.denied_ops = {"aten::no_such_op"};
  CHECK(throws_with([&] { restored.load_state_dict(bad); }, "denied_ops cannot be denied by this policy"));
  bad = state;
  bad.window.steps = -2;
  CHECK(throws_with([&] { restored.load_state_dict(bad); }, "window.steps must be >= 0, got -2"));
  bad = state;
  bad.previous_loss = std::nan("");
  CHECK(throws_with([&] { restored.load_state_dict(bad); }, "previous_loss must be finite"));
  CHECK(restored.state_dict() == state);

  CHECK(throws_with([] { AdaptivePrecision(fp16_cpu(), AdaptivePrecisionOptions{3, 4, 0}); },
                    "promote_after must be in [1, window = 3], got 4"));
  AdaptivePrecisionOptions options;
  options.max_skip_rate = 1.5;
  CHECK(throws_with([&] { AdaptivePrecision(fp16_cpu(), options); }, "max_skip_rate must be in (0, 1), or 0 (off), got 1.5"));
  options = {};
  options.sample_every = 0;
  CHECK(throws_with([&] { AdaptivePrecision(fp16_cpu(), options); }, "sample_every must be >= 1, got 0"));
  CHECK(throws_with([&] { setup.adaptive.wrap("fc", torch::nn::Linear(2, 2)); }, "a layer named 'fc' is wrapped already"));
  CHECK(throws_with([&] { setup.adaptive.after_backward(torch::ones({2})); },
                    "loss must be a one-element tensor, got shape [2]"));
  CHECK(throws_with([&] { setup.adaptive.update(-1); }, "step must be >= 0, got -1"));
}
