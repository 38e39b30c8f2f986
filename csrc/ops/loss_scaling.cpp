#include "ops/loss_scaling.h"

#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include <string>

#include "ops/registration.h"
#include "ops/validation.h"

namespace ampkit::detail {
namespace {

void check_int32_scalar_tensor(const char* op, const char* name, const at::Tensor& tensor) {
  TORCH_CHECK(tensor.defined(), op, ": ", name, " must be a one-element int32 tensor, got an undefined tensor");
  TORCH_CHECK_TYPE(tensor.scalar_type() == at::kInt, op, ": ", name, " must be a one-element int32 tensor, got dtype ",
                   dtype_name(tensor.scalar_type()));
  TORCH_CHECK(tensor.numel() == 1, op, ": ", name, " must be a one-element int32 tensor, got ", tensor.numel(),
              " elements (shape ", tensor.sizes(), ")");
}

}  // namespace

bool is_unscalable_grad_dtype(at::ScalarType dtype) {
  return is_supported_float_or_double(dtype);
}

c10::Device check_unscale_and_check_args(at::TensorList grads, const at::Tensor& found_inf,
                                         const at::Tensor& inv_scale, const std::optional<at::Tensor>& norm_out) {
  const char* op = kUnscaleAndCheckOp;
  // An empty list is allowed (an optimizer whose grads all live on another device): nothing to do.
  ListRules rules;
  rules.allow_empty = true;
  rules.require_contiguous = false;  // non-contiguous grads are handled (see is_flat_in_memory)
  rules.require_same_dtype = false;  // mixed lists are grouped by dtype by the kernels
  rules.dtypes = kUnscalableGradDtypes;
  check_scalar_tensor(op, "found_inf", found_inf);
  const std::optional<c10::Device> grads_device = check_tensor_list(op, "grads", grads, rules);
  const c10::Device device = grads_device.value_or(found_inf.device());
  const std::string reference = grads_device ? "grads[0]" : "found_inf";
  for (size_t i = 0; i < grads.size(); ++i) {
    // An in-place multiply through an expanded (stride 0) view would scale shared elements repeatedly.
    TORCH_CHECK(at::has_internal_overlap(grads[i]) != at::MemOverlap::Yes, op, ": ", indexed("grads", i),
                " must not have internally overlapping memory (e.g. an expand()ed view), got shape ",
                grads[i].sizes(), " with strides ", grads[i].strides());
  }
  check_device(op, "found_inf", found_inf, device, reference);
  check_scalar_tensor(op, "inv_scale", inv_scale);
  check_device(op, "inv_scale", inv_scale, device, reference);
  if (norm_out.has_value()) {
    check_scalar_tensor(op, "norm_out", *norm_out);
    check_device(op, "norm_out", *norm_out, device, reference);
  }
  // A grad listed twice would be unscaled twice.
  std::vector<NamedTensor> written;
  append_named(written, "grads", grads);
  written.push_back({"found_inf", &found_inf});
  if (norm_out.has_value()) written.push_back({"norm_out", &*norm_out});
  check_no_overlap(op, written, {{"inv_scale", &inv_scale}});
  return device;
}

c10::Device check_update_scale_args(const at::Tensor& scale, const at::Tensor& growth_tracker,
                                    const at::Tensor& hysteresis_tracker, const at::Tensor& found_inf,
                                    const UpdateScaleConfig& config) {
  const char* op = kUpdateScaleOp;
  check_scalar_tensor(op, "scale", scale);
  const c10::Device device = scale.device();
  check_int32_scalar_tensor(op, "growth_tracker", growth_tracker);
  check_device(op, "growth_tracker", growth_tracker, device, "scale");
  check_int32_scalar_tensor(op, "hysteresis_tracker", hysteresis_tracker);
  check_device(op, "hysteresis_tracker", hysteresis_tracker, device, "scale");
  check_scalar_tensor(op, "found_inf", found_inf);
  check_device(op, "found_inf", found_inf, device, "scale");

  contracts::check_loss_scale_options(config, {op});
  check_no_overlap(op,
                   {{"scale", &scale}, {"growth_tracker", &growth_tracker}, {"hysteresis_tracker", &hysteresis_tracker}},
                   {{"found_inf", &found_inf}});
  return device;
}

namespace {

// One kernel for every device (CompositeImplicitAutograd): two casts around a reciprocal, so
// the CPU, CUDA and Meta results agree by construction.
at::Tensor reciprocal_scale(const at::Tensor& scale) {
  const char* op = kReciprocalScaleOp;
  TORCH_CHECK(scale.defined(), op, ": scale must be a one-element floating-point tensor, got an undefined tensor");
  TORCH_CHECK_TYPE(at::isFloatingType(scale.scalar_type()), op,
                   ": scale must be a one-element floating-point tensor, got dtype ", dtype_name(scale.scalar_type()));
  TORCH_CHECK(scale.numel() == 1, op, ": scale must be a one-element floating-point tensor, got ", scale.numel(),
              " elements (shape ", scale.sizes(), ")");
  return scale.to(at::kDouble).reciprocal().to(at::kFloat);
}

// Meta kernels: both ops return nothing and change no metadata, so the checks are all there is.
void unscale_and_check_meta(at::TensorList grads, const at::Tensor& found_inf, const at::Tensor& inv_scale,
                            const std::optional<at::Tensor>& norm_out) {
  check_unscale_and_check_args(grads, found_inf, inv_scale, norm_out);
}

void update_scale_meta(const at::Tensor& scale, const at::Tensor& growth_tracker, const at::Tensor& hysteresis_tracker,
                       const at::Tensor& found_inf, double growth_factor, double backoff_factor,
                       int64_t growth_interval, int64_t hysteresis, double min_scale, double max_scale) {
  check_update_scale_args(scale, growth_tracker, hysteresis_tracker, found_inf,
                          {growth_factor, backoff_factor, growth_interval, hysteresis, min_scale, max_scale});
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, CompositeImplicitAutograd, m) {
  m.impl("reciprocal_scale", &reciprocal_scale);
}
TORCH_LIBRARY_IMPL(ampkit, CatchAll, m) {
  register_meta_and_sparse(m, "unscale_and_check_", &unscale_and_check_meta);
  register_meta_and_sparse(m, "update_scale_", &update_scale_meta);
}

}  // namespace ampkit::detail
