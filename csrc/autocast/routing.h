// Internal: the routing state that ampkit's autocast kernels read on every call. Kept small and
// header-inline because it is on the per-op hot path.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/DispatchKey.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "ampkit/autocast_record.h"

namespace torch {
class Library;
}

namespace ampkit::autocast::detail {

// What a kernel does to its inputs. The fp32 variants mirror torch's: plain cast, set the
// optional output dtype (softmax, sum, ...), or redispatch to the overload taking a dtype (norm).
// kBanned: torch refuses the op under autocast (binary_cross_entropy on CUDA).
enum class Route : uint8_t { kPassthrough, kLower, kFp32, kFp32SetOptDtype, kFp32AppendDtype, kPromote, kBanned };
const char* route_name(Route route);

constexpr int kCpu = 0;
constexpr int kCuda = 1;
constexpr int kNumDevices = 2;
constexpr uint8_t kNotListed = 0xff;

inline c10::DispatchKey autocast_key(int device) {
  return device == kCpu ? c10::DispatchKey::AutocastCPU : c10::DispatchKey::AutocastCUDA;
}
inline c10::DeviceType device_type_of(int device) { return device == kCpu ? c10::kCPU : c10::kCUDA; }
// Which autocast key a kernel was reached through.
inline int device_of(c10::DispatchKeySet keys) {
  return keys.highestPriorityTypeId() == c10::DispatchKey::AutocastCPU ? kCpu : kCuda;
}

// A rule of Policy::for_this_machine for an allowed op: where this machine runs the call faster in
// fp32, the call goes to fp32 (checked per call, on the kLower route only).
//   kFp32: every call (no low-precision kernel here beats fp32).
//   kFp32ForShortKeys: attention whose key length x head dim is at most kShortAttentionKeys; torch's
//     unpacked low-precision flash attention is slower than fp32 there and faster above.
enum class MachineRule : uint8_t { kNone, kFp32, kFp32ForShortKeys };
constexpr int64_t kShortAttentionKeys = 16384;

// An installed-ready routing table. Slots: the ops ampkit knows at compile time first (in table
// order), then ops named at run time, in the order first seen. Immutable once built.
struct CompiledPolicy {
  int device = kCpu;
  c10::ScalarType dtype = c10::ScalarType::BFloat16;
  std::vector<Route> routes;          // per slot; slots past the end: passthrough
  std::vector<uint8_t> lists;         // per slot: OpList value or kNotListed
  std::vector<uint32_t> named_slots;  // slots the policy names (they need kernels)
  std::vector<MachineRule> machine_rules;  // per slot; empty for a policy not fitted to the machine
  mutable std::atomic<uint64_t> installed_generation{0};
};

using Record = ::ampkit::autocast::OpRecord;

struct ThreadState {
  const CompiledPolicy* current[kNumDevices] = {nullptr, nullptr};
  std::vector<Record>* recorder = nullptr;
  std::vector<OutputFlag>* output_watch = nullptr;
};

// For an OutputWatch: a device flag for `output` of the op in `slot` when it is a floating tensor in
// the region's lower-precision dtype. Callers pass the outputs of ops routed kLower only (those a
// policy can move to its fp32 list).
void watch_output(std::vector<OutputFlag>& watch, uint32_t slot, int device, const at::Tensor& output);

inline thread_local ThreadState tls_state;

// The ops known at compile time (known_ops.cpp).
struct KnownOp {
  const char* name;      // "aten::softmax"
  const char* overload;  // "int" or ""
  Route torch_route[kNumDevices];  // torch 2.11's routing per device; kPassthrough: torch has no kernel
  void (*register_kernel)(torch::Library& library, const char* qualified_name);
};
const KnownOp* known_ops();
uint32_t known_op_count();

// Torch's routing for `slot` when no ampkit policy is current.
inline Route torch_route(int device, uint32_t slot) {
  return slot < known_op_count() ? known_ops()[slot].torch_route[device] : Route::kPassthrough;
}

inline Route route_for(const ThreadState& state, int device, uint32_t slot) {
  const CompiledPolicy* policy = state.current[device];
  if (policy == nullptr) return torch_route(device, slot);
  return slot < policy->routes.size() ? policy->routes[slot] : Route::kPassthrough;
}

// The route of a call that route_for sent to kLower, after the current policy's machine rule for
// `slot` (kLower when it has none). `query` and `key`: the call's first two tensors, if any.
inline Route machine_route(const ThreadState& state, int device, uint32_t slot, const at::Tensor* query,
                           const at::Tensor* key) {
  const CompiledPolicy* policy = state.current[device];
  if (policy == nullptr || slot >= policy->machine_rules.size()) return Route::kLower;
  switch (policy->machine_rules[slot]) {
    case MachineRule::kNone:
      return Route::kLower;
    case MachineRule::kFp32:
      return Route::kFp32;
    case MachineRule::kFp32ForShortKeys:
      if (query != nullptr && key != nullptr && query->dim() >= 1 && key->dim() >= 2 &&
          key->size(-2) * query->size(-1) <= kShortAttentionKeys) {
        return Route::kFp32;
      }
      return Route::kLower;
  }
  return Route::kLower;
}

// "allow"/"deny"/... for the current policy, or "torch:<route>" outside ampkit policies.
std::string routed_by(const ThreadState& state, int device, uint32_t slot);
// Name of a slot ("aten::mm", "aten::softmax.int").
std::string slot_name(uint32_t slot);

// The error torch raises for an op it bans under autocast.
[[noreturn]] void throw_banned(const char* op);

// Registers kernels for everything `policy` needs (no-op when already done).
void ensure_installed(const CompiledPolicy& policy);
uint64_t install_generation();

}  // namespace ampkit::autocast::detail
