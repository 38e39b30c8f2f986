// Regions (AutocastGuard), the Keras-style global policy, and explain() recording. Entering a
// region flips thread-local state only: torch's autocast flag and dtype for the device, and which
// ampkit policy the kernels read. Kernels are registered once, when a policy is first used.
#include <ATen/autocast_mode.h>

#include <mutex>

#include "ampkit/autocast.h"
#include "autocast/routing.h"
#include "ops/validation.h"

namespace ampkit::autocast {
namespace {

using detail::CompiledPolicy;

int device_index(c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(device_type == c10::kCPU || device_type == c10::kCUDA,
                    "ampkit autocast: device_type must be cpu or cuda, got ", c10::DeviceTypeName(device_type, true));
  return device_type == c10::kCPU ? detail::kCpu : detail::kCuda;
}

// torch's own default lower-precision dtype per device (torch.autocast without dtype).
c10::ScalarType torch_default_dtype(c10::DeviceType device_type) {
  return device_type == c10::kCPU ? c10::kBFloat16 : c10::kHalf;
}

// The four default policies, built once (a region naming only a dtype must not rebuild one).
const Policy& default_policy(c10::DeviceType device_type, c10::ScalarType dtype) {
  static std::once_flag once;
  static std::vector<Policy>* policies = nullptr;
  std::call_once(once, [] {
    policies = new std::vector<Policy>{
        Policy::torch_default(c10::kCPU, c10::kHalf), Policy::torch_default(c10::kCPU, c10::kBFloat16),
        Policy::torch_default(c10::kCUDA, c10::kHalf), Policy::torch_default(c10::kCUDA, c10::kBFloat16)};
  });
  TORCH_CHECK_VALUE(dtype == c10::kHalf || dtype == c10::kBFloat16,
                    "ampkit autocast: dtype must be float16 or bfloat16, got ", ampkit::detail::dtype_name(dtype));
  const int index = device_index(device_type) * 2 + (dtype == c10::kBFloat16 ? 1 : 0);
  return (*policies)[index];
}

enum class GlobalKind { kUnset, kFloat32, kPolicy };

struct GlobalState {
  std::mutex mutex;
  GlobalKind kind[detail::kNumDevices] = {GlobalKind::kUnset, GlobalKind::kUnset};
  std::optional<Policy> policy[detail::kNumDevices];
};

GlobalState& global_state() {
  static GlobalState* state = new GlobalState();
  return *state;
}

}  // namespace

void set_global_policy(const Policy& policy) {
  install(policy);
  auto& state = global_state();
  std::lock_guard<std::mutex> lock(state.mutex);
  const int device = device_index(policy.device_type());
  state.kind[device] = GlobalKind::kPolicy;
  state.policy[device] = policy;
}

void set_global_policy(const std::string& name) {
  if (name == "float32") {
    auto& state = global_state();
    std::lock_guard<std::mutex> lock(state.mutex);
    for (int device = 0; device < detail::kNumDevices; ++device) {
      state.kind[device] = GlobalKind::kFloat32;
      state.policy[device].reset();
    }
    return;
  }
  TORCH_CHECK_VALUE(name == "mixed_float16" || name == "mixed_bfloat16",
                    "ampkit.set_global_policy: expected 'mixed_float16', 'mixed_bfloat16', 'float32' or a Policy, got '",
                    name, "'");
  const c10::ScalarType dtype = name == "mixed_float16" ? c10::kHalf : c10::kBFloat16;
  set_global_policy(default_policy(c10::kCPU, dtype));
  set_global_policy(default_policy(c10::kCUDA, dtype));
}

void clear_global_policy() {
  auto& state = global_state();
  std::lock_guard<std::mutex> lock(state.mutex);
  for (int device = 0; device < detail::kNumDevices; ++device) {
    state.kind[device] = GlobalKind::kUnset;
    state.policy[device].reset();
  }
}

std::optional<Policy> global_policy(c10::DeviceType device_type) {
  auto& state = global_state();
  std::lock_guard<std::mutex> lock(state.mutex);
  return state.policy[device_index(device_type)];
}

bool global_policy_is_float32(c10::DeviceType device_type) {
  auto& state = global_state();
  std::lock_guard<std::mutex> lock(state.mutex);
  return state.kind[device_index(device_type)] == GlobalKind::kFloat32;
}

Recording::Recording() : previous_(detail::tls_state.recorder) { detail::tls_state.recorder = &records_; }
Recording::~Recording() { detail::tls_state.recorder = previous_; }

OutputWatch::OutputWatch() : previous_(detail::tls_state.output_watch) { detail::tls_state.output_watch = &outputs_; }
OutputWatch::~OutputWatch() { detail::tls_state.output_watch = previous_; }

}  // namespace ampkit::autocast

namespace ampkit {

AutocastGuard::AutocastGuard(c10::DeviceType device_type, c10::ScalarType dtype, bool enabled)
    : device_type_(device_type) {
  autocast::device_index(device_type);
  if (!enabled) {
    enter(nullptr, false);
    return;
  }
  auto global = autocast::global_policy(device_type);
  if (global && global->dtype() == dtype) {
    enter(global->compiled(), true);
  } else {
    enter(autocast::default_policy(device_type, dtype).compiled(), true);
  }
}

AutocastGuard::AutocastGuard(c10::DeviceType device_type) : device_type_(device_type) {
  autocast::device_index(device_type);
  if (autocast::global_policy_is_float32(device_type)) {
    enter(nullptr, false);
    return;
  }
  auto global = autocast::global_policy(device_type);
  enter(global ? global->compiled()
               : autocast::default_policy(device_type, autocast::torch_default_dtype(device_type)).compiled(),
        true);
}

AutocastGuard::AutocastGuard(const autocast::Policy& policy, bool enabled) : device_type_(policy.device_type()) {
  enter(enabled ? policy.compiled() : nullptr, enabled);
}

void AutocastGuard::enter(std::shared_ptr<const autocast::detail::CompiledPolicy> policy, bool enabled) {
  const int device = autocast::device_index(device_type_);
  if (policy) autocast::detail::ensure_installed(*policy);
  previous_enabled_ = at::autocast::is_autocast_enabled(device_type_);
  previous_dtype_ = at::autocast::get_autocast_dtype(device_type_);
  previous_policy_ = autocast::detail::tls_state.current[device];
  policy_ = std::move(policy);
  at::autocast::set_autocast_enabled(device_type_, enabled);
  if (policy_) at::autocast::set_autocast_dtype(device_type_, policy_->dtype);
  autocast::detail::tls_state.current[device] = enabled ? policy_.get() : nullptr;
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  const int device = device_type_ == c10::kCPU ? autocast::detail::kCpu : autocast::detail::kCuda;
  // As torch.autocast's __exit__: the weight-cast cache lives until the outermost region ends.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(device_type_, previous_enabled_);
  at::autocast::set_autocast_dtype(device_type_, previous_dtype_);
  autocast::detail::tls_state.current[device] = previous_policy_;
}

}  // namespace ampkit
