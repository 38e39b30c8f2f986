// ampkit::fused_linear and ampkit::nn::FusedLinear through the C++ API (so the dispatcher,
// autograd and autocast registrations) against plain torch in fp32.
#include "test_helpers.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>

#include "ampkit/ampkit.h"

using ampkit_test::devices_under_test;
using ampkit_test::throws_with;

namespace {

torch::Tensor activate(const torch::Tensor& pre, const std::string& activation) {
  if (activation == "relu") return torch::relu(pre);
  if (activation == "gelu") return torch::gelu(pre, "tanh");
  return pre;
}

double unit_roundoff(torch::ScalarType dtype) { return dtype == torch::kHalf ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8); }

// Error bound of one fp32-accumulated length-k dot product against another (the probabilistic
// gamma_k = 8 sqrt(k) 2^-24, capped by the worst case; see tests/python/test_fused_linear.py),
// times 1.13 (> max |gelu_tanh'|), plus one rounding to the output dtype.
torch::Tensor forward_bound(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                            const torch::Tensor& ref, torch::ScalarType dtype, const std::string& activation) {
  const int64_t k = x.size(-1);
  const double u32 = std::ldexp(1.0, -24);
  const double gamma = std::min(k * u32 / (1 - k * u32), 8 * std::sqrt(static_cast<double>(k)) * u32);
  auto magnitude = torch::matmul(x.to(torch::kFloat).abs(), w.to(torch::kFloat).abs().t());
  if (b.defined()) magnitude = magnitude + b.to(torch::kFloat).abs();
  // Last term: cuBLASLt's GELU epilogue may use the hardware tanh approximation (relative error
  // < 2^-10.98), < 2^-11 |pre| after 0.5 x (1 + tanh); the pre-activation is below |ref| + magnitude.
  auto bound = 1.13 * 2 * gamma * magnitude + 1.01 * unit_roundoff(dtype) * ref.abs() + 1e-6;
  if (activation == "gelu") bound = bound + std::ldexp(1.0, -11) * (ref.abs() + magnitude);
  return bound;
}

bool within(const torch::Tensor& ours, const torch::Tensor& ref, const torch::Tensor& bound) {
  if (ours.sizes() != ref.sizes()) return false;
  const auto excess = ((ours.to(torch::kFloat) - ref).abs() - bound).max().item<float>();
  UNSCOPED_INFO("largest excess over the bound: " << excess);
  return excess <= 0;
}

}  // namespace

TEST_CASE("fused_linear matches an fp32 reference for every epilogue and dtype", "[fused_linear]") {
  for (const auto& device : devices_under_test()) {
    for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
      for (const std::string activation : {"none", "relu", "gelu"}) {
        for (bool with_bias : {true, false}) {
          torch::manual_seed(0);
          // 3-D input, sizes that are not multiples of 8.
          auto x = torch::randn({3, 5, 19}).to(device, dtype);
          auto w = (torch::randn({13, 19}) / std::sqrt(19.0)).to(device, dtype);
          auto b = with_bias ? (0.5 * torch::randn({13})).to(device, dtype) : torch::Tensor();
          auto out = ampkit::fused_linear(x, w, with_bias ? std::optional<torch::Tensor>(b) : std::nullopt, activation);
          REQUIRE(out.scalar_type() == dtype);
          auto ref = activate(torch::nn::functional::linear(x.to(torch::kFloat), w.to(torch::kFloat),
                                                            with_bias ? b.to(torch::kFloat) : torch::Tensor()),
                              activation);
          CHECK(within(out, ref, forward_bound(x, w, b, ref, dtype, activation)));
        }
      }
    }
  }
}

TEST_CASE("fused_linear gradients match autograd through fp32 torch ops", "[fused_linear]") {
  for (const auto& device : devices_under_test()) {
    torch::manual_seed(1);
    auto x = torch::randn({7, 11}).to(device, torch::kBFloat16).requires_grad_();
    auto w = (torch::randn({9, 11}) / std::sqrt(11.0)).to(device, torch::kBFloat16).requires_grad_();
    auto b = torch::randn({9}).to(device, torch::kBFloat16).requires_grad_();
    auto grad = torch::randn({7, 9}).to(device, torch::kBFloat16);
    ampkit::fused_linear(x, w, b, "gelu").backward(grad);

    auto x32 = x.detach().to(torch::kFloat).requires_grad_();
    auto w32 = w.detach().to(torch::kFloat).requires_grad_();
    auto b32 = b.detach().to(torch::kFloat).requires_grad_();
    torch::gelu(torch::nn::functional::linear(x32, w32, b32), "tanh").backward(grad.to(torch::kFloat));
    // Sums over at most 9 terms of O(1) values: a few bf16 roundings (u = 2^-8) of the result and
    // of the gradient at the pre-activation dominate; 4 u relative to the largest entry covers them.
    const double u = std::ldexp(1.0, -8);
    for (auto [ours, ref] : {std::pair{x.grad(), x32.grad()}, std::pair{w.grad(), w32.grad()},
                             std::pair{b.grad(), b32.grad()}}) {
      REQUIRE(ours.scalar_type() == torch::kBFloat16);
      const double scale = ref.abs().max().item<double>();
      CHECK((ours.to(torch::kFloat) - ref).abs().max().item<double>() <= 4 * u * scale);
    }
  }
}

TEST_CASE("fused_linear: zero-size batch, k = 1 and autocast", "[fused_linear]") {
  auto w = torch::randn({6, 4}, torch::kHalf).requires_grad_();
  auto empty = ampkit::fused_linear(torch::randn({0, 4}, torch::kHalf), w, std::nullopt, "gelu");
  REQUIRE(empty.sizes() == torch::IntArrayRef({0, 6}));
  empty.sum().backward();
  REQUIRE(torch::equal(w.grad(), torch::zeros_like(w)));

  auto k1 = ampkit::fused_linear(torch::ones({3, 1}, torch::kHalf), torch::full({2, 1}, 0.5, torch::kHalf),
                                 torch::full({2}, 0.25, torch::kHalf), "relu");
  REQUIRE(torch::equal(k1, torch::full({3, 2}, 0.75, torch::kHalf)));

  auto x = torch::randn({4, 8});
  auto w32 = torch::randn({5, 8});
  torch::Tensor out;
  {
    at::autocast::set_autocast_enabled(at::kCPU, true);
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    out = ampkit::fused_linear(x, w32);
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::clear_cache();
  }
  REQUIRE(out.scalar_type() == torch::kBFloat16);
  REQUIRE(torch::equal(out, ampkit::fused_linear(x.to(torch::kBFloat16), w32.to(torch::kBFloat16))));
}

TEST_CASE("fused_mlp equals fused_linear(gelu) then fused_linear, and trains", "[fused_linear][fused_mlp]") {
  for (const auto& device : devices_under_test()) {
    torch::manual_seed(3);
    const auto options = torch::dtype(torch::kBFloat16).device(device);
    auto x = torch::randn({2, 3, 10}, options).requires_grad_();
    auto w1 = (torch::randn({24, 10}) / std::sqrt(10.0)).to(options).requires_grad_();
    auto b1 = torch::randn({24}, options).requires_grad_();
    auto w2 = (torch::randn({6, 24}) / std::sqrt(24.0)).to(options).requires_grad_();
    auto b2 = torch::randn({6}, options).requires_grad_();
    auto out = ampkit::fused_mlp(x, w1, b1, w2, b2);
    // Both round the hidden activations to bf16 once and accumulate in fp32: the same numbers up to
    // the summation order, which is far below one bf16 rounding of the output.
    auto two_ops = ampkit::fused_linear(ampkit::fused_linear(x, w1, b1, "gelu"), w2, b2);
    REQUIRE(out.sizes() == torch::IntArrayRef({2, 3, 6}));
    CHECK(torch::allclose(out.to(torch::kFloat), two_ops.to(torch::kFloat), std::ldexp(1.0, -7), 1e-3));
    out.sum().backward();
    for (const auto& p : {x, w1, b1, w2, b2}) REQUIRE(p.grad().defined());
    auto grads = torch::autograd::grad({two_ops.sum()}, {x, w1, b1, w2, b2});
    CHECK(torch::allclose(w1.grad().to(torch::kFloat), grads[1].to(torch::kFloat), 2 * std::ldexp(1.0, -7), 2e-2));
    CHECK(torch::allclose(b1.grad().to(torch::kFloat), grads[2].to(torch::kFloat), 2 * std::ldexp(1.0, -7), 2e-2));
  }
  CHECK(throws_with([] { ampkit::fused_mlp(torch::ones({2, 4}), torch::ones({8, 4}), std::nullopt, torch::ones({3, 7}),
                                           std::nullopt); },
                    "weight2 (argument 3) must have shape [out_features, 8] to match the hidden features of weight1"));
}

TEST_CASE("fused_linear rejects bad input with a message naming the argument", "[fused_linear]") {
  auto x = torch::ones({3, 7}, torch::kHalf);
  auto w = torch::ones({5, 7}, torch::kHalf);
  CHECK(throws_with([&] { ampkit::fused_linear(x, torch::ones({5, 6}, torch::kHalf)); },
                    "weight (argument 1) must have shape [out_features, 7] to match the last dimension of input"));
  CHECK(throws_with([&] { ampkit::fused_linear(x, w, torch::ones({4}, torch::kHalf)); },
                    "bias (argument 2) must have shape [5]"));
  CHECK(throws_with([&] { ampkit::fused_linear(x, w.to(torch::kBFloat16)); },
                    "weight (argument 1) must have the dtype of input (float16), got bfloat16"));
  CHECK(throws_with([&] { ampkit::fused_linear(x.to(torch::kInt), w.to(torch::kInt)); },
                    "input (argument 0) must have dtype float32, float16 or bfloat16, got int32"));
  CHECK(throws_with([&] { ampkit::fused_linear(x, w, std::nullopt, "swish"); },
                    "activation must be one of 'none', 'relu', 'gelu' (tanh approximation), got 'swish'"));
  if (c10::Dispatcher::singleton().findSchemaOrThrow("ampkit::fused_linear", "").hasKernelForDispatchKey(
          c10::DispatchKey::CUDA)) {
    // CPU tensors handed to the CUDA kernel directly: an error, not a fault.
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("ampkit::fused_linear", "")
                               .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                 const std::optional<at::Tensor>&, std::string_view)>();
    CHECK(throws_with([&] { op.redispatch(c10::DispatchKeySet(c10::DispatchKey::CUDA), x, w, std::nullopt, "none"); },
                      "input (argument 0) must be a CUDA tensor for the CUDA kernel, got cpu"));
  }
}

TEST_CASE("activation names: one check, the op's, for the op, the C++ API and nn::FusedLinear", "[fused_linear]") {
  CHECK(ampkit::fused_linear_activations() == std::vector<std::string>{"none", "relu", "gelu"});
  for (const auto& name : ampkit::fused_linear_activations()) ampkit::check_fused_linear_activation("caller", name);
  const std::string rule = ": activation must be one of 'none', 'relu', 'gelu' (tanh approximation), got 'swish'";
  CHECK(throws_with([] { ampkit::check_fused_linear_activation("my_api", "swish"); }, "my_api" + rule));
  CHECK(throws_with([] { ampkit::fused_linear(torch::randn({3, 4}), torch::randn({5, 4}), std::nullopt, "swish"); },
                    "ampkit.fused_linear" + rule));
  CHECK(throws_with([] { ampkit::nn::FusedLinear(ampkit::nn::FusedLinearOptions(4, 5).activation("swish")); },
                    "ampkit::nn::FusedLinear" + rule));
  try {
    ampkit::check_fused_linear_activation("my_api", "");
    FAIL("an empty activation name was accepted");
  } catch (const c10::ValueError&) {
  }
}

TEST_CASE("ampkit::nn::FusedLinear loads a torch::nn::Linear's parameters and trains", "[fused_linear][nn]") {
  for (const auto& device : devices_under_test()) {
    torch::manual_seed(2);
    torch::nn::Linear linear(12, 6);
    ampkit::nn::FusedLinear fused(ampkit::nn::FusedLinearOptions(12, 6).activation("relu"));
    REQUIRE(fused->named_parameters().size() == linear->named_parameters().size());
    {
      torch::NoGradGuard no_grad;
      for (const auto& item : linear->named_parameters()) fused->named_parameters()[item.key()].copy_(item.value());
    }
    linear->to(device);
    fused->to(device);
    auto x = torch::randn({4, 12}, torch::device(device));
    auto ref = torch::relu(linear(x)).detach();
    CHECK(within(fused(x).detach(), ref, forward_bound(x, linear->weight, linear->bias, ref, torch::kFloat, "relu") * 4));

    torch::optim::SGD optimizer(fused->parameters(), 0.1);
    optimizer.zero_grad();
    fused(x).sum().backward();
    REQUIRE(fused->weight.grad().defined());
    REQUIRE(fused->bias.grad().defined());
    optimizer.step();

    ampkit::nn::FusedLinear no_bias(ampkit::nn::FusedLinearOptions(3, 2).bias(false).activation("gelu"));
    REQUIRE(!no_bias->bias.defined());
    REQUIRE(no_bias(torch::ones({1, 3})).sizes() == torch::IntArrayRef({1, 2}));
    std::ostringstream printed;
    printed << *no_bias;
    REQUIRE(printed.str().find("activation=gelu") != std::string::npos);
  }
  CHECK(throws_with([] { ampkit::nn::FusedLinear(ampkit::nn::FusedLinearOptions(3, 2).activation("tanh")); },
                    "activation must be one of 'none', 'relu', 'gelu'"));
}

TEST_CASE("ampkit::nn::FusedMLP matches Linear -> GELU(tanh) -> Linear, with Linear's parameter names",
          "[fused_linear][nn]") {
  for (const auto& device : devices_under_test()) {
    torch::manual_seed(3);
    ampkit::nn::FusedMLP mlp(ampkit::nn::FusedMLPOptions(12, 20, 5));
    torch::nn::Sequential reference(torch::nn::Linear(12, 20),
                                    torch::nn::GELU(torch::nn::GELUOptions().approximate("tanh")),
                                    torch::nn::Linear(20, 5));
    std::vector<std::string> names;
    for (const auto& item : mlp->named_parameters()) names.push_back(item.key());
    REQUIRE(names == std::vector<std::string>{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"});
    {
      // The reference takes the MLP's parameters ("0.weight" <- "fc1.weight", "2.weight" <- "fc2.weight").
      torch::NoGradGuard no_grad;
      auto ours = mlp->named_parameters();
      auto theirs = reference->named_parameters();
      for (const std::string suffix : {"weight", "bias"}) {
        theirs["0." + suffix].copy_(ours["fc1." + suffix]);
        theirs["2." + suffix].copy_(ours["fc2." + suffix]);
      }
    }
    mlp->to(device);
    reference->to(device);
    auto x = torch::randn({3, 4, 12}, torch::device(device));
    auto out = mlp(x);
    auto expected = reference->forward(x);
    REQUIRE(out.sizes() == torch::IntArrayRef({3, 4, 5}));
    // fp32 throughout; sums of <= 20 products in another order: a few ulps of the magnitudes.
    CHECK(torch::allclose(out, expected, /*rtol=*/1e-5, /*atol=*/1e-6));
    out.sum().backward();
    expected.sum().backward();
    auto ours = mlp->named_parameters();
    auto theirs = reference->named_parameters();
    for (const std::string suffix : {"weight", "bias"}) {
      CHECK(torch::allclose(ours["fc1." + suffix].grad(), theirs["0." + suffix].grad(), 1e-5, 1e-6));
      CHECK(torch::allclose(ours["fc2." + suffix].grad(), theirs["2." + suffix].grad(), 1e-5, 1e-6));
    }

    ampkit::nn::FusedMLP no_bias(ampkit::nn::FusedMLPOptions(4, 8, 2).bias(false));
    REQUIRE(!no_bias->fc1->bias.defined());
    no_bias->to(device);
    REQUIRE(no_bias(torch::ones({2, 4}, torch::device(device))).sizes() == torch::IntArrayRef({2, 2}));
    std::ostringstream printed;
    printed << *no_bias;
    REQUIRE(printed.str().find("hidden_features=8") != std::string::npos);
  }
  CHECK(throws_with([] { ampkit::nn::FusedMLP(ampkit::nn::FusedMLPOptions(3, -1, 2)); },
                    "in_features, hidden_features and out_features must be >= 0, got 3, -1 and 2"));
}

TEST_CASE("fused_linear on CUDA runs its epilogues fused at a standard aligned shape", "[fused_linear][cuda]") {
  // CPU kernels never count (they have no cuBLASLt epilogue): this part runs everywhere.
  ampkit::reset_fused_epilogue_counts();
  auto cpu_out = ampkit::fused_linear(torch::randn({4, 8}, torch::kHalf), torch::randn({3, 8}, torch::kHalf),
                                      torch::randn({3}, torch::kHalf), "gelu");
  REQUIRE(cpu_out.sizes() == torch::IntArrayRef({4, 3}));
  CHECK(ampkit::fused_epilogue_counts().fused == 0);
  CHECK(ampkit::fused_epilogue_counts().unfused == 0);

  for (const auto& device : devices_under_test()) {
    if (!device.is_cuda()) continue;
    // 256 x 1024 -> 512, fp16, fresh (256-byte aligned) allocations: every dimension a multiple of
    // 16, the bias 16-byte aligned, the saved GELU input's leading dimension 512 (divisible by 8, as
    // cublasLt.h's EPILOGUE_AUX_LD requires). If cuBLASLt ran none of these fused, fused_linear would
    // silently be an unfused GEMM plus elementwise passes; the counts make that visible.
    torch::manual_seed(5);
    const auto options = torch::dtype(torch::kHalf).device(device);
    auto x = torch::randn({256, 1024}).to(options);
    auto w = (torch::randn({512, 1024}) / 32.0).to(options);
    auto b = (0.5 * torch::randn({512})).to(options);
    for (const std::string activation : {"none", "relu", "gelu"}) {
      INFO("activation " << activation);
      ampkit::reset_fused_epilogue_counts();
      auto out = ampkit::fused_linear(x, w, b, activation);  // no grad: BIAS / RELU_BIAS / GELU_BIAS
      const ampkit::FusedEpilogueCounts counts = ampkit::fused_epilogue_counts();
      CHECK(counts.fused == 1);
      CHECK(counts.unfused == 0);
      auto ref = activate(torch::nn::functional::linear(x.to(torch::kFloat), w.to(torch::kFloat), b.to(torch::kFloat)),
                          activation);
      CHECK(within(out, ref, forward_bound(x, w, b, ref, torch::kHalf, activation)));
    }
    // With a weight that needs a gradient the forward saves the GELU input (GELU_AUX_BIAS): fused too.
    ampkit::reset_fused_epilogue_counts();
    auto w_grad = w.clone().requires_grad_();
    auto out = ampkit::fused_linear(x, w_grad, b, "gelu");
    CHECK(ampkit::fused_epilogue_counts().fused == 1);
    CHECK(ampkit::fused_epilogue_counts().unfused == 0);
    // The backward's BGRADB wgrad is one more epilogue GEMM; cublasLt.h does not promise a fused
    // algorithm for it, so only that it was counted, one way or the other.
    out.sum().backward();
    const ampkit::FusedEpilogueCounts after = ampkit::fused_epilogue_counts();
    CHECK(after.fused + after.unfused == 2);
    if (after.unfused > 0) WARN("cuBLASLt ran the BGRADB wgrad unfused at 256 x 1024 -> 512");
  }
}
