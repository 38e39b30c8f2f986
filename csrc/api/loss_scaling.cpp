#include "ampkit/loss_scaling.h"

#include "ops/op_lookup.h"

namespace ampkit {

void unscale_and_check_(at::TensorList grads, const at::Tensor& found_inf, const at::Tensor& inv_scale,
                        const std::optional<at::Tensor>& norm_out) {
  static const auto op = detail::find_typed_op<void(at::TensorList, const at::Tensor&, const at::Tensor&,
                                                     const std::optional<at::Tensor>&)>("ampkit::unscale_and_check_");
  op.call(grads, found_inf, inv_scale, norm_out);
}

at::Tensor reciprocal_scale(const at::Tensor& scale) {
  static const auto op = detail::find_typed_op<at::Tensor(const at::Tensor&)>("ampkit::reciprocal_scale");
  return op.call(scale);
}

void update_scale_(const at::Tensor& scale, const at::Tensor& growth_tracker, const at::Tensor& hysteresis_tracker,
                   const at::Tensor& found_inf, double growth_factor, double backoff_factor, int64_t growth_interval,
                   int64_t hysteresis, double min_scale, double max_scale) {
  static const auto op = detail::find_typed_op<void(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                     const at::Tensor&, double, double, int64_t, int64_t, double,
                                                     double)>("ampkit::update_scale_");
  op.call(scale, growth_tracker, hysteresis_tracker, found_inf, growth_factor, backoff_factor, growth_interval,
          hysteresis, min_scale, max_scale);
}

}  // namespace ampkit
