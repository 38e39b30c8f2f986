// libampkit_python.so: what the Python package needs beyond the ops of libampkit, registered with
// the dispatcher (TORCH_LIBRARY ampkit_python) instead of as a CPython extension module. Python
// loads it with torch.ops.load_library, so it uses no Python C API at all: one build serves every
// CPython that runs this torch (the wheel is tagged abi3). Stateful autocast objects are torch
// custom classes (torch.classes.ampkit_python.*); the rest are ops (torch.ops.ampkit_python.*),
// except the region entry points, plain C functions (ampkit_autocast_enter/_exit, at the end).
// Devices and dtypes cross as strings ("cpu", "bfloat16"); python/ampkit/_native.py converts.
#include <torch/custom_class.h>
#include <torch/library.h>

#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "ampkit/autocast.h"
#include "ampkit/build_info.h"
#include "ampkit/contracts.h"
#include "ampkit/fused_linear.h"

namespace ampkit::python {
namespace {

c10::DeviceType device_from(const std::string& name) { return c10::Device(name).type(); }

c10::ScalarType dtype_from(const std::string& name) {
  static const std::pair<const char*, c10::ScalarType> names[] = {
      {"float16", c10::kHalf}, {"bfloat16", c10::kBFloat16}, {"float32", c10::kFloat}, {"float64", c10::kDouble}};
  for (const auto& [text, dtype] : names) {
    if (name == text) return dtype;
  }
  TORCH_CHECK_VALUE(false, "ampkit autocast: dtype must be float16 or bfloat16, got ", name);
}

std::string dtype_name(c10::ScalarType dtype) {
  return dtype == c10::kHalf ? "float16" : dtype == c10::kBFloat16 ? "bfloat16" : c10::toString(dtype);
}

autocast::OpList list_from(const std::string& name) {
  for (auto list : {autocast::OpList::kAllow, autocast::OpList::kDeny, autocast::OpList::kPromote,
                    autocast::OpList::kPassthrough}) {
    if (autocast::list_name(list) == name) return list;
  }
  TORCH_CHECK_VALUE(false, "ampkit autocast: list must be allow, deny, promote or passthrough, got ", name);
}

// autocast::Policy as a custom class (immutable: every edit returns a new one, as in C++).
struct PolicyObject : torch::CustomClassHolder {
  explicit PolicyObject(autocast::Policy value) : policy(std::move(value)) {}
  autocast::Policy policy;
};
using PolicyRef = c10::intrusive_ptr<PolicyObject>;

PolicyRef wrap(autocast::Policy policy) { return c10::make_intrusive<PolicyObject>(std::move(policy)); }

// The regions Python opens: `with ampkit.autocast(...)` calls ampkit_autocast_enter and
// ampkit_autocast_exit (below) through ctypes. A region is opened once per training step, after the
// backward pass has evicted the caches; there, a custom-class construction plus two boxed method
// calls cost ~160 us and two plain C calls ~10 us (torch.autocast: ~14 us). Each thread keeps its
// open regions on a stack, as torch keeps its autocast state per thread.
struct OpenRegions {
  std::vector<std::unique_ptr<AutocastGuard>> stack;
  // A region still open when its thread ends (or the process exits) is not left: leaving restores
  // torch's thread-local autocast state, which may already be gone by then.
  ~OpenRegions() {
    for (auto& guard : stack) static_cast<void>(guard.release());
  }
};
thread_local OpenRegions open_regions;
thread_local std::string region_error;

enum RegionStatus : int64_t { kRegionValueError = -1, kRegionTypeError = -2, kRegionRuntimeError = -3 };

int64_t region_failure(const std::exception& error, RegionStatus status) {
  region_error = error.what();
  // c10 errors carry their C++ backtrace in what(); the message alone is what the user needs.
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&error)) region_error = c10_error->msg();
  return status;
}

template <typename Body>
int64_t guarded(Body body) {
  try {
    return body();
  } catch (const c10::ValueError& error) {
    return region_failure(error, kRegionValueError);
  } catch (const c10::TypeError& error) {
    return region_failure(error, kRegionTypeError);
  } catch (const std::exception& error) {
    return region_failure(error, kRegionRuntimeError);
  }
}

constexpr int32_t kNoDtype = 0;

c10::ScalarType region_dtype(int32_t code) {
  TORCH_CHECK_VALUE(code == 1 || code == 2, "ampkit.autocast: dtype code must be 1 (float16) or 2 (bfloat16), got ",
                    code);
  return code == 1 ? c10::kHalf : c10::kBFloat16;
}

c10::DeviceType region_device(int32_t code) {
  TORCH_CHECK_VALUE(code == 0 || code == 1, "ampkit.autocast: device code must be 0 (cpu) or 1 (cuda), got ", code);
  return code == 0 ? c10::kCPU : c10::kCUDA;
}

// explain(): (op, list, input dtypes, output dtypes) for every op routed while recording.
using OpRecordTuple = std::tuple<std::string, std::string, std::vector<std::string>, std::vector<std::string>>;

struct ExplainRecording : torch::CustomClassHolder {
  void start() { recording_ = std::make_unique<autocast::Recording>(); }
  std::vector<OpRecordTuple> stop() {
    TORCH_CHECK(recording_, "ampkit.explain: recording was not started");
    std::vector<OpRecordTuple> records;
    for (const auto& record : recording_->records()) {
      records.emplace_back(record.op, record.list, record.inputs, record.outputs);
    }
    recording_.reset();
    return records;
  }

 private:
  std::unique_ptr<autocast::Recording> recording_;
};

contracts::Context python_context(std::string prefix, std::string suffix = "") {
  return {std::move(prefix), contracts::Audience::Python, std::move(suffix), contracts::Form::Options};
}

// min_scale / max_scale: None is no bound (C++ spells it 0 / inf).
void check_grad_scaler_options(const std::string& prefix, const std::string& scale_name, double scale,
                               double growth_factor, double backoff_factor, int64_t growth_interval,
                               int64_t hysteresis, std::optional<double> min_scale, std::optional<double> max_scale) {
  const contracts::Context context = python_context(prefix);
  contracts::check_scale_value(scale_name.c_str(), scale, context);
  contracts::check_loss_scale_options({growth_factor, backoff_factor, growth_interval, hysteresis,
                                       min_scale.value_or(0.0),
                                       max_scale.value_or(std::numeric_limits<double>::infinity())},
                                      context);
}

void check_scale_value(const std::string& prefix, const std::string& name, double value) {
  contracts::check_scale_value(name.c_str(), value, python_context(prefix));
}

// lr None: a device tensor, whose value is not read on the host.
void check_sgd_hyperparameters(const std::string& prefix, const std::string& suffix, std::optional<double> lr,
                               double momentum, double dampening, double weight_decay, bool nesterov) {
  contracts::check_sgd_hyperparameters({lr, momentum, dampening, weight_decay, nesterov},
                                       python_context(prefix, suffix));
}

void check_adam_hyperparameters(const std::string& prefix, const std::string& suffix, std::optional<double> lr,
                                double beta1, double beta2, double eps, double weight_decay) {
  contracts::check_adam_hyperparameters({lr, beta1, beta2, eps, weight_decay}, python_context(prefix, suffix));
}

std::vector<std::tuple<std::string, std::string>> torch_routes(const std::string& device) {
  std::vector<std::tuple<std::string, std::string>> routes;
  for (auto& [op, route] : autocast::torch_routes(device_from(device))) routes.emplace_back(op, route);
  return routes;
}

std::optional<PolicyRef> global_policy(const std::string& device) {
  auto policy = autocast::global_policy(device_from(device));
  if (!policy) return std::nullopt;
  return wrap(std::move(*policy));
}

// (version, torch version, CUDA kernels compiled, CUDA architectures)
std::tuple<std::string, std::string, bool, std::string> build_info() {
  const BuildInfo info = ampkit::build_info();
  return {info.version, info.torch_version, info.cuda, info.cuda_architectures};
}

// (fused, unfused) epilogue GEMMs of the CUDA fused_linear / fused_mlp kernels.
std::tuple<int64_t, int64_t> fused_epilogue_counts() {
  const FusedEpilogueCounts counts = ampkit::fused_epilogue_counts();
  return {counts.fused, counts.unfused};
}

void register_autocast_classes(torch::Library& m) {
  m.class_<PolicyObject>("AutocastPolicy")
      .def(torch::init([](const std::string& device, const std::string& dtype, const std::vector<std::string>& allow,
                          const std::vector<std::string>& deny, const std::vector<std::string>& promote,
                          const std::vector<std::string>& passthrough) {
        return wrap(autocast::Policy(device_from(device), dtype_from(dtype), allow, deny, promote, passthrough));
      }))
      .def("allow", [](const PolicyRef& self, std::vector<std::string> ops) { return wrap(self->policy.allow(ops)); })
      .def("deny", [](const PolicyRef& self, std::vector<std::string> ops) { return wrap(self->policy.deny(ops)); })
      .def("promote",
           [](const PolicyRef& self, std::vector<std::string> ops) { return wrap(self->policy.promote(ops)); })
      .def("passthrough",
           [](const PolicyRef& self, std::vector<std::string> ops) { return wrap(self->policy.passthrough(ops)); })
      .def("with_dtype",
           [](const PolicyRef& self, std::string dtype) { return wrap(self->policy.with_dtype(dtype_from(dtype))); })
      .def("device_type",
           [](const PolicyRef& self) { return c10::DeviceTypeName(self->policy.device_type(), /*lower_case=*/true); })
      .def("dtype", [](const PolicyRef& self) { return dtype_name(self->policy.dtype()); })
      .def("fitted_to_machine", [](const PolicyRef& self) { return self->policy.fitted_to_machine(); })
      .def("list_of",
           [](const PolicyRef& self, std::string op) -> std::optional<std::string> {
             const auto list = self->policy.list_of(op);
             if (!list) return std::nullopt;
             return autocast::list_name(*list);
           })
      .def("ops", [](const PolicyRef& self, std::string list) { return self->policy.ops(list_from(list)); })
      .def("equals", [](const PolicyRef& self, PolicyRef other) { return self->policy == other->policy; });

  m.class_<ExplainRecording>("ExplainRecording")
      .def(torch::init<>())
      .def("start", &ExplainRecording::start)
      .def("stop", &ExplainRecording::stop);
}

}  // namespace
}  // namespace ampkit::python

TORCH_LIBRARY(ampkit_python, m) {
  using namespace ampkit::python;
  namespace autocast = ampkit::autocast;
  register_autocast_classes(m);

  m.def("torch_default_policy", [](std::string device, std::string dtype) {
    return wrap(autocast::Policy::torch_default(device_from(device), dtype_from(dtype)));
  });
  m.def("for_this_machine_policy", [](std::string device, std::string dtype) {
    return wrap(autocast::Policy::for_this_machine(device_from(device), dtype_from(dtype)));
  });
  m.def("slow_in_lower_precision", [](std::string device, std::string dtype) {
    std::vector<std::string> ops;
    std::vector<std::string> whens;
    std::vector<std::string> reasons;
    for (auto& slow : autocast::slow_in_lower_precision(device_from(device), dtype_from(dtype))) {
      ops.push_back(std::move(slow.op));
      whens.push_back(std::move(slow.when));
      reasons.push_back(std::move(slow.reason));
    }
    return std::make_tuple(ops, whens, reasons);
  });
  // What ampkit_autocast_enter takes for the policy: the object's address, valid while the Python
  // Policy holding it lives (the region's autocast object keeps it alive across enter).
  m.def("policy_address", [](PolicyRef policy) { return reinterpret_cast<int64_t>(policy.get()); });
  m.def("autocast_install", [](PolicyRef policy) { autocast::install(policy->policy); });
  m.def("autocast_uninstall", [] { autocast::uninstall(); });
  m.def("autocast_is_installed", [](std::string device) { return autocast::is_installed(device_from(device)); });
  m.def("autocast_set_global_policy", [](PolicyRef policy) { autocast::set_global_policy(policy->policy); });
  m.def("autocast_set_global_policy_name", [](std::string name) { autocast::set_global_policy(name); });
  m.def("autocast_clear_global_policy", [] { autocast::clear_global_policy(); });
  m.def("autocast_global_policy", &global_policy);
  m.def("autocast_global_policy_is_float32",
        [](std::string device) { return autocast::global_policy_is_float32(device_from(device)); });
  m.def("autocast_torch_routes", &torch_routes);

  m.def("build_info", &build_info);
  m.def("cpu_kernel_threads", [] { return ampkit::cpu_kernel_threads(); });
  m.def("fused_linear_activations", [] { return ampkit::fused_linear_activations(); });
  m.def("check_fused_linear_activation",
        [](std::string caller, std::string activation) { ampkit::check_fused_linear_activation(caller, activation); });
  m.def("fused_epilogue_counts", &fused_epilogue_counts);
  m.def("reset_fused_epilogue_counts", [] { ampkit::reset_fused_epilogue_counts(); });

  // The argument contracts (ampkit/contracts.h): the Python GradScaler and optimizers check their
  // options by the same rules and messages as the C++ API and the ops. Python checks types first.
  m.def("check_grad_scaler_options", &check_grad_scaler_options);
  m.def("check_scale_value", &check_scale_value);
  m.def("check_sgd_hyperparameters", &check_sgd_hyperparameters);
  m.def("check_adam_hyperparameters", &check_adam_hyperparameters);
}

// The region entry points (see open_regions). Errors never cross the C boundary as exceptions: a
// negative return names the Python exception type (RegionStatus) and ampkit_autocast_error() the
// message.
extern "C" {

// Opens a region on this thread. `policy`: a policy_address, or null for torch's lists in `dtype`
// (1 float16, 2 bfloat16; 0: the global policy, else torch's default dtype, for `device` (0 cpu,
// 1 cuda)). Returns the region's depth on this thread's stack (>= 1), or a RegionStatus.
__attribute__((visibility("default"))) int64_t ampkit_autocast_enter(const void* policy, int32_t device,
                                                                     int32_t dtype, int32_t enabled) {
  using namespace ampkit::python;
  return guarded([&]() -> int64_t {
    const c10::DeviceType device_type = region_device(device);
    std::unique_ptr<ampkit::AutocastGuard> guard;
    if (policy != nullptr) {
      const auto& chosen = static_cast<const PolicyObject*>(policy)->policy;
      TORCH_CHECK_VALUE(chosen.device_type() == device_type, "ampkit.autocast: the policy is for ",
                        c10::DeviceTypeName(chosen.device_type(), true), " but the region is for ",
                        c10::DeviceTypeName(device_type, true));
      guard = std::make_unique<ampkit::AutocastGuard>(chosen, enabled != 0);
    } else if (dtype != kNoDtype) {
      guard = std::make_unique<ampkit::AutocastGuard>(device_type, region_dtype(dtype), enabled != 0);
    } else if (enabled == 0) {
      guard = std::make_unique<ampkit::AutocastGuard>(device_type, c10::kBFloat16, false);
    } else {
      guard = std::make_unique<ampkit::AutocastGuard>(device_type);
    }
    open_regions.stack.push_back(std::move(guard));
    return static_cast<int64_t>(open_regions.stack.size());
  });
}

// Closes the innermost region on this thread, which must be the one at `depth` (regions close in
// the reverse order they opened, on the thread that opened them). Returns 0 or a RegionStatus.
__attribute__((visibility("default"))) int64_t ampkit_autocast_exit(int64_t depth) {
  using namespace ampkit::python;
  return guarded([&]() -> int64_t {
    const auto open = static_cast<int64_t>(open_regions.stack.size());
    TORCH_CHECK(open > 0, "ampkit.autocast: leaving a region, but no region is open on this thread (a region must be "
                "left on the thread that entered it)");
    TORCH_CHECK(depth == open, "ampkit.autocast: leaving the region entered at depth ", depth, " while the innermost "
                "open region on this thread is at depth ", open, "; regions must be left in the reverse order they "
                "were entered");
    open_regions.stack.pop_back();
    return 0;
  });
}

// The message of this thread's last failed enter or exit.
__attribute__((visibility("default"))) const char* ampkit_autocast_error() {
  return ampkit::python::region_error.c_str();
}

}  // extern "C"
