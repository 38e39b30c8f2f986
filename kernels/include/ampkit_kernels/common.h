// Types shared by every ampkit CUDA kernel entry point: the CUDA-free ones (kernel_types.h) and
// the Result of an entry point, which carries a cudaError_t and so needs the CUDA runtime headers.
// No ATen/torch headers here: kernels/ builds and tests on its own.
#pragma once

#include <string>

#include <cuda_runtime_api.h>

#include "ampkit_kernels/kernel_types.h"

namespace ampkit_kernels {

// Result of an entry point: a status plus the underlying error code where one exists.
struct Result {
  Status status = Status::Ok;
  cudaError_t cuda_error = cudaSuccess;
  int library_status = 0;
  bool ok() const { return status == Status::Ok; }
};

// A readable one-line description of a failed Result, for the binding layer's error message.
std::string describe(const Result& result);

}  // namespace ampkit_kernels
