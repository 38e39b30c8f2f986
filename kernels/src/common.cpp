#include "ampkit_kernels/common.h"

#include <string>

namespace ampkit_kernels {

const char* status_name(Status status) {
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

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
  }
  return "unknown dtype";
}

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
