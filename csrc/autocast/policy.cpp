// ampkit::autocast::Policy: op-name resolution against the dispatcher, validation, and compilation
// into the per-slot routing table the kernels read.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cpu/Utils.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <mutex>
#include <set>

#include "ampkit/autocast.h"
#include "autocast/registry.h"
#include "autocast/routing.h"
#include "ops/validation.h"

namespace ampkit::autocast {
namespace {

using detail::CompiledPolicy;
using detail::kShortAttentionKeys;
using detail::MachineRule;
using detail::Route;

std::string trim(const std::string& text) {
  const auto first = text.find_first_not_of(" \t\n");
  if (first == std::string::npos) return "";
  const auto last = text.find_last_not_of(" \t\n");
  return text.substr(first, last - first + 1);
}

void check_device_and_dtype(c10::DeviceType device_type, c10::ScalarType dtype) {
  TORCH_CHECK_VALUE(device_type == c10::kCPU || device_type == c10::kCUDA,
                    "ampkit.Policy: device_type must be cpu or cuda, got ", c10::DeviceTypeName(device_type, true));
  TORCH_CHECK_VALUE(dtype == c10::kHalf || dtype == c10::kBFloat16,
                    "ampkit.Policy: dtype (the lower precision of the allow list) must be float16 or bfloat16, got ",
                    ampkit::detail::dtype_name(dtype));
}

// "mm" -> {"aten::mm", "aten::mm.dtype"}; "aten::softmax.int" -> {"aten::softmax.int"}.
std::vector<std::string> resolve(const std::string& spelled, OpList list) {
  const std::string name = trim(spelled);
  TORCH_CHECK_VALUE(!name.empty(), "ampkit.Policy: an op name in the ", list_name(list), " list is empty");
  std::string qualified = name.find("::") == std::string::npos ? "aten::" + name : name;
  const auto ns_end = qualified.find("::");
  const auto dot = qualified.find('.', ns_end + 2);
  auto& dispatcher = c10::Dispatcher::singleton();
  if (dot != std::string::npos) {
    const std::string base = qualified.substr(0, dot);
    const std::string overload = qualified.substr(dot + 1);
    TORCH_CHECK_VALUE(dispatcher.findSchema({base, overload}).has_value(), "ampkit.Policy: unknown op '", name,
                      "' in the ", list_name(list), " list: no operator ", qualified,
                      " is registered (is the library that defines it loaded?)");
    return {qualified};
  }
  std::vector<std::string> functional, all;
  for (const auto& op_name : dispatcher.getAllOpNames()) {
    if (op_name.name != qualified) continue;
    const auto handle = dispatcher.findSchema(op_name);
    if (!handle) continue;
    const std::string full = op_name.overload_name.empty() ? op_name.name : op_name.name + "." + op_name.overload_name;
    all.push_back(full);
    if (!handle->schema().is_mutable()) functional.push_back(full);
  }
  TORCH_CHECK_VALUE(!all.empty(), "ampkit.Policy: unknown op '", name, "' in the ", list_name(list),
                    " list: no operator ", qualified, " is registered (is the library that defines it loaded?)");
  auto& chosen = functional.empty() ? all : functional;
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

// The fp32 flavour torch uses for this op (set the output dtype, append one), else a plain cast.
Route deny_route(int device, uint32_t slot) {
  for (int d : {device, 1 - device}) {
    const Route r = detail::torch_route(d, slot);
    if (r == Route::kFp32 || r == Route::kFp32SetOptDtype || r == Route::kFp32AppendDtype) return r;
  }
  return Route::kFp32;
}

Route route_of(OpList list, int device, uint32_t slot) {
  switch (list) {
    case OpList::kAllow:
      return Route::kLower;
    case OpList::kDeny:
      return deny_route(device, slot);
    case OpList::kPromote:
      return Route::kPromote;
    case OpList::kPassthrough:
      return Route::kPassthrough;
  }
  return Route::kPassthrough;
}

struct MachineRuleFor {
  const char* op;
  MachineRule rule;
  SlowOp described;
};

// This machine's rules for `dtype` on `device_type` (see slow_in_lower_precision in autocast.h).
std::vector<MachineRuleFor> machine_rules_for(c10::DeviceType device_type, c10::ScalarType dtype) {
  std::vector<MachineRuleFor> rules;
  if (device_type != c10::kCPU || at::native::cpublas::could_pack(dtype)) return rules;
  const char* attention = "aten::scaled_dot_product_attention";
  const std::string unpacked = "no packed " + ampkit::detail::dtype_name(dtype) +
                               " GEMM on this CPU (no AMX): torch's flash attention runs its unpacked " +
                               ampkit::detail::dtype_name(dtype) + " path";
  if (dtype == c10::kHalf) {
    rules.push_back({attention, MachineRule::kFp32,
                     {attention, "every call", unpacked + ", 1.9-8.5x the float32 time at every shape measured"}});
    return rules;
  }
  const auto capabilities = at::cpu::get_cpu_capabilities();
  const auto avx512_bf16 = capabilities.find("avx512_bf16");
  if (avx512_bf16 == capabilities.end() || !avx512_bf16->second.toBool()) {
    rules.push_back({attention, MachineRule::kFp32,
                     {attention, "every call", unpacked + " on bfloat16 arithmetic this CPU emulates (no AVX512-BF16)"}});
    return rules;
  }
  rules.push_back({attention, MachineRule::kFp32ForShortKeys,
                   {attention, "key length x head dim <= " + std::to_string(kShortAttentionKeys),
                    unpacked + ": 1.3-4.2x the float32 time below 16384, 0.88-1.45x at it; 0.72-0.95x above, "
                               "where bfloat16 stays"}});
  return rules;
}

std::shared_ptr<const CompiledPolicy> compile(c10::DeviceType device_type, c10::ScalarType dtype,
                                              const std::map<std::string, OpList>& lists, bool fitted) {
  auto compiled = std::make_shared<CompiledPolicy>();
  compiled->device = device_type == c10::kCPU ? detail::kCpu : detail::kCuda;
  compiled->dtype = dtype;
  std::vector<std::pair<uint32_t, OpList>> slots;
  uint32_t size = detail::known_op_count();
  for (const auto& [name, list] : lists) {
    const uint32_t slot = detail::slot_for(name, compiled->device);
    slots.emplace_back(slot, list);
    size = std::max(size, slot + 1);
  }
  compiled->routes.assign(size, Route::kPassthrough);
  compiled->lists.assign(size, detail::kNotListed);
  // An op torch bans stays banned unless the policy names it.
  for (uint32_t slot = 0; slot < detail::known_op_count(); ++slot) {
    if (detail::torch_route(compiled->device, slot) == Route::kBanned) compiled->routes[slot] = Route::kBanned;
  }
  for (const auto& [slot, list] : slots) {
    compiled->routes[slot] = route_of(list, compiled->device, slot);
    compiled->lists[slot] = static_cast<uint8_t>(list);
    compiled->named_slots.push_back(slot);
  }
  if (fitted) {
    for (const MachineRuleFor& rule : machine_rules_for(device_type, dtype)) {
      const uint32_t slot = detail::slot_for(rule.op, compiled->device);
      if (compiled->machine_rules.size() <= slot) compiled->machine_rules.resize(slot + 1, MachineRule::kNone);
      compiled->machine_rules[slot] = rule.rule;
    }
  }
  return compiled;
}

}  // namespace

std::string list_name(OpList list) {
  switch (list) {
    case OpList::kAllow:
      return "allow";
    case OpList::kDeny:
      return "deny";
    case OpList::kPromote:
      return "promote";
    case OpList::kPassthrough:
      return "passthrough";
  }
  return "?";
}

Policy::Policy(c10::DeviceType device_type, c10::ScalarType dtype, std::map<std::string, OpList> lists, bool fitted)
    : device_type_(device_type), dtype_(dtype), fitted_(fitted),
      lists_(std::make_shared<const std::map<std::string, OpList>>(std::move(lists))) {
  check_device_and_dtype(device_type_, dtype_);
  compiled_ = compile(device_type_, dtype_, *lists_, fitted_);
}

Policy::Policy(c10::DeviceType device_type, c10::ScalarType dtype, const std::vector<std::string>& allow,
               const std::vector<std::string>& deny, const std::vector<std::string>& promote,
               const std::vector<std::string>& passthrough)
    : device_type_(device_type), dtype_(dtype) {
  check_device_and_dtype(device_type_, dtype_);
  std::map<std::string, OpList> lists;
  std::map<std::string, std::string> spelled_as;  // qualified name -> how the user wrote it
  const std::pair<OpList, const std::vector<std::string>*> given[] = {
      {OpList::kAllow, &allow}, {OpList::kDeny, &deny}, {OpList::kPromote, &promote}, {OpList::kPassthrough, &passthrough}};
  for (const auto& [list, names] : given) {
    for (const auto& name : *names) {
      for (const auto& qualified : resolve(name, list)) {
        const auto it = lists.find(qualified);
        TORCH_CHECK_VALUE(it == lists.end() || it->second == list, "ampkit.Policy: op ", qualified, " is in two lists: ",
                          list_name(it == lists.end() ? list : it->second), " (as '", spelled_as[qualified], "') and ",
                          list_name(list), " (as '", name, "'); an op may be in one list only");
        lists[qualified] = list;
        spelled_as.emplace(qualified, name);
      }
    }
  }
  lists_ = std::make_shared<const std::map<std::string, OpList>>(std::move(lists));
  compiled_ = compile(device_type_, dtype_, *lists_, fitted_);
}

Policy Policy::torch_default(c10::DeviceType device_type, c10::ScalarType dtype) {
  check_device_and_dtype(device_type, dtype);
  const int device = device_type == c10::kCPU ? detail::kCpu : detail::kCuda;
  std::map<std::string, OpList> lists;
  for (uint32_t slot = 0; slot < detail::known_op_count(); ++slot) {
    switch (detail::torch_route(device, slot)) {
      case Route::kLower:
        lists[detail::slot_name(slot)] = OpList::kAllow;
        break;
      case Route::kFp32:
      case Route::kFp32SetOptDtype:
      case Route::kFp32AppendDtype:
        lists[detail::slot_name(slot)] = OpList::kDeny;
        break;
      case Route::kPromote:
        lists[detail::slot_name(slot)] = OpList::kPromote;
        break;
      case Route::kPassthrough:
      case Route::kBanned:
        break;
    }
  }
  // Self-routed ops run in low precision by default, as torch's linear does; their autocast kernels
  // read the policy (ampkit/autocast_self_routed.h), so an edited policy can deny or promote them.
  auto& dispatcher = c10::Dispatcher::singleton();
  for (const std::string& own : detail::self_routed_ops()) {
    if (dispatcher.findSchema(detail::operator_name(own))) lists[own] = OpList::kAllow;
  }
  return Policy(device_type, dtype, std::move(lists), false);
}

std::vector<SlowOp> slow_in_lower_precision(c10::DeviceType device_type, c10::ScalarType dtype) {
  check_device_and_dtype(device_type, dtype);
  std::vector<SlowOp> slow;
  for (const MachineRuleFor& rule : machine_rules_for(device_type, dtype)) slow.push_back(rule.described);
  return slow;
}

Policy Policy::for_this_machine(c10::DeviceType device_type, c10::ScalarType dtype) {
  const Policy base = torch_default(device_type, dtype);
  return Policy(device_type, dtype, *base.lists_, true);
}

std::vector<std::pair<std::string, std::string>> torch_routes(c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(device_type == c10::kCPU || device_type == c10::kCUDA,
                    "ampkit.autocast.torch_routes: device_type must be cpu or cuda, got ",
                    c10::DeviceTypeName(device_type, true));
  const int device = device_type == c10::kCPU ? detail::kCpu : detail::kCuda;
  std::vector<std::pair<std::string, std::string>> routes;
  for (uint32_t slot = 0; slot < detail::known_op_count(); ++slot) {
    const Route route = detail::torch_route(device, slot);
    if (route != Route::kPassthrough) routes.emplace_back(detail::slot_name(slot), detail::route_name(route));
  }
  return routes;
}

Policy Policy::moved(OpList list, const std::vector<std::string>& ops) const {
  std::map<std::string, OpList> lists = *lists_;
  for (const auto& name : ops) {
    for (const auto& qualified : resolve(name, list)) lists[qualified] = list;
  }
  return Policy(device_type_, dtype_, std::move(lists), fitted_);
}

Policy Policy::allow(const std::vector<std::string>& ops) const { return moved(OpList::kAllow, ops); }
Policy Policy::deny(const std::vector<std::string>& ops) const { return moved(OpList::kDeny, ops); }
Policy Policy::promote(const std::vector<std::string>& ops) const { return moved(OpList::kPromote, ops); }
Policy Policy::passthrough(const std::vector<std::string>& ops) const { return moved(OpList::kPassthrough, ops); }
Policy Policy::with_dtype(c10::ScalarType dtype) const { return Policy(device_type_, dtype, *lists_, fitted_); }

std::optional<OpList> Policy::list_of(const std::string& op) const {
  std::set<OpList> found;
  bool unlisted = false;
  for (const auto& qualified : resolve(op, OpList::kPassthrough)) {
    const auto it = lists_->find(qualified);
    if (it == lists_->end()) {
      unlisted = true;
    } else {
      found.insert(it->second);
    }
  }
  TORCH_CHECK_VALUE(found.size() <= 1 && !(unlisted && !found.empty()), "ampkit.Policy.list_of: '", op,
                    "' names several overloads that are in different lists; name one overload (e.g. ", op,
                    ".<overload>)");
  if (found.empty()) return std::nullopt;
  return *found.begin();
}

std::vector<std::string> Policy::ops(OpList list) const {
  std::vector<std::string> names;
  for (const auto& [name, in_list] : *lists_) {
    if (in_list == list) names.push_back(name);
  }
  return names;
}

bool Policy::operator==(const Policy& other) const {
  return device_type_ == other.device_type_ && dtype_ == other.dtype_ && fitted_ == other.fitted_ &&
         *lists_ == *other.lists_;
}

}  // namespace ampkit::autocast
