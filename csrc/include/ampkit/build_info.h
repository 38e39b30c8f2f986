#pragma once

#include <string>

#include "ampkit/build_config.h"

namespace ampkit {

struct BuildInfo {
  std::string version;             // ampkit's version
  std::string torch_version;       // the LibTorch version ampkit was compiled against
  bool cuda = false;               // were the CUDA kernels compiled in
  std::string cuda_architectures;  // e.g. "90", empty without CUDA
};

BuildInfo build_info();

}  // namespace ampkit
