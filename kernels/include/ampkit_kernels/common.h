// Framework-free types shared by every ampkit CUDA kernel entry point.
// No ATen/torch headers here: kernels/ builds and tests on its own.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "ampkit_kernels/gemm_types.h"  // DType (CUDA-free)

namespace ampkit_kernels {

enum class Status : int {
  Ok = 0,
  InvalidArgument = 1,  // a caller bug the binding layer should have caught
  Unsupported = 2,      // e.g. a dtype combination with no instantiation
  CudaError = 3,        // a launch or runtime error; see cuda_error
  NoAlgorithm = 4,      // a library (cuBLASLt) found no algorithm for the problem
  LibraryError = 5,     // a library call failed; see library_status
};

// Result of an entry point: a status plus the underlying error code where one exists.
struct Result {
  Status status = Status::Ok;
  cudaError_t cuda_error = cudaSuccess;
  int library_status = 0;
  bool ok() const { return status == Status::Ok; }
};

const char* status_name(Status status);
const char* dtype_name(DType dtype);
// A readable one-line description of a failed Result, for the binding layer's error message.
std::string describe(const Result& result);

// A set of parallel tensor lists: lists[l][t] is the data pointer of tensor t in list l.
// All lists have the same length; tensor t has numels[t] elements in every list.
struct TensorLists {
  std::vector<std::vector<void*>> lists;
  std::vector<int64_t> numels;
};

}  // namespace ampkit_kernels
