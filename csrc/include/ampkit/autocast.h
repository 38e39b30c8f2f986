// Autocast with op lists the user controls, for torch:: C++ frontend code (Python: ampkit.Policy,
// ampkit.autocast). A Policy names, per device type (CPU or CUDA), a lower-precision dtype and four
// op lists:
//   allow       run in the lower-precision dtype (fp16 or bf16)
//   deny        run in float32
//   promote     run in the widest floating dtype among the inputs
//   passthrough no cast at all (also what happens to an op named in no list)
// Op names: "mm", "aten::softmax.int", "ampkit::fused_linear", any registered op. A name without an
// overload means every overload of the op that is not mutable (no out=/in-place variant); name one
// overload ("aten::mm.out") to get exactly that one.
//
// How it works: the first time a policy is used, ampkit registers its own kernels on the
// AutocastCPU / AutocastCUDA dispatch keys, over aten's, for every op torch routes on that device
// and every op the policy names (unboxed wrappers for the ops torch routes, a boxed functor for any
// other op). Those kernels stay registered; entering and leaving a region only flips thread-local
// state (torch's autocast enabled flag and dtype, and which ampkit policy is current), exactly as
// torch.autocast does. When no ampkit policy is current on the thread (a plain torch.autocast
// region), ampkit's kernels apply torch's own routing for the op, so torch.autocast behaves exactly
// as without ampkit. uninstall() destroys ampkit's registrations and restores aten's kernels.
// A torch.autocast nested in an ampkit region changes the enabled flag and dtype, not the lists.
//
// Threads: regions are per thread. Policies are immutable values and the global policy is global;
// installing or replacing one while another thread is inside a region is safe: that thread keeps
// the policy it entered with until it leaves the region; regions entered afterwards see the new
// one. uninstall() must not race with other threads running ops inside autocast regions.
#pragma once

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ampkit/autocast_record.h"

namespace ampkit {
namespace autocast {

enum class OpList : uint8_t { kAllow = 0, kDeny = 1, kPromote = 2, kPassthrough = 3 };

// "allow", "deny", "promote", "passthrough".
std::string list_name(OpList list);

namespace detail {
struct CompiledPolicy;
}

class Policy {
 public:
  // torch 2.11's own autocast lists for `device_type` (kCPU or kCUDA); `dtype` kHalf or kBFloat16.
  static Policy torch_default(c10::DeviceType device_type, c10::ScalarType dtype);
  // torch_default fitted to this machine: a call of an allowed op that this machine runs slower in
  // `dtype` than in float32 runs in float32 (slow_in_lower_precision: which ops, for which shapes,
  // and why): at least as accurate, and faster. The lists are torch's, and edits keep the fitting;
  // the routing is torch_default's where nothing is slow (CUDA; CPUs with AMX).
  static Policy for_this_machine(c10::DeviceType device_type, c10::ScalarType dtype);

  // Exactly these lists, nothing else. An op named in two lists, an unknown op, a device type
  // other than CPU/CUDA or a dtype other than fp16/bf16 is an error.
  Policy(c10::DeviceType device_type, c10::ScalarType dtype, const std::vector<std::string>& allow = {},
         const std::vector<std::string>& deny = {}, const std::vector<std::string>& promote = {},
         const std::vector<std::string>& passthrough = {});

  // Copies with `ops` moved to one list (out of any list they were in).
  Policy allow(const std::vector<std::string>& ops) const;
  Policy deny(const std::vector<std::string>& ops) const;
  Policy promote(const std::vector<std::string>& ops) const;
  Policy passthrough(const std::vector<std::string>& ops) const;
  // A copy with another lower-precision dtype and the same lists.
  Policy with_dtype(c10::ScalarType dtype) const;

  // Made by for_this_machine (or edited from such a policy): its machine rules apply.
  bool fitted_to_machine() const { return fitted_; }
  c10::DeviceType device_type() const { return device_type_; }
  c10::ScalarType dtype() const { return dtype_; }
  // Which list an op is in (nullopt: none). A name that resolves to several overloads must have
  // them all in one list.
  std::optional<OpList> list_of(const std::string& op) const;
  // Fully qualified names ("aten::softmax.int") in `list`, sorted.
  std::vector<std::string> ops(OpList list) const;
  bool operator==(const Policy& other) const;
  bool operator!=(const Policy& other) const { return !(*this == other); }

  // Internal: the routing table the dispatcher-level kernels read.
  const std::shared_ptr<const detail::CompiledPolicy>& compiled() const { return compiled_; }

 private:
  Policy(c10::DeviceType device_type, c10::ScalarType dtype, std::map<std::string, OpList> lists, bool fitted);
  Policy moved(OpList list, const std::vector<std::string>& ops) const;

  c10::DeviceType device_type_;
  c10::ScalarType dtype_;
  bool fitted_ = false;
  // fully qualified op name -> list; shared so that copying a Policy (the global one, one passed
  // to a region) costs two reference counts, not a map copy
  std::shared_ptr<const std::map<std::string, OpList>> lists_;
  std::shared_ptr<const detail::CompiledPolicy> compiled_;
};

// An op whose lower-precision kernel on this machine is slower than its float32 one: for which
// calls, and why.
struct SlowOp {
  std::string op;      // fully qualified, as Policy::ops lists it
  std::string when;    // "every call", or the shapes
  std::string reason;  // the hardware fact and the measured cost
};
// The calls Policy::for_this_machine runs in float32 on `device_type` in `dtype`. The rules are read
// off the hardware and the call's shapes, never timed, so every run of a program routes alike. On a
// CPU without packed `dtype` GEMMs (at::native::cpublas::could_pack false: no AMX) torch's flash
// attention runs an unpacked low-precision path (benchmarks/bench_attention_precision.py):
//   float16: every call (1.9-8.5x the fp32 time at every shape measured on an AVX512-BF16 CPU);
//   bfloat16 with AVX512-BF16: when key length x head dim <= 16384 (1.3-4.2x the fp32 time below
//     16384; at 16384 0.88-1.45x: fp32 ahead for head dims 32 and 128, behind for 16 and 64;
//     0.72-0.95x above, where bf16 stays);
//   bfloat16 without AVX512-BF16 (bf16 arithmetic emulated): every call.
std::vector<SlowOp> slow_in_lower_precision(c10::DeviceType device_type, c10::ScalarType dtype);

// torch's own autocast routing for `device_type` (kCPU or kCUDA), as ampkit mirrors it: (op, route)
// for every op torch routes there, e.g. ("aten::mm", "lower_precision"). Routes: lower_precision,
// fp32, fp32_set_opt_dtype, fp32_append_dtype, promote, banned.
std::vector<std::pair<std::string, std::string>> torch_routes(c10::DeviceType device_type);

// Registers the policy's kernels now (otherwise done the first time it is used).
void install(const Policy& policy);
// Destroys every registration ampkit made; aten's own autocast kernels are back. Later use of a
// policy installs again. Must not race with other threads running ops in autocast regions.
void uninstall();
// Whether ampkit currently has kernels registered on the autocast key of `device_type`.
bool is_installed(c10::DeviceType device_type);

// Keras-style global policy, used by regions that name neither a policy nor a dtype.
//   "mixed_float16" / "mixed_bfloat16": torch's default lists in that dtype, for CPU and CUDA;
//   "float32": such regions do not autocast at all.
void set_global_policy(const std::string& name);
// For policy.device_type() only.
void set_global_policy(const Policy& policy);
// Back to no global policy (regions without a dtype use torch's default dtype for the device).
void clear_global_policy();
// nullopt when no policy is set or it is "float32" (see global_policy_is_float32).
std::optional<Policy> global_policy(c10::DeviceType device_type);
bool global_policy_is_float32(c10::DeviceType device_type);

// explain(): while a Recording lives, every op that reaches ampkit's autocast kernels on this thread
// is recorded (ops no policy or torch list names never reach them and are not recorded).
class Recording {
 public:
  Recording();
  ~Recording();
  Recording(const Recording&) = delete;
  Recording& operator=(const Recording&) = delete;
  const std::vector<OpRecord>& records() const { return records_; }

 private:
  std::vector<OpRecord> records_;
  std::vector<OpRecord>* previous_;
};

// While an OutputWatch lives, every op that ampkit's autocast kernels run in the lower-precision
// dtype on this thread (routed there by the policy's allow list) launches one device flag: whether
// its output holds an inf or a NaN. Nothing is read back; the caller reads the flags when it chooses
// (AdaptivePrecision does so on a sampled diagnostic step, at its next logging point).
class OutputWatch {
 public:
  OutputWatch();
  ~OutputWatch();
  OutputWatch(const OutputWatch&) = delete;
  OutputWatch& operator=(const OutputWatch&) = delete;
  const std::vector<OutputFlag>& outputs() const { return outputs_; }

 private:
  std::vector<OutputFlag> outputs_;
  std::vector<OutputFlag>* previous_;
};

}  // namespace autocast

// An autocast region for the current thread, RAII. Nestable; an inner disabled guard runs its
// scope in float32 (inputs that are already low precision stay so, as with torch.autocast).
class AutocastGuard {
 public:
  // The global policy for `device_type` if it has this dtype, else torch's default lists.
  AutocastGuard(c10::DeviceType device_type, c10::ScalarType dtype, bool enabled = true);
  // The global policy for `device_type`; with none set, torch's default lists in torch's default
  // dtype (CPU bfloat16, CUDA float16); with "float32", a disabled region.
  explicit AutocastGuard(c10::DeviceType device_type);
  explicit AutocastGuard(const autocast::Policy& policy, bool enabled = true);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  void enter(std::shared_ptr<const autocast::detail::CompiledPolicy> policy, bool enabled);

  c10::DeviceType device_type_;
  bool previous_enabled_ = false;
  c10::ScalarType previous_dtype_ = c10::ScalarType::Undefined;
  const autocast::detail::CompiledPolicy* previous_policy_ = nullptr;
  std::shared_ptr<const autocast::detail::CompiledPolicy> policy_;
};

namespace autocast {

// Per-module policy for torch::nn modules (Keras-style per-layer dtype): wraps a module so its
// forward runs in a region of its own. `policy` nullopt = float32: autocast is off inside and
// floating inputs are cast to float32 (so e.g. a head stays fp32 inside a bf16 region).
class WithPolicyImpl : public torch::nn::Module {
 public:
  template <typename ModuleHolder>
  WithPolicyImpl(ModuleHolder inner, std::optional<Policy> policy, c10::DeviceType device_type = c10::kCPU)
      : inner_(inner), policy_(std::move(policy)), device_type_(policy_ ? policy_->device_type() : device_type) {
    register_module("inner", inner.ptr());
  }

  at::Tensor forward(const at::Tensor& input) {
    if (policy_) {
      AutocastGuard guard(*policy_);
      return inner_.forward<at::Tensor>(input);
    }
    AutocastGuard guard(device_type_, c10::ScalarType::BFloat16, /*enabled=*/false);
    return inner_.forward<at::Tensor>(input.is_floating_point() ? input.to(c10::kFloat) : input);
  }

  const std::optional<Policy>& policy() const { return policy_; }

 private:
  torch::nn::AnyModule inner_;
  std::optional<Policy> policy_;
  c10::DeviceType device_type_;
};
TORCH_MODULE(WithPolicy);

// with_policy(torch::nn::Linear(8, 2), policy) / with_policy(torch::nn::Linear(8, 2), std::nullopt)
template <typename ModuleHolder>
WithPolicy with_policy(ModuleHolder inner, std::optional<Policy> policy, c10::DeviceType device_type = c10::kCPU) {
  return WithPolicy(std::move(inner), std::move(policy), device_type);
}

}  // namespace autocast
}  // namespace ampkit
