#include "ampkit/fused_linear.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace ampkit {

at::Tensor fused_linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        std::string_view activation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ampkit::fused_linear", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               std::string_view)>();
  return op.call(input, weight, bias, activation);
}

}  // namespace ampkit
