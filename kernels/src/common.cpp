#include "ampkit_kernels/common.h"

#include <string>

namespace ampkit_kernels {

std::string describe(const Result& result) {
  std::string text = status_name(result.status);
  if (result.cuda_error != cudaSuccess) {
    text += ": ";
    text += cudaGetErrorName(result.cuda_error);
    text += " (";
    text += cudaGetErrorString(result.cuda_error);
    text += ")";
  }
  if (result.library_status != 0) {
    text += ": library status " + std::to_string(result.library_status);
  }
  return text;
}

}  // namespace ampkit_kernels
