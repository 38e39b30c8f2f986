// A library's own op that declares itself self-routed (ampkit/autocast_self_routed.h): it carries
// its own AutocastCPU kernel, which asks the current ampkit policy how to cast. Defined here, in
// the test, so the autocast layer cannot know it by name: what ampkit's fused_linear and fused_mlp
// rely on too.
#include "test_helpers.h"

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>

#include "ampkit/ampkit.h"
#include "ampkit/autocast_self_routed.h"

using ampkit::AutocastGuard;
using ampkit::autocast::OpList;
using ampkit::autocast::Policy;
using ampkit_test::throws_with;

namespace {

constexpr const char* kOp = "ampkit_cpp_self_routed_test::scaled";

// x * 2 in x's dtype: the output dtype shows how the autocast kernel cast the input.
torch::Tensor scaled_cpu(const torch::Tensor& x) { return x * 2; }

torch::Tensor call_scaled(const torch::Tensor& x) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow(kOp, "")
                             .typed<torch::Tensor(const torch::Tensor&)>();
  return op.call(x);
}

int autocast_kernel_calls = 0;

torch::Tensor scaled_autocast_cpu(const torch::Tensor& x) {
  ++autocast_kernel_calls;
  static const uint32_t slot = ampkit::autocast::self_routed_slot(kOp);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const auto dtype = ampkit::autocast::self_routed_dtype(c10::kCPU, slot, {&x});
  return call_scaled(dtype ? at::autocast::cached_cast(*dtype, x, c10::kCPU) : x);
}

TORCH_LIBRARY(ampkit_cpp_self_routed_test, m) { m.def("scaled(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(ampkit_cpp_self_routed_test, CPU, m) { m.impl("scaled", &scaled_cpu); }
TORCH_LIBRARY_IMPL(ampkit_cpp_self_routed_test, AutocastCPU, m) { m.impl("scaled", &scaled_autocast_cpu); }

// The declaration under test: without it every policy naming the op is refused (its autocast
// kernel is not ampkit's), and torch_default() does not list it.
const ampkit::autocast::SelfRoutedRegistration scaled_is_self_routed(kOp);

}  // namespace

TEST_CASE("a user op registered as self-routed follows ampkit policies through its own autocast kernel",
          "[autocast][self_routed]") {
  const auto x = torch::randn({4});
  const auto base = Policy::torch_default(torch::kCPU, torch::kBFloat16);
  CHECK(base.list_of(kOp) == OpList::kAllow);  // low precision by default, like torch's linear
  {
    AutocastGuard guard(base);
    CHECK(call_scaled(x).scalar_type() == torch::kBFloat16);
  }
  {
    AutocastGuard guard(base.deny({kOp}));
    CHECK(call_scaled(x.to(torch::kBFloat16)).scalar_type() == torch::kFloat);
  }
  {
    AutocastGuard guard(base.passthrough({kOp}));
    CHECK(call_scaled(x).scalar_type() == torch::kFloat);
    CHECK(call_scaled(x.to(torch::kBFloat16)).scalar_type() == torch::kBFloat16);
  }
  {
    AutocastGuard guard(base.promote({kOp}));
    CHECK(call_scaled(x).scalar_type() == torch::kFloat);
    CHECK(call_scaled(x.to(torch::kBFloat16)).scalar_type() == torch::kBFloat16);
  }
  {
    // A plain autocast region (no ampkit policy current): the autocast dtype, as for torch's linear.
    at::autocast::set_autocast_enabled(c10::kCPU, true);
    at::autocast::set_autocast_dtype(c10::kCPU, torch::kBFloat16);
    const auto out = call_scaled(x);
    at::autocast::set_autocast_enabled(c10::kCPU, false);
    at::autocast::clear_cache();
    CHECK(out.scalar_type() == torch::kBFloat16);
  }
  // Installing a policy that names the op registers nothing over its own kernel: that kernel
  // still runs.
  ampkit::autocast::install(base.deny({kOp}));
  {
    AutocastGuard guard(base.deny({kOp}));
    const int calls = autocast_kernel_calls;
    CHECK(call_scaled(x.to(torch::kBFloat16)).scalar_type() == torch::kFloat);
    CHECK(autocast_kernel_calls == calls + 1);
  }
}

TEST_CASE("ampkit's own fused ops are self-routed through the same registration", "[autocast][self_routed]") {
  const auto base = Policy::torch_default(torch::kCPU, torch::kBFloat16);
  CHECK(base.list_of("ampkit::fused_linear") == OpList::kAllow);
  CHECK(base.list_of("ampkit::fused_mlp") == OpList::kAllow);
  const auto x = torch::randn({3, 4}), w = torch::randn({5, 4});
  AutocastGuard guard(base.deny({"ampkit::fused_linear"}));
  CHECK(ampkit::fused_linear(x.to(torch::kBFloat16), w.to(torch::kBFloat16)).scalar_type() == torch::kFloat);
}

TEST_CASE("bad input: register_self_routed_op and self_routed_slot", "[autocast][self_routed][bad_input]") {
  CHECK(throws_with([] { ampkit::autocast::register_self_routed_op("scaled"); },
                    "qualified_name must be a fully qualified op name like 'mylib::my_gemm', got 'scaled'"));
  CHECK(throws_with([] { ampkit::autocast::register_self_routed_op("aten::mm"); },
                    "aten::mm is routed by ampkit's own autocast kernel (torch routes it); it cannot be self-routed"));
  CHECK(throws_with([] { ampkit::autocast::self_routed_slot("ampkit_cpp_self_routed_test::unknown"); },
                    "ampkit_cpp_self_routed_test::unknown is not a self-routed op (declare it with "
                    "register_self_routed_op)"));
  // Registering twice is harmless.
  ampkit::autocast::register_self_routed_op(kOp);
  CHECK(Policy::torch_default(torch::kCPU, torch::kBFloat16).list_of(kOp) == OpList::kAllow);
}

TEST_CASE("torch_routes: torch's own routing as ampkit mirrors it", "[autocast]") {
  const auto routes = ampkit::autocast::torch_routes(torch::kCPU);
  const auto mm = std::find_if(routes.begin(), routes.end(), [](const auto& route) { return route.first == "aten::mm"; });
  REQUIRE(mm != routes.end());
  CHECK(mm->second == "lower_precision");
  for (const auto& route : routes) CHECK(route.first.rfind("ampkit::", 0) != 0);  // self-routed ops are not torch's
  CHECK(throws_with([] { ampkit::autocast::torch_routes(torch::kMeta); }, "device_type must be cpu or cuda, got meta"));
}
