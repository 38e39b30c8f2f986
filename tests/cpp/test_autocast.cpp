// ampkit autocast policies from the C++ frontend: AutocastGuard, Policy, per-module policies, and
// the boxed path for an op ampkit does not know at compile time (defined here, in the test).
#include "test_helpers.h"

#include <ATen/autocast_mode.h>

#include "ampkit/ampkit.h"

using ampkit::AutocastGuard;
using ampkit::autocast::OpList;
using ampkit::autocast::Policy;
using ampkit_test::throws_with;

namespace {

// Records the dtype of what flows through it.
struct DtypeProbeImpl : torch::nn::Module {
  explicit DtypeProbeImpl(std::vector<torch::Dtype>* seen) : seen(seen) {}
  torch::Tensor forward(const torch::Tensor& x) {
    seen->push_back(x.scalar_type());
    return x;
  }
  std::vector<torch::Dtype>* seen;
};
TORCH_MODULE(DtypeProbe);

// An op ampkit knows nothing about: returns a code per tensor input dtype (0 fp32, 1 bf16, 3 int64).
torch::Tensor seen_dtypes(const torch::Tensor& x, const std::optional<torch::Tensor>& y, at::TensorList zs) {
  std::vector<float> codes;
  auto code = [](const torch::Tensor& t) {
    return t.scalar_type() == torch::kFloat ? 0.f : t.scalar_type() == torch::kBFloat16 ? 1.f : 3.f;
  };
  codes.push_back(code(x));
  if (y) codes.push_back(code(*y));
  for (const auto& z : zs) codes.push_back(code(z));
  return torch::tensor(codes);
}

TORCH_LIBRARY(ampkit_cpp_autocast_test, m) { m.def("seen(Tensor x, Tensor? y, Tensor[] zs) -> Tensor"); }
TORCH_LIBRARY_IMPL(ampkit_cpp_autocast_test, CPU, m) { m.impl("seen", &seen_dtypes); }

torch::Tensor call_seen(const torch::Tensor& x, const std::optional<torch::Tensor>& y, at::TensorList zs) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ampkit_cpp_autocast_test::seen", "")
                             .typed<torch::Tensor(const torch::Tensor&, const std::optional<torch::Tensor>&, at::TensorList)>();
  return op.call(x, y, zs);
}

std::vector<float> as_vector(const torch::Tensor& t) { return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel()); }

}  // namespace

TEST_CASE("AutocastGuard with torch's default lists casts as torch does", "[autocast]") {
  auto a = torch::randn({8, 16});
  auto b = torch::randn({16, 4});
  REQUIRE_FALSE(at::autocast::is_autocast_enabled(torch::kCPU));
  {
    AutocastGuard guard(torch::kCPU, torch::kBFloat16);
    REQUIRE(at::autocast::is_autocast_enabled(torch::kCPU));
    auto out = torch::mm(a, b);
    REQUIRE(out.scalar_type() == torch::kBFloat16);
    REQUIRE(torch::equal(out, torch::mm(a.to(torch::kBFloat16), b.to(torch::kBFloat16))));
    // bf16 inputs to an op in torch's CPU fp32 list run in fp32
    REQUIRE(torch::mse_loss(a.to(torch::kBFloat16), a.to(torch::kBFloat16)).scalar_type() == torch::kFloat);
    {
      AutocastGuard off(torch::kCPU, torch::kBFloat16, /*enabled=*/false);
      REQUIRE(torch::mm(a, b).scalar_type() == torch::kFloat);
    }
    REQUIRE(torch::mm(a, b).scalar_type() == torch::kBFloat16);
  }
  REQUIRE_FALSE(at::autocast::is_autocast_enabled(torch::kCPU));
  REQUIRE(torch::mm(a, b).scalar_type() == torch::kFloat);
}

TEST_CASE("a Sequential under a custom policy has the per-layer dtypes the policy says", "[autocast]") {
  torch::manual_seed(0);
  std::vector<torch::Dtype> seen;
  torch::nn::Sequential model(torch::nn::Linear(8, 16), DtypeProbe(&seen), torch::nn::ReLU(), DtypeProbe(&seen),
                              torch::nn::Linear(16, 16), DtypeProbe(&seen),
                              ampkit::autocast::with_policy(torch::nn::Linear(16, 4), std::nullopt), DtypeProbe(&seen));
  // relu is in no torch list (boxed path); deny it: it runs in fp32, and the next linear (allowed)
  // goes back to bf16; the head has a per-module fp32 policy and stays fp32.
  const auto policy = Policy::torch_default(torch::kCPU, torch::kBFloat16).deny({"relu"});
  REQUIRE(policy.list_of("relu") == OpList::kDeny);
  auto x = torch::randn({3, 8});
  torch::Tensor out;
  {
    AutocastGuard guard(policy);
    out = model->forward(x);
  }
  REQUIRE(seen == std::vector<torch::Dtype>{torch::kBFloat16, torch::kFloat, torch::kBFloat16, torch::kFloat});
  REQUIRE(out.scalar_type() == torch::kFloat);

  // Without the deny, relu keeps the dtype it is given.
  seen.clear();
  {
    AutocastGuard guard(torch::kCPU, torch::kBFloat16);
    model->forward(x);
  }
  REQUIRE(seen == std::vector<torch::Dtype>{torch::kBFloat16, torch::kBFloat16, torch::kBFloat16, torch::kFloat});

  // A module with its own low-precision policy autocasts even outside any region.
  auto head = ampkit::autocast::with_policy(torch::nn::Linear(16, 4), Policy::torch_default(torch::kCPU, torch::kBFloat16));
  REQUIRE(head->forward(torch::randn({2, 16})).scalar_type() == torch::kBFloat16);
}

TEST_CASE("the boxed path casts Tensor, Tensor? and Tensor[] arguments of an op named at run time", "[autocast]") {
  auto x = torch::randn({2});
  auto z = torch::randn({2}).to(torch::kBFloat16);
  auto idx = torch::arange(2);
  const auto base = Policy::torch_default(torch::kCPU, torch::kBFloat16);
  {
    AutocastGuard guard(base.allow({"ampkit_cpp_autocast_test::seen"}));
    REQUIRE(as_vector(call_seen(x, x, {z, idx})) == std::vector<float>{1, 1, 1, 3});
    REQUIRE(as_vector(call_seen(x, std::nullopt, {})) == std::vector<float>{1});
  }
  {
    AutocastGuard guard(base.deny({"ampkit_cpp_autocast_test::seen"}));
    REQUIRE(as_vector(call_seen(z, x, {z})) == std::vector<float>{0, 0, 0});
  }
  {
    AutocastGuard guard(base);  // not named: untouched
    REQUIRE(as_vector(call_seen(x, z, {z})) == std::vector<float>{0, 1, 1});
  }
}

TEST_CASE("Policy construction rejects bad input with a clear message", "[autocast]") {
  CHECK(throws_with([] { Policy(torch::kCPU, torch::kFloat); }, "dtype (the lower precision of the allow list) must be float16 or bfloat16, got float32"));
  CHECK(throws_with([] { Policy(torch::kMPS, torch::kHalf); }, "device_type must be cpu or cuda, got mps"));
  CHECK(throws_with([] { Policy(torch::kCPU, torch::kHalf, {"no_such_op"}); }, "unknown op 'no_such_op' in the allow list"));
  CHECK(throws_with([] { Policy(torch::kCPU, torch::kHalf, {"mm"}, {}, {}, {"aten::mm"}); },
                    "op aten::mm is in two lists: allow (as 'mm') and passthrough (as 'aten::mm')"));
  CHECK(throws_with([] { Policy::torch_default(torch::kCUDA, torch::kHalf).allow({"_cudnn_rnn"}); },
                    "another library already registers an autocast kernel"));
  CHECK(throws_with([] { ampkit::autocast::set_global_policy("mixed_int8"); }, "got 'mixed_int8'"));
  CHECK(throws_with([] { AutocastGuard guard(torch::kCPU, torch::kDouble); }, "dtype must be float16 or bfloat16, got float64"));
  REQUIRE_FALSE(at::autocast::is_autocast_enabled(torch::kCPU));
}

TEST_CASE("global policies, uninstall and reinstall", "[autocast]") {
  auto a = torch::randn({4, 4});
  ampkit::autocast::set_global_policy(Policy::torch_default(torch::kCPU, torch::kBFloat16).deny({"mm"}));
  {
    AutocastGuard guard(torch::kCPU);
    REQUIRE(torch::mm(a, a).scalar_type() == torch::kFloat);
    REQUIRE(torch::matmul(a, a).scalar_type() == torch::kBFloat16);
  }
  ampkit::autocast::set_global_policy("float32");
  REQUIRE(ampkit::autocast::global_policy_is_float32(torch::kCPU));
  {
    AutocastGuard guard(torch::kCPU);
    REQUIRE(torch::mm(a, a).scalar_type() == torch::kFloat);
  }
  ampkit::autocast::set_global_policy("mixed_float16");
  {
    AutocastGuard guard(torch::kCPU);
    REQUIRE(torch::mm(a, a).scalar_type() == torch::kHalf);
  }
  ampkit::autocast::clear_global_policy();
  REQUIRE_FALSE(ampkit::autocast::global_policy(torch::kCPU).has_value());

  ampkit::autocast::uninstall();
  REQUIRE_FALSE(ampkit::autocast::is_installed(torch::kCPU));
  {
    AutocastGuard guard(Policy::torch_default(torch::kCPU, torch::kBFloat16).passthrough({"mm"}));
    REQUIRE(ampkit::autocast::is_installed(torch::kCPU));
    REQUIRE(torch::mm(a, a).scalar_type() == torch::kFloat);
  }
}

TEST_CASE("explain records op, list and dtypes", "[autocast]") {
  auto a = torch::randn({4, 4});
  ampkit::autocast::Recording recording;
  {
    AutocastGuard guard(Policy::torch_default(torch::kCPU, torch::kBFloat16).allow({"aten::softmax.int"}));
    torch::softmax(torch::mm(a, a), 1);
  }
  const auto& records = recording.records();
  REQUIRE(records.size() == 2);
  CHECK(records[0].op == "aten::mm");
  CHECK(records[0].list == "allow");
  CHECK(records[0].inputs == std::vector<std::string>{"float32", "float32"});
  CHECK(records[0].outputs == std::vector<std::string>{"bfloat16"});
  CHECK(records[1].op == "aten::softmax.int");
  CHECK(records[1].outputs == std::vector<std::string>{"bfloat16"});
}

TEST_CASE("Policy::for_this_machine runs attention in fp32 where this CPU is slower in low precision", "[autocast]") {
  namespace autocast = ampkit::autocast;
  const auto attention = [](const torch::Tensor& q, const torch::Tensor& kv) {
    return at::scaled_dot_product_attention(q, kv, kv, {}, 0.0, /*is_causal=*/false);
  };
  for (const auto dtype : {torch::kBFloat16, torch::kHalf}) {
    CHECK(autocast::slow_in_lower_precision(torch::kCUDA, dtype).empty());
    const auto fitted = Policy::for_this_machine(torch::kCPU, dtype);
    const auto base = Policy::torch_default(torch::kCPU, dtype);
    CHECK(fitted.fitted_to_machine());
    CHECK_FALSE(base.fitted_to_machine());
    CHECK(fitted != base);
    for (const auto list : {OpList::kAllow, OpList::kDeny, OpList::kPromote, OpList::kPassthrough}) {
      CHECK(fitted.ops(list) == base.ops(list));
    }
    CHECK(fitted.deny({"mm"}).fitted_to_machine());
    CHECK(fitted.with_dtype(torch::kHalf).fitted_to_machine());

    const auto slow = autocast::slow_in_lower_precision(torch::kCPU, dtype);
    std::string when;
    for (const auto& op : slow) {
      CHECK(op.op == "aten::scaled_dot_product_attention");
      CHECK(op.reason.find("flash attention") != std::string::npos);
      when = op.when;
    }
    // 16 keys x head dim 8 = 128: short; 1024 keys x 32 = 32768: long.
    torch::manual_seed(0);
    const auto few = torch::randn({1, 2, 16, 8}).to(dtype);
    const auto many = torch::randn({1, 2, 1024, 32}).to(dtype);
    const auto few_queries_wide = torch::randn({1, 2, 16, 32}).to(dtype);
    torch::Tensor short_out, long_out;
    {
      AutocastGuard guard(fitted);
      short_out = attention(few, few);
      long_out = attention(few_queries_wide, many);
    }
    const bool short_fp32 = !when.empty();
    const bool long_fp32 = when == "every call";
    CHECK(short_out.scalar_type() == (short_fp32 ? torch::kFloat : dtype));
    CHECK(long_out.scalar_type() == (long_fp32 ? torch::kFloat : dtype));
    if (short_fp32) CHECK(torch::equal(short_out, attention(few.to(torch::kFloat), few.to(torch::kFloat))));
    {
      AutocastGuard guard(base);  // torch's lists: low precision whatever the shapes
      CHECK(attention(few, few).scalar_type() == dtype);
    }
  }
}
