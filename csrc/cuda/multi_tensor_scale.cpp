#include <torch/library.h>

#include "ampkit_kernels/multi_tensor.h"
#include "cuda/kernel_glue.h"
#include "ops/multi_tensor_scale.h"

namespace ampkit::cuda {
namespace {

void multi_tensor_scale_cuda(at::TensorList inputs, at::TensorList outputs, const at::Tensor& scale,
                             const at::Tensor& found_inf) {
  const c10::Device device = detail::check_multi_tensor_scale_args(inputs, outputs, scale, found_inf);
  check_cuda_device(detail::kMultiTensorScaleOp, "inputs", device);
  const c10::cuda::CUDAGuard guard(device);
  const auto result = ampkit_kernels::multi_tensor_scale(
      make_tensor_lists({inputs, outputs}), kernel_dtype(inputs[0].scalar_type()),
      kernel_dtype(outputs[0].scalar_type()), scale.const_data_ptr<float>(), found_inf.mutable_data_ptr<float>(),
      current_stream());
  check_result(detail::kMultiTensorScaleOp, result);
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, CUDA, m) { m.impl("multi_tensor_scale_", &multi_tensor_scale_cuda); }

}  // namespace ampkit::cuda
