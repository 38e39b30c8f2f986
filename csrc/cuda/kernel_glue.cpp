#include "cuda/kernel_glue.h"

#include <c10/util/Exception.h>

namespace ampkit::cuda {

ampkit_kernels::DType kernel_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return ampkit_kernels::DType::Float32;
    case at::kHalf: return ampkit_kernels::DType::Float16;
    case at::kBFloat16: return ampkit_kernels::DType::BFloat16;
    case at::kDouble: return ampkit_kernels::DType::Float64;
    default: TORCH_CHECK_TYPE(false, "ampkit: no CUDA kernel for dtype ", dtype);
  }
}

ampkit_kernels::TensorLists make_tensor_lists(std::initializer_list<at::TensorList> lists) {
  ampkit_kernels::TensorLists result;
  const at::TensorList first = *lists.begin();
  result.numels.reserve(first.size());
  for (const auto& tensor : first) result.numels.push_back(tensor.numel());
  for (const at::TensorList list : lists) {
    std::vector<void*> pointers;
    pointers.reserve(list.size());
    for (const auto& tensor : list) pointers.push_back(tensor.data_ptr());
    result.lists.push_back(std::move(pointers));
  }
  return result;
}

void check_result(const char* op, const ampkit_kernels::Result& result) {
  TORCH_CHECK(result.ok(), op, ": CUDA kernel failed: ", ampkit_kernels::describe(result));
}

void check_cuda_device(const char* op, const char* name, const c10::Device& device) {
  TORCH_CHECK(device.is_cuda(), op, ": ", name, " must be CUDA tensors for this kernel, got ", device);
}

}  // namespace ampkit::cuda
