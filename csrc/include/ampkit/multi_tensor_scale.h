// C++ entry points of the torch.ops.ampkit.* ops. Each call goes through the PyTorch
// dispatcher, so the CPU/CUDA/Meta kernel is chosen by the tensors' device exactly as it is
// for torch.ops.ampkit.* from Python.
#pragma once

#include <ATen/core/Tensor.h>

namespace ampkit {

// outputs[i] = inputs[i] * scale, computed in fp32; found_inf becomes 1 if any input is inf/NaN.
// scale and found_inf: one-element float32 tensors on the tensors' device.
void multi_tensor_scale_(at::TensorList inputs, at::TensorList outputs, const at::Tensor& scale,
                         const at::Tensor& found_inf);

}  // namespace ampkit
