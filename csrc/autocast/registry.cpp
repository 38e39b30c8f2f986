// ampkit's registrations on the AutocastCPU / AutocastCUDA dispatch keys: one torch::Library per
// (key, namespace), created when a policy is first used; kernels are added per op the first time an
// installed policy needs it and stay until uninstall(). Also the boxed kernel for ops ampkit does
// not know at compile time.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/isfinite.h>
#include <torch/library.h>

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>

#include "ampkit/autocast.h"
#include "ampkit/autocast_self_routed.h"
#include "autocast/registry.h"
#include "autocast/routing.h"
#include "ops/validation.h"

namespace ampkit::autocast::detail {
namespace {

struct Registry {
  std::mutex mutex;
  std::unordered_map<std::string, uint32_t> known_slots;  // built once
  std::unordered_map<std::string, uint32_t> dynamic_slots;
  std::deque<std::string> dynamic_names;  // slot - known_op_count()
  std::map<std::pair<int, std::string>, std::unique_ptr<torch::Library>> libraries;  // (device, namespace)
  std::set<uint32_t> registered[kNumDevices];
  std::atomic<uint64_t> generation{1};

  Registry() {
    for (uint32_t slot = 0; slot < known_op_count(); ++slot) known_slots.emplace(known_name(slot), slot);
  }
  static std::string known_name(uint32_t slot) {
    const KnownOp& op = known_ops()[slot];
    return op.overload[0] == '\0' ? std::string(op.name) : std::string(op.name) + "." + op.overload;
  }
};

Registry& registry() {
  static Registry* instance = new Registry();  // never destroyed: kernels may run during exit
  return *instance;
}

void append_dtypes(std::vector<std::string>& out, const c10::IValue& value) {
  if (value.isTensor()) {
    const auto& tensor = value.toTensor();
    out.push_back(tensor.defined() ? ampkit::detail::dtype_name(tensor.scalar_type()) : "undefined");
  } else if (value.isList()) {
    for (const c10::IValue& element : value.toListRef()) append_dtypes(out, element);
  } else if (value.isTuple()) {
    for (const c10::IValue& element : value.toTupleRef().elements()) append_dtypes(out, element);
  }
}

// Casts the floating tensors in `value` (a Tensor, Tensor?, Tensor[] or Tensor?[]) per torch's
// cached_cast; lists are rebuilt, never modified in place (the caller owns them).
void cast_value(c10::IValue& value, at::ScalarType to_type, c10::DeviceType device_type) {
  if (value.isTensor()) {
    value = at::autocast::cached_cast(to_type, value.toTensor(), device_type);
  } else if (value.isTensorList()) {
    c10::List<at::Tensor> cast;
    for (const at::Tensor& tensor : value.toTensorList()) cast.push_back(at::autocast::cached_cast(to_type, tensor, device_type));
    value = std::move(cast);
  } else if (value.isList()) {
    const c10::List<c10::IValue> list = value.toList();
    c10::impl::GenericList cast(list.elementType());
    for (const c10::IValue& element : list) {
      c10::IValue copy = element;
      if (copy.isTensor()) copy = at::autocast::cached_cast(to_type, copy.toTensor(), device_type);
      cast.push_back(std::move(copy));
    }
    value = std::move(cast);
  }
}

at::ScalarType widest(const c10::IValue& value, at::ScalarType current, c10::DeviceType device_type) {
  if (value.isTensor()) return at::autocast::prioritize(current, value.toTensor(), device_type);
  if (value.isList()) {
    for (const c10::IValue& element : value.toListRef()) current = widest(element, current, device_type);
  }
  return current;
}

bool written(const c10::Argument& argument) {
  return argument.alias_info() != nullptr && argument.alias_info()->isWrite();
}

// For any op named at run time: casts every floating Tensor / Tensor? / Tensor[] / Tensor?[]
// argument that the op does not write to, then calls the op below the autocast key.
class BoxedRouteKernel final : public c10::OperatorKernel {
 public:
  explicit BoxedRouteKernel(uint32_t slot) : slot_(slot) {}

  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
    const int device = device_of(keys);
    ThreadState& state = tls_state;
    const Route route = route_for(state, device, slot_);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key(device));
    const c10::DeviceType device_type = device_type_of(device);
    const auto& arguments = op.schema().arguments();
    const size_t first = stack->size() - arguments.size();
    Record record;
    const bool recording = state.recorder != nullptr;
    if (recording) {
      record.op = slot_name(slot_);
      record.list = routed_by(state, device, slot_);
      for (size_t i = 0; i < arguments.size(); ++i) append_dtypes(record.inputs, (*stack)[first + i]);
    }
    if (route == Route::kBanned) throw_banned(slot_name(slot_).c_str());
    if (route != Route::kPassthrough) {
      at::ScalarType to_type = at::kFloat;
      if (route == Route::kLower) to_type = at::autocast::get_autocast_dtype(device_type);
      if (route == Route::kPromote) {
        to_type = at::autocast::get_autocast_dtype(device_type);
        for (size_t i = 0; i < arguments.size(); ++i) {
          if (!written(arguments[i])) to_type = widest((*stack)[first + i], to_type, device_type);
        }
      }
      for (size_t i = 0; i < arguments.size(); ++i) {
        if (!written(arguments[i])) cast_value((*stack)[first + i], to_type, device_type);
      }
    }
    op.callBoxed(stack);
    const size_t returns = op.schema().returns().size();
    if (recording) {
      for (size_t i = stack->size() - returns; i < stack->size(); ++i) append_dtypes(record.outputs, (*stack)[i]);
      state.recorder->push_back(std::move(record));
    }
    if (C10_UNLIKELY(state.output_watch != nullptr) && route == Route::kLower) {
      for (size_t i = stack->size() - returns; i < stack->size(); ++i) {
        const c10::IValue& value = (*stack)[i];
        if (value.isTensor()) watch_output(*state.output_watch, slot_, device, value.toTensor());
        if (value.isTensorList()) {
          for (const at::Tensor& tensor : value.toTensorVector()) watch_output(*state.output_watch, slot_, device, tensor);
        }
      }
    }
  }

 private:
  uint32_t slot_;
};

// torch warns once per process when a kernel replaces another on the same key; ampkit does that
// on purpose, so its registrations run with warnings swallowed.
class SilentWarnings final : public c10::WarningHandler {
 public:
  void process(const c10::Warning&) override {}
};

void register_slot(Registry& reg, int device, uint32_t slot) {
  if (reg.registered[device].count(slot) != 0) return;
  // (reg.mutex is held: read the name directly rather than through slot_name)
  const std::string name =
      slot < known_op_count() ? Registry::known_name(slot) : reg.dynamic_names.at(slot - known_op_count());
  const std::string ns = name.substr(0, name.find("::"));
  auto& library = reg.libraries[{device, ns}];
  if (!library) {
    library = std::make_unique<torch::Library>(torch::Library::IMPL, ns, autocast_key(device), __FILE__, __LINE__);
  }
  if (is_self_routed(name)) {  // its own autocast kernel reads the policy: nothing to register
    reg.registered[device].insert(slot);
    return;
  }
  SilentWarnings silent;
  c10::WarningUtils::WarningHandlerGuard guard(&silent);
  if (slot < known_op_count()) {
    known_ops()[slot].register_kernel(*library, name.c_str());
  } else {
    library->impl(name.c_str(), torch::CppFunction::makeFromBoxedFunctor(std::make_unique<BoxedRouteKernel>(slot)));
  }
  reg.registered[device].insert(slot);
}

}  // namespace

const char* route_name(Route route) {
  switch (route) {
    case Route::kPassthrough:
      return "passthrough";
    case Route::kLower:
      return "lower_precision";
    case Route::kFp32:
      return "fp32";
    case Route::kFp32SetOptDtype:
      return "fp32_set_opt_dtype";
    case Route::kFp32AppendDtype:
      return "fp32_append_dtype";
    case Route::kPromote:
      return "promote";
    case Route::kBanned:
      return "banned";
  }
  return "?";
}

void throw_banned(const char* op) {
  TORCH_CHECK(false, op,
              " and torch.nn.BCELoss are unsafe to autocast (torch refuses them on CUDA); use "
              "binary_cross_entropy_with_logits / torch.nn.BCEWithLogitsLoss, or name the op in an ampkit policy list");
}

std::string slot_name(uint32_t slot) {
  if (slot < known_op_count()) return Registry::known_name(slot);
  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  return reg.dynamic_names.at(slot - known_op_count());
}

void watch_output(std::vector<OutputFlag>& watch, uint32_t slot, int device, const at::Tensor& output) {
  if (!output.defined() || output.scalar_type() != at::autocast::get_autocast_dtype(device_type_of(device))) return;
  std::string op = slot_name(slot);
  op = op.substr(0, op.find('.'));  // the op kind: a policy moves all its overloads together
  watch.push_back({std::move(op), at::isfinite(output).all().logical_not()});
}

std::string routed_by(const ThreadState& state, int device, uint32_t slot) {
  const CompiledPolicy* policy = state.current[device];
  if (policy == nullptr) return std::string("torch:") + route_name(torch_route(device, slot));
  if (slot >= policy->lists.size() || policy->lists[slot] == kNotListed) {
    return route_for(state, device, slot) == Route::kBanned ? "banned (not listed)" : "passthrough (not listed)";
  }
  return list_name(static_cast<OpList>(policy->lists[slot]));
}

c10::OperatorName operator_name(const std::string& qualified) {
  const auto ns_end = qualified.find("::");
  const auto dot = qualified.find('.', ns_end == std::string::npos ? 0 : ns_end + 2);
  if (dot == std::string::npos) return {qualified, ""};
  return {qualified.substr(0, dot), qualified.substr(dot + 1)};
}

uint32_t slot_for(const std::string& qualified_name, int device) {
  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  const auto known = reg.known_slots.find(qualified_name);
  if (known != reg.known_slots.end()) return known->second;
  auto dynamic = reg.dynamic_slots.find(qualified_name);
  uint32_t slot = 0;
  if (dynamic == reg.dynamic_slots.end()) {
    slot = known_op_count() + static_cast<uint32_t>(reg.dynamic_names.size());
  } else {
    slot = dynamic->second;
  }
  if (reg.registered[device].count(slot) == 0) {
    const auto handle = c10::Dispatcher::singleton().findSchema(operator_name(qualified_name));
    TORCH_CHECK_VALUE(handle.has_value(), "ampkit.Policy: unknown op ", qualified_name);
    TORCH_CHECK_VALUE(is_self_routed(qualified_name) || !handle->hasKernelForDispatchKey(autocast_key(device)),
                      "ampkit.Policy: cannot route ",
                      qualified_name, " on ", c10::toString(autocast_key(device)),
                      ": another library already registers an autocast kernel for it that ampkit does not "
                      "mirror, and replacing it would change what torch.autocast does with it");
  }
  if (dynamic == reg.dynamic_slots.end()) {
    reg.dynamic_slots.emplace(qualified_name, slot);
    reg.dynamic_names.push_back(qualified_name);
  }
  return slot;
}

namespace {

// The ops that registered themselves (at static initialisation, so before any policy exists).
// Apart from Registry: register_slot asks is_self_routed with Registry::mutex held.
struct SelfRoutedOps {
  std::mutex mutex;
  std::vector<std::string> names;
};

SelfRoutedOps& self_routed_registry() {
  static SelfRoutedOps* instance = new SelfRoutedOps();  // never destroyed, as registry()
  return *instance;
}

}  // namespace

bool is_self_routed(const std::string& qualified_name) {
  SelfRoutedOps& ops = self_routed_registry();
  std::lock_guard<std::mutex> lock(ops.mutex);
  return std::find(ops.names.begin(), ops.names.end(), qualified_name) != ops.names.end();
}

std::vector<std::string> self_routed_ops() {
  SelfRoutedOps& ops = self_routed_registry();
  std::lock_guard<std::mutex> lock(ops.mutex);
  return ops.names;
}

bool is_registered_by_ampkit(int device, const std::string& qualified_name) {
  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  auto it = reg.known_slots.find(qualified_name);
  uint32_t slot = 0;
  if (it != reg.known_slots.end()) {
    slot = it->second;
  } else {
    it = reg.dynamic_slots.find(qualified_name);
    if (it == reg.dynamic_slots.end()) return false;
    slot = it->second;
  }
  return reg.registered[device].count(slot) != 0;
}

uint64_t install_generation() { return registry().generation.load(std::memory_order_acquire); }

void ensure_installed(const CompiledPolicy& policy) {
  Registry& reg = registry();
  if (policy.installed_generation.load(std::memory_order_acquire) == install_generation()) return;
  std::lock_guard<std::mutex> lock(reg.mutex);
  const int device = policy.device;
  // Every op torch routes on this key gets ampkit's kernel (which applies torch's route when no
  // ampkit policy is current), so "not in any list" means the same thing for every policy.
  for (uint32_t slot = 0; slot < known_op_count(); ++slot) {
    if (torch_route(device, slot) != Route::kPassthrough) register_slot(reg, device, slot);
  }
  for (const uint32_t slot : policy.named_slots) register_slot(reg, device, slot);
  policy.installed_generation.store(reg.generation.load(std::memory_order_acquire), std::memory_order_release);
}

}  // namespace ampkit::autocast::detail

namespace ampkit::autocast {

void install(const Policy& policy) { detail::ensure_installed(*policy.compiled()); }

void uninstall() {
  auto& reg = detail::registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  reg.libraries.clear();  // each Library's destructor deregisters its kernels: aten's are back
  for (auto& slots : reg.registered) slots.clear();
  reg.generation.fetch_add(1, std::memory_order_acq_rel);
}

bool is_installed(c10::DeviceType device_type) {
  auto& reg = detail::registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  return !reg.registered[device_type == c10::kCPU ? detail::kCpu : detail::kCuda].empty();
}

}  // namespace ampkit::autocast

namespace ampkit::autocast {

void register_self_routed_op(const char* qualified_name) {
  const std::string name = qualified_name == nullptr ? "" : qualified_name;
  TORCH_CHECK_VALUE(name.find("::") != std::string::npos && name.find("::") > 0,
                    "ampkit::autocast::register_self_routed_op: qualified_name must be a fully qualified op name "
                    "like 'mylib::my_gemm', got '", name, "'");
  if (detail::is_self_routed(name)) return;
  {
    detail::Registry& reg = detail::registry();
    std::lock_guard<std::mutex> lock(reg.mutex);
    TORCH_CHECK_VALUE(reg.known_slots.count(name) == 0, "ampkit::autocast::register_self_routed_op: ", name,
                      " is routed by ampkit's own autocast kernel (torch routes it); it cannot be self-routed");
    const auto dynamic = reg.dynamic_slots.find(name);
    for (int device = 0; device < detail::kNumDevices; ++device) {
      TORCH_CHECK_VALUE(dynamic == reg.dynamic_slots.end() || reg.registered[device].count(dynamic->second) == 0,
                        "ampkit::autocast::register_self_routed_op: ", name,
                        " already has ampkit's autocast kernel on ", c10::toString(detail::autocast_key(device)),
                        " (an installed policy names it); register it before any policy names it");
    }
  }
  detail::SelfRoutedOps& ops = detail::self_routed_registry();
  std::lock_guard<std::mutex> lock(ops.mutex);
  ops.names.push_back(name);
}

uint32_t self_routed_slot(const char* qualified_name) {
  TORCH_CHECK(detail::is_self_routed(qualified_name), "ampkit::autocast::self_routed_slot: ", qualified_name,
              " is not a self-routed op (declare it with register_self_routed_op)");
  return detail::slot_for(qualified_name, detail::kCpu);
}

std::optional<at::ScalarType> self_routed_dtype(c10::DeviceType device_type, uint32_t slot,
                                                std::initializer_list<const at::Tensor*> inputs) {
  const int device = device_type == c10::kCPU ? detail::kCpu : detail::kCuda;
  const at::ScalarType lower = at::autocast::get_autocast_dtype(device_type);
  const detail::ThreadState& state = detail::tls_state;
  if (state.current[device] == nullptr) return lower;
  switch (detail::route_for(state, device, slot)) {
    case detail::Route::kLower:
      return lower;
    case detail::Route::kFp32:
    case detail::Route::kFp32SetOptDtype:
    case detail::Route::kFp32AppendDtype:
      return at::kFloat;
    case detail::Route::kPromote: {
      at::ScalarType widest = lower;
      for (const at::Tensor* tensor : inputs) {
        if (tensor != nullptr && tensor->defined() && tensor->is_floating_point()) {
          widest = at::promote_types(widest, tensor->scalar_type());
        }
      }
      return widest;
    }
    case detail::Route::kPassthrough:
    case detail::Route::kBanned:
      break;
  }
  return std::nullopt;
}

}  // namespace ampkit::autocast
