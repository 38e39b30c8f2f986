// The schema of every torch.ops.ampkit.* op, in one place. Device kernels are registered next
// to their implementations (cpu/, cuda/, ops/meta.cpp).
#include <torch/library.h>

TORCH_LIBRARY(ampkit, m) {
  // outputs[i] = inputs[i] * scale (in fp32, rounded to the outputs' dtype); found_inf is set to
  // 1.0 when any input element is inf/NaN (never cleared here). inputs and outputs may be the
  // same tensors. scale and found_inf are one-element float32 tensors on the tensors' device.
  m.def("multi_tensor_scale_(Tensor[] inputs, Tensor(a!)[] outputs, Tensor scale, Tensor(b!) found_inf) -> ()");
}
