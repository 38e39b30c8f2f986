// Glue between ATen tensors and the framework-free kernels/ entry points.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <initializer_list>

#include "ampkit_kernels/common.h"

namespace ampkit::cuda {

ampkit_kernels::DType kernel_dtype(at::ScalarType dtype);

// Parallel lists of equally long tensor lists -> raw pointers and element counts.
ampkit_kernels::TensorLists make_tensor_lists(std::initializer_list<at::TensorList> lists);

// Raises a RuntimeError naming the op when a kernels/ entry point reports a failure.
void check_result(const char* op, const ampkit_kernels::Result& result);

void check_cuda_device(const char* op, const char* name, const c10::Device& device);

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace ampkit::cuda
