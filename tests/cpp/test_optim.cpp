// ampkit::optim::SGD/Adam/AdamW against torch::optim, plus the overflow skip, checkpoints and
// bad input. Tolerance of the fp32 comparisons (see tests/python/test_optim.py for the measured
// figures): |ours - torch| <= 1e-6 * max|torch| after 200 steps; torch fuses some multiply-adds
// into FMAs where ampkit rounds twice, so elements differ by a few float32 ulps, while a wrong
// formula or step count would be off by orders of magnitude more.
#include "optim_test_helpers.h"
#include "test_helpers.h"

#include <cmath>
#include <sstream>

#include "ampkit/ampkit.h"

using ampkit_test::devices_under_test;
using ampkit_test::throws_with;

namespace {

const std::vector<std::vector<int64_t>> kShapes = {{7}, {33, 17}, {70000}, {1}};

std::vector<torch::Tensor> make_params(torch::Dtype dtype, const torch::Device& device, uint64_t seed = 0) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> params;
  for (const auto& shape : kShapes) params.push_back(torch::randn(shape).to(device, dtype).requires_grad_(true));
  return params;
}

std::vector<torch::Tensor> grads_for_step(int step) {
  torch::manual_seed(1000 + step);
  std::vector<torch::Tensor> grads;
  for (const auto& shape : kShapes) grads.push_back(torch::randn(shape));
  return grads;
}

void set_grads(std::vector<torch::Tensor>& params, int step) {
  auto grads = grads_for_step(step);
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].mutable_grad() = grads[i].to(params[i].device(), params[i].scalar_type());
  }
}

double max_abs(const std::vector<torch::Tensor>& tensors) {
  double result = 0;
  for (const auto& t : tensors) result = std::max(result, t.abs().max().item<double>());
  return result;
}

bool close_to_scale(const std::vector<torch::Tensor>& ours, const std::vector<torch::Tensor>& reference) {
  const double tolerance = 1e-6 * max_abs(reference);
  for (size_t i = 0; i < ours.size(); ++i) {
    const double difference = (ours[i].detach().to(torch::kFloat) - reference[i].detach()).abs().max().item<double>();
    if (difference > tolerance) {
      UNSCOPED_INFO("tensor " << i << " differs by " << difference << " > " << tolerance);
      return false;
    }
  }
  return true;
}

std::vector<torch::Tensor> snapshot(ampkit::optim::MasterWeightOptimizer& optimizer,
                                    const std::vector<torch::Tensor>& params) {
  return ampkit_test::optimizer_tensors(optimizer, params);
}

bool all_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!torch::equal(a[i], b[i])) return false;
  }
  return true;
}

template <typename Ours, typename Reference>
void run_pair(Ours& ours, std::vector<torch::Tensor>& ours_params, Reference& reference,
              std::vector<torch::Tensor>& reference_params, int steps) {
  for (int step = 0; step < steps; ++step) {
    set_grads(ours_params, step);
    set_grads(reference_params, step);
    ours.step();
    reference.step();
  }
}

}  // namespace

TEST_CASE("ampkit::optim matches torch::optim on fp32 for 200 steps", "[optim]") {
  for (const auto& device : devices_under_test()) {
    SECTION("SGD with momentum, dampening, weight decay") {
      auto ours_params = make_params(torch::kFloat, device), ref_params = make_params(torch::kFloat, device);
      ampkit::optim::SGD ours(ours_params, ampkit::optim::SGDOptions(0.05).momentum(0.9).dampening(0.1).weight_decay(0.01));
      torch::optim::SGD ref(ref_params, torch::optim::SGDOptions(0.05).momentum(0.9).dampening(0.1).weight_decay(0.01));
      run_pair(ours, ours_params, ref, ref_params, 200);
      REQUIRE(close_to_scale(ours_params, ref_params));
    }
    SECTION("SGD nesterov") {
      auto ours_params = make_params(torch::kFloat, device), ref_params = make_params(torch::kFloat, device);
      ampkit::optim::SGD ours(ours_params, ampkit::optim::SGDOptions(0.02).momentum(0.8).nesterov(true));
      torch::optim::SGD ref(ref_params, torch::optim::SGDOptions(0.02).momentum(0.8).nesterov(true));
      run_pair(ours, ours_params, ref, ref_params, 200);
      REQUIRE(close_to_scale(ours_params, ref_params));
    }
    SECTION("Adam with L2 weight decay") {
      auto ours_params = make_params(torch::kFloat, device), ref_params = make_params(torch::kFloat, device);
      ampkit::optim::Adam ours(ours_params, ampkit::optim::AdamOptions(2e-3).weight_decay(0.05));
      torch::optim::Adam ref(ref_params, torch::optim::AdamOptions(2e-3).weight_decay(0.05));
      run_pair(ours, ours_params, ref, ref_params, 200);
      REQUIRE(close_to_scale(ours_params, ref_params));
    }
    SECTION("AdamW with torch's defaults") {
      auto ours_params = make_params(torch::kFloat, device), ref_params = make_params(torch::kFloat, device);
      ampkit::optim::AdamW ours(ours_params);
      torch::optim::AdamW ref(ref_params);
      run_pair(ours, ours_params, ref, ref_params, 200);
      REQUIRE(close_to_scale(ours_params, ref_params));
      auto& state = static_cast<ampkit::optim::MasterParamState&>(*ours.state().at(ours_params[0].unsafeGetTensorImpl()));
      REQUIRE(state.step().item<float>() == 200.0f);
      REQUIRE_FALSE(state.master().defined());  // fp32 params are their own masters
    }
  }
}

TEST_CASE("ampkit::optim keeps FP32 masters of fp16/bf16 params that follow the fp32 update", "[optim]") {
  for (const auto& device : devices_under_test()) {
    for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
      auto params = make_params(dtype, device);
      std::vector<torch::Tensor> reference;
      for (const auto& p : params) reference.push_back(p.detach().to(torch::kFloat).requires_grad_(true));
      ampkit::optim::AdamW ours(params, ampkit::optim::AdamWOptions(1e-2));
      torch::optim::AdamW ref(reference, torch::optim::AdamWOptions(1e-2));
      for (int step = 0; step < 20; ++step) {
        set_grads(params, step);
        for (size_t i = 0; i < params.size(); ++i) reference[i].mutable_grad() = params[i].grad().to(torch::kFloat);
        ours.step();
        ref.step();
      }
      const auto masters = ours.master_params();
      REQUIRE(close_to_scale(masters, reference));
      for (size_t i = 0; i < params.size(); ++i) {
        REQUIRE(masters[i].scalar_type() == torch::kFloat);
        REQUIRE(torch::equal(params[i].detach(), masters[i].to(dtype)));  // the model copy is the rounded master
      }
    }
  }
}

TEST_CASE("an overflowed step changes nothing, for every optimizer and dtype", "[optim]") {
  for (const auto& device : devices_under_test()) {
    for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
      auto run = [&](ampkit::optim::MasterWeightOptimizer& optimizer, std::vector<torch::Tensor>& params) {
        for (int step = 0; step < 3; ++step) {
          set_grads(params, step);
          optimizer.step();
        }
        const auto before = snapshot(optimizer, params);
        set_grads(params, 3);
        optimizer.set_grad_scaling(torch::full({}, 1024.0, torch::device(device)), torch::ones({}, torch::device(device)));
        optimizer.step();
        REQUIRE(all_equal(before, snapshot(optimizer, params)));
        // The scaling inputs applied to that step only: the next one goes through.
        optimizer.step();
        REQUIRE_FALSE(all_equal(before, snapshot(optimizer, params)));
      };
      auto sgd_params = make_params(dtype, device);
      ampkit::optim::SGD sgd(sgd_params, ampkit::optim::SGDOptions(0.1).momentum(0.9));
      run(sgd, sgd_params);
      auto adam_params = make_params(dtype, device);
      ampkit::optim::Adam adam(adam_params, ampkit::optim::AdamOptions(1e-2).weight_decay(0.1));
      run(adam, adam_params);
      auto adamw_params = make_params(dtype, device);
      ampkit::optim::AdamW adamw(adamw_params);
      run(adamw, adamw_params);
    }
  }
}

TEST_CASE("save after 100 steps, load, 100 more: bitwise equal to 200 steps", "[optim]") {
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    auto params = make_params(dtype, torch::kCPU);
    ampkit::optim::AdamW uninterrupted(params, ampkit::optim::AdamWOptions(1e-2));
    for (int step = 0; step < 200; ++step) {
      set_grads(params, step);
      uninterrupted.step();
    }

    auto first = make_params(dtype, torch::kCPU);
    ampkit::optim::AdamW first_optimizer(first, ampkit::optim::AdamWOptions(1e-2));
    for (int step = 0; step < 100; ++step) {
      set_grads(first, step);
      first_optimizer.step();
    }
    std::stringstream optimizer_stream, params_stream;
    torch::save(first_optimizer, optimizer_stream);
    torch::save(first, params_stream);

    std::vector<torch::Tensor> resumed;
    torch::load(resumed, params_stream);
    for (auto& p : resumed) p.requires_grad_(true);
    ampkit::optim::AdamW resumed_optimizer(resumed, ampkit::optim::AdamWOptions(0.5));  // lr comes from the archive
    torch::load(resumed_optimizer, optimizer_stream);
    REQUIRE(resumed_optimizer.param_groups()[0].options().get_lr() == 1e-2);
    for (int step = 100; step < 200; ++step) {
      set_grads(resumed, step);
      resumed_optimizer.step();
    }
    REQUIRE(all_equal(snapshot(uninterrupted, params), snapshot(resumed_optimizer, resumed)));
  }
}

TEST_CASE("ampkit::optim rejects bad options, params and archives with clear errors", "[optim]") {
  auto params = make_params(torch::kHalf, torch::kCPU);
  CHECK(throws_with([&] { ampkit::optim::SGD(params, ampkit::optim::SGDOptions(-0.1)); },
                    "ampkit::optim::SGD: lr must be >= 0, got -0.1"));
  CHECK(throws_with([&] { ampkit::optim::Adam(params, ampkit::optim::AdamOptions().betas({1.0, 0.999})); },
                    "ampkit::optim::Adam: betas[0] must be >= 0 and < 1"));
  CHECK(throws_with([&] { ampkit::optim::AdamW(params, ampkit::optim::AdamWOptions().betas({0.9, -0.5})); },
                    "ampkit::optim::AdamW: betas[1] must be >= 0 and < 1"));
  CHECK(throws_with([&] { ampkit::optim::AdamW(params, ampkit::optim::AdamWOptions().eps(0)); },
                    "ampkit::optim::AdamW: eps must be > 0, got 0"));
  CHECK(throws_with([&] { ampkit::optim::SGD(params, ampkit::optim::SGDOptions(0.1).nesterov(true)); },
                    "nesterov momentum needs momentum > 0 and dampening == 0"));
  // float64 params are supported (updated in double, as torch does); complex ones are not.
  CHECK(throws_with([&] { ampkit::optim::Adam({torch::ones({3}, torch::kComplexFloat).requires_grad_(true)}); },
                    "params[0] of group 0 must be float32, float16, bfloat16 or float64, got ComplexFloat"));
  CHECK(throws_with(
      [&] { ampkit::optim::Adam({torch::ones({3}), torch::ones({3}, torch::device(torch::kMeta))}); },
      "the params of one group must be on one device: params[0] of group 0 is on cpu, params[1] on meta"));

  // Archives: another optimizer, another model shape, another parameter count.
  ampkit::optim::AdamW adamw(params);
  auto load_from = [&](auto& source) {
    std::stringstream stream;
    torch::save(source, stream);
    torch::load(adamw, stream);
  };
  auto other_params = make_params(torch::kHalf, torch::kCPU);
  ampkit::optim::SGD sgd(other_params, ampkit::optim::SGDOptions(0.1).momentum(0.9));
  CHECK(throws_with([&] { load_from(sgd); }, "the archive comes from ampkit::optim::SGD, expected one from "
                                              "ampkit::optim::AdamW"));
  torch::optim::AdamW torch_adamw(other_params);
  CHECK(throws_with([&] { load_from(torch_adamw); }, "the archive comes from a non-ampkit optimizer"));
  auto reshaped = make_params(torch::kHalf, torch::kCPU);
  reshaped[1] = torch::randn({17, 33}, torch::kHalf).requires_grad_(true);
  ampkit::optim::AdamW other_shape(reshaped);
  CHECK(throws_with([&] { load_from(other_shape); }, "'master' of params[1] of group 0 has shape [17, 33] in the "
                                                     "archive, but the parameter needs [33, 17]"));
  ampkit::optim::AdamW fewer({params[0]});
  CHECK(throws_with([&] { load_from(fewer); }, "group 0 of the archive has 1 params, this optimizer's has 4"));

  // A gradient dtype the kernels do not take for this param (float64 is a float64 param's only).
  auto fp32 = torch::ones({4}, torch::requires_grad());
  ampkit::optim::SGD plain({fp32}, ampkit::optim::SGDOptions(0.1));
  fp32.mutable_grad() = torch::ones({4}, torch::kDouble);
  CHECK(throws_with([&] { plain.step(); }, "params[0] of group 0 has a Double gradient; supported: float32, float16, "
                                           "bfloat16"));
}

TEST_CASE("a device lr tensor changed in place steps exactly as options().lr() set from the host", "[optim]") {
  for (const auto& device : devices_under_test()) {
    for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
      auto host_params = make_params(dtype, device), device_params = make_params(dtype, device);
      ampkit::optim::AdamW host_lr(host_params, ampkit::optim::AdamWOptions(1e-2));
      ampkit::optim::AdamW device_lr(device_params, ampkit::optim::AdamWOptions(123.0));  // overridden below
      auto lr = torch::full({1}, 1e-2, torch::dtype(torch::kFloat).device(device));
      device_lr.set_lr_tensor(0, lr);
      for (int step = 0; step < 12; ++step) {
        const double value = 1e-2 * std::pow(0.8, step);  // a schedule: host options vs in-place fill
        host_lr.param_groups()[0].options().set_lr(value);
        lr.fill_(value);
        set_grads(host_params, step);
        set_grads(device_params, step);
        host_lr.step();
        device_lr.step();
      }
      CHECK(all_equal(snapshot(host_lr, host_params), snapshot(device_lr, device_params)));
      // Undefined: back to the group's options().lr() (123: the weights blow up, so they differ).
      device_lr.set_lr_tensor(0, torch::Tensor());
      set_grads(host_params, 12);
      set_grads(device_params, 12);
      host_lr.step();
      device_lr.step();
      CHECK_FALSE(all_equal(snapshot(host_lr, host_params), snapshot(device_lr, device_params)));
    }
  }
  auto params = make_params(torch::kFloat, torch::kCPU);
  ampkit::optim::SGD sgd(params, ampkit::optim::SGDOptions(0.1));
  CHECK(throws_with([&] { sgd.set_lr_tensor(1, torch::ones({1})); },
                    "set_lr_tensor: group_index 1 is out of range: the optimizer has 1 param groups"));
  CHECK(throws_with([&] { sgd.set_lr_tensor(0, torch::ones({2})); },
                    "lr must be a one-element float32 tensor, got 2 elements"));
  CHECK(throws_with([&] { sgd.set_lr_tensor(0, torch::ones({1}, torch::kDouble)); },
                    "lr must be a one-element float32 tensor, got dtype Double"));
}

// ---- amsgrad, float64 params, gradients left unscaled ----

namespace {

ampkit::optim::MasterParamState& state_of(ampkit::optim::MasterWeightOptimizer& optimizer, const torch::Tensor& p) {
  return static_cast<ampkit::optim::MasterParamState&>(*optimizer.state().at(p.unsafeGetTensorImpl()));
}

// torch::optim's per-parameter Adam state (its max_exp_avg_sq with amsgrad).
// torch::optim's max_exp_avg_sq of p: AdamW keeps an AdamWParamState, Adam an AdamParamState (unrelated
// classes, so each is cast to its own type).
torch::Tensor torch_max_exp_avg_sq(torch::optim::Optimizer& optimizer, const torch::Tensor& p) {
  auto& state = *optimizer.state().at(p.unsafeGetTensorImpl());
  if (auto* adamw = dynamic_cast<torch::optim::AdamWParamState*>(&state)) return adamw->max_exp_avg_sq();
  return dynamic_cast<torch::optim::AdamParamState&>(state).max_exp_avg_sq();
}

// float64: |ours - torch| <= 1e-12 * max|torch| over the list. Both compute in double; what remains
// is rounding order (torch's vectorised kernels fuse some multiply-adds; ampkit uses lerp where
// torch::optim's C++ Adam uses mul_ + add_), a few double ulps per step.
bool close_to_scale_fp64(const std::vector<torch::Tensor>& ours, const std::vector<torch::Tensor>& reference) {
  const double tolerance = 1e-12 * max_abs(reference);
  for (size_t i = 0; i < ours.size(); ++i) {
    REQUIRE(ours[i].scalar_type() == torch::kDouble);
    const double difference = (ours[i].detach() - reference[i].detach()).abs().max().item<double>();
    if (difference > tolerance) {
      UNSCOPED_INFO("tensor " << i << " differs by " << difference << " > " << tolerance);
      return false;
    }
  }
  return true;
}

}  // namespace

TEST_CASE("amsgrad: ampkit::optim::Adam/AdamW match torch::optim's on fp32 for 200 steps", "[optim][amsgrad]") {
  for (const auto& device : devices_under_test()) {
    for (const bool decoupled : {false, true}) {
      INFO((decoupled ? "AdamW" : "Adam") << " on " << device);
      auto ours_params = make_params(torch::kFloat, device), ref_params = make_params(torch::kFloat, device);
      std::unique_ptr<ampkit::optim::MasterWeightOptimizer> ours;
      std::unique_ptr<torch::optim::Optimizer> ref;
      if (decoupled) {
        ours = std::make_unique<ampkit::optim::AdamW>(ours_params, ampkit::optim::AdamWOptions(2e-3).amsgrad(true));
        ref = std::make_unique<torch::optim::AdamW>(ref_params, torch::optim::AdamWOptions(2e-3).amsgrad(true));
      } else {
        ours = std::make_unique<ampkit::optim::Adam>(
            ours_params, ampkit::optim::AdamOptions(2e-3).betas({0.8, 0.99}).weight_decay(0.05).amsgrad(true));
        ref = std::make_unique<torch::optim::Adam>(
            ref_params, torch::optim::AdamOptions(2e-3).betas({0.8, 0.99}).weight_decay(0.05).amsgrad(true));
      }
      run_pair(*ours, ours_params, *ref, ref_params, 200);
      REQUIRE(close_to_scale(ours_params, ref_params));
      std::vector<torch::Tensor> ours_max, ref_max;
      for (size_t i = 0; i < ours_params.size(); ++i) {
        ours_max.push_back(state_of(*ours, ours_params[i]).max_exp_avg_sq());
        ref_max.push_back(torch_max_exp_avg_sq(*ref, ref_params[i]));
        REQUIRE(ours_max.back().scalar_type() == torch::kFloat);
      }
      REQUIRE(close_to_scale(ours_max, ref_max));
    }
  }
}

TEST_CASE("amsgrad with FP32 masters: fp16/bf16 params follow torch's fp32 AdamW amsgrad", "[optim][amsgrad]") {
  for (const auto& device : devices_under_test()) {
    for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
      auto params = make_params(dtype, device);
      std::vector<torch::Tensor> reference;
      for (const auto& p : params) reference.push_back(p.detach().to(torch::kFloat).requires_grad_(true));
      ampkit::optim::AdamW ours(params, ampkit::optim::AdamWOptions(1e-2).amsgrad(true));
      torch::optim::AdamW ref(reference, torch::optim::AdamWOptions(1e-2).amsgrad(true));
      for (int step = 0; step < 20; ++step) {
        set_grads(params, step);
        for (size_t i = 0; i < params.size(); ++i) reference[i].mutable_grad() = params[i].grad().to(torch::kFloat);
        ours.step();
        ref.step();
      }
      REQUIRE(close_to_scale(ours.master_params(), reference));
    }
  }
}

TEST_CASE("float64 params: SGD/Adam/AdamW (amsgrad too) step in double with float64 state, as torch::optim does",
          "[optim][float64]") {
  for (const auto& device : devices_under_test()) {
    INFO(device);
    SECTION("SGD nesterov with weight decay") {
      auto ours_params = make_params(torch::kDouble, device), ref_params = make_params(torch::kDouble, device);
      ampkit::optim::SGD ours(ours_params, ampkit::optim::SGDOptions(0.02).momentum(0.8).nesterov(true).weight_decay(1e-3));
      torch::optim::SGD ref(ref_params, torch::optim::SGDOptions(0.02).momentum(0.8).nesterov(true).weight_decay(1e-3));
      run_pair(ours, ours_params, ref, ref_params, 200);
      REQUIRE(close_to_scale_fp64(ours_params, ref_params));
      REQUIRE(state_of(ours, ours_params[0]).momentum_buffer().scalar_type() == torch::kDouble);
    }
    SECTION("Adam with L2 weight decay, amsgrad") {
      auto ours_params = make_params(torch::kDouble, device), ref_params = make_params(torch::kDouble, device);
      ampkit::optim::Adam ours(ours_params, ampkit::optim::AdamOptions(2e-3).weight_decay(0.05).amsgrad(true));
      torch::optim::Adam ref(ref_params, torch::optim::AdamOptions(2e-3).weight_decay(0.05).amsgrad(true));
      run_pair(ours, ours_params, ref, ref_params, 200);
      REQUIRE(close_to_scale_fp64(ours_params, ref_params));
      std::vector<torch::Tensor> ours_max, ref_max;
      for (size_t i = 0; i < ours_params.size(); ++i) {
        ours_max.push_back(state_of(ours, ours_params[i]).max_exp_avg_sq());
        ref_max.push_back(torch_max_exp_avg_sq(ref, ref_params[i]));
      }
      REQUIRE(close_to_scale_fp64(ours_max, ref_max));
    }
    SECTION("AdamW with torch's defaults") {
      auto ours_params = make_params(torch::kDouble, device), ref_params = make_params(torch::kDouble, device);
      ampkit::optim::AdamW ours(ours_params);
      torch::optim::AdamW ref(ref_params);
      run_pair(ours, ours_params, ref, ref_params, 200);
      REQUIRE(close_to_scale_fp64(ours_params, ref_params));
      auto& state = state_of(ours, ours_params[0]);
      REQUIRE_FALSE(state.master().defined());  // a float64 param is its own master
      REQUIRE(state.exp_avg().scalar_type() == torch::kDouble);
      REQUIRE(state.exp_avg_sq().scalar_type() == torch::kDouble);
      REQUIRE(state.step().scalar_type() == torch::kFloat);
    }
  }
}

TEST_CASE("float64 params: a float32 gradient is refused, naming the parameter", "[optim][float64]") {
  auto params = make_params(torch::kDouble, torch::kCPU);
  ampkit::optim::Adam adam(params);
  set_grads(params, 0);
  params[1].mutable_grad() = params[1].grad().to(torch::kFloat);
  REQUIRE(throws_with([&] { adam.step(); }, "params[1] of group 0 has a Float gradient; supported: float64"));
}

TEST_CASE("amsgrad and float64 state survive save/load exactly; an amsgrad archive needs an amsgrad optimizer",
          "[optim][amsgrad][float64]") {
  for (auto dtype : {torch::kFloat, torch::kBFloat16, torch::kDouble}) {
    INFO(dtype);
    auto params = make_params(dtype, torch::kCPU);
    ampkit::optim::AdamW first(params, ampkit::optim::AdamWOptions(1e-2).amsgrad(true));
    for (int step = 0; step < 5; ++step) {
      set_grads(params, step);
      first.step();
    }
    std::stringstream stream;
    torch::save(first, stream);
    const std::string archive = stream.str();

    auto copy = make_params(dtype, torch::kCPU);
    // The state must match the optimizer's configuration (as with master_weights): a plain AdamW
    // refuses the archive's max_exp_avg_sq rather than load options it has no state for.
    ampkit::optim::AdamW resumed(copy, ampkit::optim::AdamWOptions(1e-2));
    std::stringstream into_plain(archive);
    REQUIRE(throws_with([&] { torch::load(resumed, into_plain); }, "'max_exp_avg_sq'"));

    ampkit::optim::AdamW amsgrad(copy, ampkit::optim::AdamWOptions(1e-2).amsgrad(true));
    std::stringstream into_amsgrad(archive);
    torch::load(amsgrad, into_amsgrad);
    REQUIRE(static_cast<const ampkit::optim::AdamOptions&>(amsgrad.param_groups()[0].options()).amsgrad());
    for (size_t i = 0; i < params.size(); ++i) {
      const auto& saved = state_of(first, params[i]);
      const auto& loaded = state_of(amsgrad, copy[i]);
      REQUIRE(torch::equal(saved.max_exp_avg_sq(), loaded.max_exp_avg_sq()));
      REQUIRE(torch::equal(saved.exp_avg_sq(), loaded.exp_avg_sq()));
      REQUIRE(loaded.exp_avg().scalar_type() == (dtype == torch::kDouble ? torch::kDouble : torch::kFloat));
    }
  }
}

TEST_CASE("a scaled (or clipped) step leaves the gradients unscaled, skipped step included; a plain step does not "
          "write them",
          "[optim][write_back_grads]") {
  for (const auto& device : devices_under_test()) {
    for (auto dtype : {torch::kFloat, torch::kBFloat16, torch::kDouble}) {
      INFO(dtype << " on " << device);
      auto params = make_params(dtype, device);
      ampkit::optim::Adam adam(params, ampkit::optim::AdamOptions(1e-3).amsgrad(true));
      const auto scale = torch::full({}, 1024.0, torch::device(device));
      for (const float found_inf : {0.0f, 1.0f}) {
        set_grads(params, 0);
        std::vector<torch::Tensor> scaled;
        for (auto& p : params) scaled.push_back(p.grad().clone());
        adam.set_grad_scaling(scale, torch::full({}, found_inf, torch::device(device)));
        adam.set_clip_coef(torch::full({}, 0.5, torch::device(device)));
        adam.step();
        for (size_t i = 0; i < params.size(); ++i) {
          // 1/1024 and 0.5 are powers of two: the unscaled, clipped value is exact in every dtype.
          REQUIRE(torch::equal(params[i].grad(), scaled[i] / 2048));
        }
      }
      set_grads(params, 1);
      std::vector<torch::Tensor> before;
      for (auto& p : params) before.push_back(p.grad().clone());
      adam.step();  // no scale, no clip: the gradients are only read
      for (size_t i = 0; i < params.size(); ++i) REQUIRE(torch::equal(params[i].grad(), before[i]));
    }
  }
}
