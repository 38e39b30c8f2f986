// The CUDA-free types of the kernels/ entry points: status codes, dtype names and tensor lists.
// Plain C++, so any translation unit can include it (the CPU-only build and the host tests);
// common.h adds what needs the CUDA runtime (Result carries a cudaError_t).
#pragma once

#include <cstdint>
#include <vector>

#include "ampkit_kernels/gemm_types.h"  // DType

namespace ampkit_kernels {

enum class Status : int {
  Ok = 0,
  InvalidArgument = 1,  // a caller bug the binding layer should have caught
  Unsupported = 2,      // e.g. a dtype combination with no instantiation
  CudaError = 3,        // a launch or runtime error; see cuda_error
  NoAlgorithm = 4,      // a library (cuBLASLt) found no algorithm for the problem
  LibraryError = 5,     // a library call failed; see library_status
};

inline const char* status_name(Status status) {
  switch (status) {
    case Status::Ok: return "ok";
    case Status::InvalidArgument: return "invalid argument";
    case Status::Unsupported: return "unsupported";
    case Status::CudaError: return "CUDA error";
    case Status::NoAlgorithm: return "no algorithm";
    case Status::LibraryError: return "library error";
  }
  return "unknown status";
}

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Float64: return "float64";
  }
  return "unknown dtype";
}

// A set of parallel tensor lists: lists[l][t] is the data pointer of tensor t in list l.
// All lists have the same length; tensor t has numels[t] elements in every list.
struct TensorLists {
  std::vector<std::vector<void*>> lists;
  std::vector<int64_t> numels;
};

}  // namespace ampkit_kernels
