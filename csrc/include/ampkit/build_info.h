#pragma once

#include <cstdint>
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

// How many threads a large loop of ampkit's CPU kernels (the optimizer step, unscale_and_check_,
// multi_tensor_scale_) runs on at the current intra-op setting (at::set_num_threads /
// torch.set_num_threads): the threads that enter one of their parallel loops.
int64_t cpu_kernel_threads();

}  // namespace ampkit
