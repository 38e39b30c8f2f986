// Internal: slots for op names, and ampkit's torch::Library objects on the autocast keys.
#pragma once

#include <cstdint>
#include <string>

namespace ampkit::autocast::detail {

// The slot of a fully qualified op name ("aten::mm", "aten::softmax.int"), creating one for an op
// ampkit does not know at compile time. Refuses an op that another library already routes on the
// autocast key of `device` with a kernel ampkit does not mirror (taking it over would lose that).
uint32_t slot_for(const std::string& qualified_name, int device);
bool is_registered_by_ampkit(int device, const std::string& qualified_name);
// ampkit's ops with their own policy-aware autocast kernels (self_routed.h).
bool is_self_routed(const std::string& qualified_name);

}  // namespace ampkit::autocast::detail
