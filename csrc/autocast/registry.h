// Internal: slots for op names, and ampkit's torch::Library objects on the autocast keys.
#pragma once

#include <ATen/core/operator_name.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ampkit::autocast::detail {

// "aten::softmax.int" -> {"aten::softmax", "int"}; "mylib::my_gemm" -> {"mylib::my_gemm", ""}.
c10::OperatorName operator_name(const std::string& qualified_name);
// The slot of a fully qualified op name ("aten::mm", "aten::softmax.int"), creating one for an op
// ampkit does not know at compile time. Refuses an op that another library already routes on the
// autocast key of `device` with a kernel ampkit does not mirror (taking it over would lose that).
uint32_t slot_for(const std::string& qualified_name, int device);
bool is_registered_by_ampkit(int device, const std::string& qualified_name);
// Ops that declared themselves self-routed (ampkit/autocast_self_routed.h): they carry their own
// policy-aware autocast kernels. Names in the order registered.
bool is_self_routed(const std::string& qualified_name);
std::vector<std::string> self_routed_ops();

}  // namespace ampkit::autocast::detail
