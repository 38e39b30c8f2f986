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

at::Tensor fused_mlp(const at::Tensor& input, const at::Tensor& weight1, const std::optional<at::Tensor>& bias1,
                     const at::Tensor& weight2, const std::optional<at::Tensor>& bias2) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ampkit::fused_mlp", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               const at::Tensor&, const std::optional<at::Tensor>&)>();
  return op.call(input, weight1, bias1, weight2, bias2);
}

}  // namespace ampkit
