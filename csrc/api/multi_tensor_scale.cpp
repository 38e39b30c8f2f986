#include "ampkit/multi_tensor_scale.h"

#include "ops/op_lookup.h"

namespace ampkit {

void multi_tensor_scale_(at::TensorList inputs, at::TensorList outputs, const at::Tensor& scale,
                         const at::Tensor& found_inf) {
  static const auto op =
      detail::find_typed_op<void(at::TensorList, at::TensorList, const at::Tensor&, const at::Tensor&)>(
          "ampkit::multi_tensor_scale_");
  op.call(inputs, outputs, scale, found_inf);
}

}  // namespace ampkit
