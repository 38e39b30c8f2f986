// One op as explain() saw it: which op, which list of the current policy routed it, and the dtypes
// of its tensor inputs (before casting) and outputs.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace ampkit::autocast {

struct OpRecord {
  std::string op;    // "aten::mm"
  std::string list;  // "allow", "deny", "promote", "passthrough", "passthrough (not listed)", "torch:<route>"
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
};

// One lower-precision op output as an OutputWatch saw it: the op kind ("aten::mm") and a bool
// scalar on the output's device, true when the output holds an inf or a NaN (not read back).
struct OutputFlag {
  std::string op;
  at::Tensor non_finite;
};

}  // namespace ampkit::autocast
