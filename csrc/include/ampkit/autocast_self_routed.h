// Self-routed ops: ops that carry their own kernels on the AutocastCPU / AutocastCUDA dispatch keys
// and let those kernels ask the current ampkit policy how to cast (ampkit's fused_linear and
// fused_mlp are two; a library's own op can be one too). The op declares itself here, so the
// autocast layer never needs to know it by name:
//
//   const ampkit::autocast::SelfRoutedRegistration my_gemm_is_self_routed("mylib::my_gemm");
//
//   template <c10::DeviceType device_type>
//   at::Tensor my_gemm_autocast(const at::Tensor& a, const at::Tensor& b) {
//     static const uint32_t slot = ampkit::autocast::self_routed_slot("mylib::my_gemm");
//     c10::impl::ExcludeDispatchKeyGuard no_autocast(
//         at::autocast::get_autocast_dispatch_key_from_device_type(device_type));
//     const auto dtype = ampkit::autocast::self_routed_dtype(device_type, slot, {&a, &b});
//     ... call the op on cached_cast(*dtype, ...) inputs, or on the inputs as they are when nullopt
//   }
//
// What being self-routed means: ampkit registers no autocast kernel over the op's own; a policy
// may name it in any list; torch_default() puts it in the allow list (like torch's linear), and
// outside ampkit policies it runs in the autocast dtype.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <cstdint>
#include <initializer_list>
#include <optional>

namespace ampkit::autocast {

// Declares the op (fully qualified, "mylib::my_gemm") self-routed. Call it before any policy
// names the op, e.g. at static initialisation next to the op's TORCH_LIBRARY_IMPL blocks (or with
// a SelfRoutedRegistration). Refuses an op whose autocast kernel is ampkit's own (the ops torch
// routes, or an op an installed policy already routes through ampkit).
void register_self_routed_op(const char* qualified_name);

// register_self_routed_op at static initialisation: one namespace-scope object per op.
struct SelfRoutedRegistration {
  explicit SelfRoutedRegistration(const char* qualified_name) { register_self_routed_op(qualified_name); }
};

// The routing slot of a registered self-routed op; callers keep it in a static.
uint32_t self_routed_slot(const char* qualified_name);

// The dtype the op's floating inputs are cast to in the current region of `device_type`, or
// nullopt for no cast. Outside ampkit policies: the autocast dtype (as torch.autocast treats
// linear). Under a policy: allow -> autocast dtype, deny -> float32, promote -> the widest of the
// floating inputs and the autocast dtype, passthrough or not listed -> no cast.
std::optional<at::ScalarType> self_routed_dtype(c10::DeviceType device_type, uint32_t slot,
                                                std::initializer_list<const at::Tensor*> inputs);

}  // namespace ampkit::autocast
