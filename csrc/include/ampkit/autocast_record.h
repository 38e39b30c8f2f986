// One op as explain() saw it: which op, which list of the current policy routed it, and the dtypes
// of its tensor inputs (before casting) and outputs.
#pragma once

#include <string>
#include <vector>

namespace ampkit::autocast {

struct OpRecord {
  std::string op;    // "aten::mm"
  std::string list;  // "allow", "deny", "promote", "passthrough", "passthrough (not listed)", "torch:<route>"
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
};

}  // namespace ampkit::autocast
