// Bad input through the C++ API: every case must throw a c10::Error whose message names the
// argument (checked with throws_with), never crash, hang or silently compute something. The
// Python counterpart, with more cases, is tests/python/test_bad_inputs.py.
#include "test_helpers.h"

#include <limits>

#include "ampkit/ampkit.h"
#include "ampkit/contracts.h"

using ampkit_test::throws_with;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

torch::Tensor scalar(float value = 1.0f) { return torch::full({1}, value); }
torch::Tensor int_scalar(int value) { return torch::full({1}, value, torch::kInt32); }

// The arguments of one master_adam_step_ call on one bf16 parameter, editable per case.
struct AdamArgs {
  std::vector<torch::Tensor> params{torch::ones({4}, torch::kBFloat16)};
  std::vector<torch::Tensor> masters{torch::ones({4})};
  std::vector<torch::Tensor> grads{torch::ones({4}, torch::kBFloat16)};
  std::vector<torch::Tensor> exp_avgs{torch::zeros({4})};
  std::vector<torch::Tensor> exp_avg_sqs{torch::zeros({4})};
  std::vector<torch::Tensor> max_exp_avg_sqs{};  // amsgrad off
  std::vector<torch::Tensor> steps{torch::zeros({1})};
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  void run() const {
    ampkit::master_adam_step_(params, masters, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, scalar(0.1f),
                              scalar(), scalar(),
                              std::nullopt, beta1, beta2, eps, weight_decay, /*decoupled_weight_decay=*/false,
                              /*maximize=*/false);
  }
};

void sgd_step(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& buffers, double momentum) {
  std::vector<torch::Tensor> masters, grads, steps;
  for (const auto& p : params) {
    masters.push_back(torch::ones({p.numel()}));
    grads.push_back(torch::ones_like(p));
    steps.push_back(torch::zeros({1}));
  }
  ampkit::master_sgd_step_(params, masters, grads, buffers, steps, scalar(0.1f), scalar(), scalar(), std::nullopt,
                           momentum, 0.0, 0.0, false, false);
}

}  // namespace

// ---- ops.h ----

TEST_CASE("bad input: multi_tensor_scale_ with an empty inputs list", "[bad_input]") {
  CHECK(throws_with([] { ampkit::multi_tensor_scale_({}, {}, scalar(), scalar(0)); },
                    "inputs must hold at least one tensor, got an empty list"));
}

TEST_CASE("bad input: multi_tensor_scale_ with more outputs than inputs", "[bad_input]") {
  const auto x = torch::ones({4});
  CHECK(throws_with([&] { ampkit::multi_tensor_scale_({x}, {x.clone(), x.clone()}, scalar(), scalar(0)); },
                    "outputs must hold as many tensors as inputs (1), got 2"));
}

TEST_CASE("bad input: multi_tensor_scale_ with an int32 input", "[bad_input]") {
  CHECK(throws_with(
      [] { ampkit::multi_tensor_scale_({torch::ones({4}, torch::kInt32)}, {torch::ones({4})}, scalar(), scalar(0)); },
      "inputs[0] must have dtype float32, float16 or bfloat16, got int32"));
}

TEST_CASE("bad input: multi_tensor_scale_ with an output on another device (meta)", "[bad_input]") {
  CHECK(throws_with(
      [] {
        ampkit::multi_tensor_scale_({torch::ones({4})}, {torch::empty({4}, torch::Device(torch::kMeta))}, scalar(),
                                    scalar(0));
      },
      "outputs[0] must be on cpu (the device of inputs[0]), got meta"));
}

TEST_CASE("bad input: multi_tensor_scale_ with a sparse input", "[bad_input]") {
  CHECK(throws_with(
      [] { ampkit::multi_tensor_scale_({torch::ones({4}).to_sparse()}, {torch::ones({4})}, scalar(), scalar(0)); },
      "inputs[0] must be a dense (strided) tensor"));
}

TEST_CASE("bad input: multi_tensor_scale_ writing one output twice", "[bad_input]") {
  const auto out = torch::zeros({4});
  CHECK(throws_with(
      [&] { ampkit::multi_tensor_scale_({torch::ones({4}), torch::ones({4})}, {out, out}, scalar(), scalar(0)); },
      "outputs[1] shares memory with outputs[0]"));
  CHECK(out.eq(0).all().item<bool>());  // refused before anything was written
}

// ---- loss_scaling.h ----

TEST_CASE("bad input: unscale_and_check_ with one grad listed twice", "[bad_input]") {
  const auto grad = torch::full({4}, 8.0f);
  CHECK(throws_with([&] { ampkit::unscale_and_check_({grad, grad}, scalar(0), scalar(0.5f)); },
                    "grads[1] shares memory with grads[0]"));
  CHECK(grad.eq(8).all().item<bool>());
}

TEST_CASE("bad input: unscale_and_check_ with overlapping views of one buffer", "[bad_input]") {
  const auto flat = torch::ones({8});
  CHECK(throws_with(
      [&] { ampkit::unscale_and_check_({flat.narrow(0, 0, 6), flat.narrow(0, 4, 4)}, scalar(0), scalar(0.5f)); },
      "grads[1] shares memory with grads[0]"));
  // Disjoint views of one flat buffer (as DDP/FSDP buckets hold them) are fine.
  ampkit::unscale_and_check_({flat.narrow(0, 0, 4), flat.narrow(0, 4, 4)}, scalar(0), scalar(0.5f));
  CHECK(flat.eq(0.5).all().item<bool>());
}

TEST_CASE("bad input: unscale_and_check_ with a float16 inv_scale", "[bad_input]") {
  CHECK(throws_with(
      [] { ampkit::unscale_and_check_({torch::ones({4})}, scalar(0), torch::ones({1}, torch::kHalf)); },
      "inv_scale must be a one-element float32 tensor, got dtype float16"));
}

TEST_CASE("bad input: unscale_and_check_ with norm_out the same tensor as found_inf", "[bad_input]") {
  const auto flag = scalar(0);
  CHECK(throws_with([&] { ampkit::unscale_and_check_({torch::ones({4})}, flag, scalar(), flag); },
                    "norm_out shares memory with found_inf"));
}

TEST_CASE("bad input: update_scale_ with a NaN growth factor", "[bad_input]") {
  CHECK(throws_with(
      [] { ampkit::update_scale_(scalar(65536), int_scalar(0), int_scalar(1), scalar(0), kNaN, 0.5, 2000); },
      "growth_factor must be a finite number > 1, got nan"));
}

TEST_CASE("bad input: update_scale_ with a float32 growth tracker", "[bad_input]") {
  CHECK(throws_with(
      [] { ampkit::update_scale_(scalar(65536), torch::zeros({1}), int_scalar(1), scalar(0), 2.0, 0.5, 2000); },
      "growth_tracker must be a one-element int32 tensor"));
}

TEST_CASE("bad input: update_scale_ with one tensor as both trackers", "[bad_input]") {
  const auto tracker = int_scalar(1);
  CHECK(throws_with([&] { ampkit::update_scale_(scalar(65536), tracker, tracker, scalar(0), 2.0, 0.5, 2000); },
                    "hysteresis_tracker shares memory with growth_tracker"));
}

// ---- optim.h (ops) ----

TEST_CASE("bad input: master_adam_step_ with one tensor as exp_avg and exp_avg_sq", "[bad_input]") {
  AdamArgs args;
  args.exp_avg_sqs = args.exp_avgs;
  CHECK(throws_with([&] { args.run(); }, "exp_avg_sqs[0] shares memory with exp_avgs[0]"));
}

TEST_CASE("bad input: master_adam_step_ with beta1 = 1 and eps = NaN", "[bad_input]") {
  AdamArgs beta;
  beta.beta1 = 1.0;
  CHECK(throws_with([&] { beta.run(); }, "beta1 must be in [0, 1), got 1"));
  AdamArgs eps;
  eps.eps = kNaN;
  CHECK(throws_with([&] { eps.run(); }, "eps must be a finite value > 0, got nan"));
}

TEST_CASE("bad input: master_adam_step_ with a bfloat16 exp_avg", "[bad_input]") {
  AdamArgs args;
  args.exp_avgs = {torch::zeros({4}, torch::kBFloat16)};
  CHECK(throws_with([&] { args.run(); }, "exp_avgs[0] must have dtype float32"));
}

TEST_CASE("bad input: master_sgd_step_ with an infinite momentum and one param twice", "[bad_input]") {
  const auto param = torch::ones({4}, torch::kBFloat16);
  CHECK(throws_with([&] { sgd_step({param}, {torch::zeros({4})}, kInf); }, "momentum must be a finite value >= 0"));
  CHECK(throws_with([&] { sgd_step({param, param}, {torch::zeros({4}), torch::zeros({4})}, 0.9); },
                    "params[1] shares memory with params[0]"));
}

// ---- optim.h (optimizers) ----

TEST_CASE("bad input: ampkit::optim hyper-parameters that are NaN or inf", "[bad_input]") {
  const auto param = torch::ones({4}).requires_grad_();
  CHECK(throws_with([&] { ampkit::optim::SGD({param}, ampkit::optim::SGDOptions(kNaN)); },
                    "ampkit::optim::SGD: lr must be a finite number, got nan"));
  CHECK(throws_with([&] { ampkit::optim::SGD({param}, ampkit::optim::SGDOptions(0.1).momentum(kInf)); },
                    "ampkit::optim::SGD: momentum must be a finite number, got inf"));
  CHECK(throws_with([&] { ampkit::optim::Adam({param}, ampkit::optim::AdamOptions(1e-3).betas({kNaN, 0.999})); },
                    "ampkit::optim::Adam: betas[0] must be a finite number, got nan"));
  CHECK(throws_with([&] { ampkit::optim::AdamW({param}, ampkit::optim::AdamWOptions(1e-3).weight_decay(kInf)); },
                    "ampkit::optim::AdamW: weight_decay must be a finite number, got inf"));
}

// float64 parameters are supported (updated in double, as torch does); complex ones are not.
TEST_CASE("bad input: ampkit::optim with a complex parameter or one parameter twice", "[bad_input]") {
  const auto param = torch::ones({4}).requires_grad_();
  CHECK(throws_with([] { ampkit::optim::Adam({torch::ones({4}, torch::kComplexFloat).requires_grad_()}); },
                    "params[0] of group 0 must be float32, float16, bfloat16 or float64, got ComplexFloat"));
  CHECK(throws_with([&] { ampkit::optim::SGD({param, param}, ampkit::optim::SGDOptions(0.1)); },
                    "params[1] of group 0 appears twice in the group"));
}

// ---- grad_scaler.h ----

TEST_CASE("bad input: GradScaler options", "[bad_input]") {
  CHECK(throws_with([] { ampkit::GradScaler(ampkit::GradScalerOptions().init_scale(kNaN)); },
                    "init_scale must be a finite number > 0, got nan"));
  CHECK(throws_with([] { ampkit::GradScaler(ampkit::GradScalerOptions().growth_factor(1.0)); },
                    "growth_factor must be a finite number > 1"));
  CHECK(throws_with([] { ampkit::GradScaler(ampkit::GradScalerOptions().backoff_factor(kInf)); },
                    "backoff_factor must be in (0, 1), got inf"));
  CHECK(throws_with([] { ampkit::GradScaler(ampkit::GradScalerOptions().growth_interval(0)); },
                    "growth_interval must be in [1, 2^31-1]"));
}

TEST_CASE("bad input: one contract, written for each audience", "[bad_input]") {
  // ampkit/contracts.h holds each rule once; the ops and the C++ API spell numbers the C++ way,
  // the Python package the Python way (libampkit_python registers the same checks as ops).
  using ampkit::contracts::Audience;
  ampkit::contracts::LossScaleOptions options;
  options.growth_interval = 0;
  CHECK(throws_with([&] { ampkit::contracts::check_loss_scale_options(options, {"ampkit::GradScaler"}); },
                    "ampkit::GradScaler: growth_interval must be in [1, 2^31-1], got 0"));
  CHECK(throws_with([&] { ampkit::contracts::check_loss_scale_options(options, {"GradScaler", Audience::Python}); },
                    "GradScaler: growth_interval must be an int in [1, 2**31-1], got 0"));
  options.growth_interval = 1;
  options.min_scale = 8.0;
  options.max_scale = 4.0;
  CHECK(throws_with([&] { ampkit::contracts::check_loss_scale_options(options, {"GradScaler", Audience::Python}); },
                    "min_scale (8.0) must not exceed max_scale (4.0)"));
  const ampkit::contracts::SgdHyperparameters sgd{std::nullopt, 0.9, kNaN, 0.0, false};
  CHECK(throws_with([&] { ampkit::contracts::check_sgd_hyperparameters(sgd, {"ampkit.optim.SGD", Audience::Python, " of group 2"}); },
                    "ampkit.optim.SGD: dampening of group 2 must be a finite number, got nan"));
  CHECK(throws_with(
      [&] {
        ampkit::contracts::check_sgd_hyperparameters(
            sgd, {"ampkit.master_sgd_step_", Audience::Cpp, "", ampkit::contracts::Form::OpArguments});
      },
      "ampkit.master_sgd_step_: dampening must be finite, got nan"));
  // The C++ optimizer checks dampening too (before, only its op did, at the first step).
  const auto param = torch::ones({4}).requires_grad_();
  CHECK(throws_with([&] { ampkit::optim::SGD({param}, ampkit::optim::SGDOptions(0.1).dampening(kNaN)); },
                    "ampkit::optim::SGD: dampening must be a finite number, got nan"));
  for (const double value : {1.0, 0.5, 1e16, 1e-5, -0.0, 1.0000000000000002, 123456789012345678.0}) {
    INFO(value);
    const std::string python = ampkit::contracts::format_number(value, Audience::Python);
    CHECK(std::stod(python) == value);
    CHECK(python.find_first_of(".en") != std::string::npos);  // never an int's spelling
  }
  CHECK(ampkit::contracts::format_number(1.0, Audience::Python) == "1.0");
  CHECK(ampkit::contracts::format_number(1.0, Audience::Cpp) == "1");
  CHECK(ampkit::contracts::format_number(1e-5, Audience::Python) == "1e-05");
  CHECK(ampkit::contracts::format_number(1e16, Audience::Python) == "1e+16");
  CHECK(ampkit::contracts::format_number(1e15, Audience::Python) == "1000000000000000.0");
  CHECK(ampkit::contracts::format_number(0.0001, Audience::Python) == "0.0001");
}

TEST_CASE("bad input: reciprocal_scale of a tensor that is not one floating-point element", "[bad_input]") {
  CHECK(throws_with([] { ampkit::reciprocal_scale(torch::ones({2})); },
                    "scale must be a one-element floating-point tensor, got 2 elements"));
  CHECK(throws_with([] { ampkit::reciprocal_scale(int_scalar(4)); },
                    "scale must be a one-element floating-point tensor, got dtype int32"));
  const auto scale = torch::full({}, 3.0);
  CHECK(torch::equal(ampkit::reciprocal_scale(scale), scale.to(torch::kDouble).reciprocal().to(torch::kFloat)));
}

TEST_CASE("bad input: GradScaler::scale of an undefined tensor and update(NaN)", "[bad_input]") {
  ampkit::GradScaler scaler;
  CHECK(throws_with([&] { scaler.scale(torch::Tensor()); }, "outputs must be a tensor, got an undefined tensor"));
  scaler.scale(torch::ones({1}));
  CHECK(throws_with([&] { scaler.update(kNaN); }, "new_scale"));
}

// ---- fused_linear.h / nn.h ----

TEST_CASE("bad input: fused_linear shapes, dtypes and activation", "[bad_input]") {
  const auto x = torch::randn({3, 4});
  CHECK(throws_with([&] { ampkit::fused_linear(x, torch::randn({5, 3})); }, "weight (argument 1) must have shape"));
  CHECK(throws_with([&] { ampkit::fused_linear(x, torch::randn({5, 4}), torch::randn({4})); },
                    "bias (argument 2) must have shape [5]"));
  CHECK(throws_with([&] { ampkit::fused_linear(x, torch::randn({5, 4}).to(torch::kHalf)); },
                    "weight (argument 1) must have the dtype of input (float32), got float16"));
  CHECK(throws_with([&] { ampkit::fused_linear(x, torch::randn({5, 4}), std::nullopt, "tanh"); },
                    "activation must be one of 'none', 'relu', 'gelu'"));
}

TEST_CASE("bad input: fused_mlp with mismatched hidden features", "[bad_input]") {
  CHECK(throws_with(
      [] {
        ampkit::fused_mlp(torch::randn({3, 4}), torch::randn({6, 4}), std::nullopt, torch::randn({5, 7}), std::nullopt);
      },
      "weight2 (argument 3) must have shape [out_features, 6]"));
}

TEST_CASE("bad input: nn::FusedLinear options", "[bad_input]") {
  CHECK(throws_with([] { ampkit::nn::FusedLinear(ampkit::nn::FusedLinearOptions(4, 5).activation("swish")); },
                    "activation must be one of 'none', 'relu', 'gelu' (tanh approximation), got 'swish'"));
  CHECK(throws_with([] { ampkit::nn::FusedLinear(-1, 5); }, "in_features and out_features must be >= 0, got -1"));
  ampkit::nn::FusedLinear layer(4, 5);
  CHECK(throws_with([&] { layer->forward(torch::randn({3, 6})); }, "weight (argument 1) must have shape"));
}

// ---- autocast.h ----

TEST_CASE("bad input: autocast Policy", "[bad_input]") {
  using ampkit::autocast::Policy;
  CHECK(throws_with([] { Policy(c10::kCPU, c10::kFloat); },
                    "dtype (the lower precision of the allow list) must be float16 or bfloat16, got float32"));
  CHECK(throws_with([] { Policy(c10::kMeta, c10::kBFloat16); }, "device_type must be cpu or cuda, got meta"));
  CHECK(throws_with([] { Policy(c10::kCPU, c10::kBFloat16, {"no_such_op"}); }, "unknown op 'no_such_op'"));
  CHECK(throws_with([] { Policy(c10::kCPU, c10::kBFloat16, {"mm"}, {"mm"}); }, "is in two lists"));
}

TEST_CASE("bad input: AutocastGuard and the global policy", "[bad_input]") {
  CHECK(throws_with([] { ampkit::AutocastGuard guard(c10::kCPU, c10::kDouble); },
                    "dtype must be float16 or bfloat16, got float64"));
  CHECK(throws_with([] { ampkit::autocast::set_global_policy("mixed_fp8"); }, "mixed_fp8"));
  CHECK_FALSE(ampkit::autocast::global_policy(c10::kCPU).has_value());  // the refused name changed nothing
}
