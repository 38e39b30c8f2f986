#pragma once

#include <ATen/core/Tensor.h>

namespace ampkit::detail {

constexpr const char* kMultiTensorScaleOp = "ampkit.multi_tensor_scale_";

// Every check of multi_tensor_scale_ that does not depend on the device kernel. Returns the
// device of the tensors.
c10::Device check_multi_tensor_scale_args(at::TensorList inputs, at::TensorList outputs, const at::Tensor& scale,
                                          const at::Tensor& found_inf);

}  // namespace ampkit::detail
