// ampkit's own ops (fused_linear, fused_mlp) carry their own autocast kernels. Those kernels ask
// the current ampkit policy how to cast, so the ops obey policies like any aten op, and a policy
// that names them registers no kernel over theirs.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <cstdint>
#include <initializer_list>
#include <optional>

namespace ampkit::autocast {

// The routing slot of a self-routed op ("ampkit::fused_linear"); callers keep it in a static.
uint32_t self_routed_slot(const char* qualified_name);

// The dtype the op's floating inputs are cast to in the current region of `device_type`, or
// nullopt for no cast. Outside ampkit policies: the autocast dtype (as torch.autocast treats
// linear). Under a policy: allow -> autocast dtype, deny -> float32, promote -> the widest of the
// floating inputs and the autocast dtype, passthrough or not listed -> no cast.
std::optional<at::ScalarType> self_routed_dtype(c10::DeviceType device_type, uint32_t slot,
                                                std::initializer_list<const at::Tensor*> inputs);

}  // namespace ampkit::autocast
