#include "ampkit/ops.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace ampkit {

void multi_tensor_scale_(at::TensorList inputs, at::TensorList outputs, const at::Tensor& scale,
                         const at::Tensor& found_inf) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ampkit::multi_tensor_scale_", "")
                             .typed<void(at::TensorList, at::TensorList, const at::Tensor&, const at::Tensor&)>();
  op.call(inputs, outputs, scale, found_inf);
}

}  // namespace ampkit
