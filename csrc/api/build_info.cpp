#include "ampkit/build_info.h"

namespace ampkit {

BuildInfo build_info() {
  BuildInfo info;
  info.version = AMPKIT_VERSION;
  info.torch_version = AMPKIT_TORCH_VERSION;
  info.cuda = AMPKIT_WITH_CUDA != 0;
  info.cuda_architectures = AMPKIT_CUDA_ARCHITECTURES;
  return info;
}

}  // namespace ampkit
