#include "ops/multi_tensor_scale.h"

#include <torch/library.h>

#include "ops/registration.h"
#include "ops/validation.h"

namespace ampkit::detail {

c10::Device check_multi_tensor_scale_args(at::TensorList inputs, at::TensorList outputs, const at::Tensor& scale,
                                          const at::Tensor& found_inf) {
  const char* op = kMultiTensorScaleOp;
  const c10::Device device = *check_tensor_list(op, "inputs", inputs);
  check_tensor_list(op, "outputs", outputs);
  check_matching_lists(op, "inputs", inputs, "outputs", outputs);
  check_device(op, "outputs[0]", outputs[0], device, "inputs[0]");
  check_scalar_tensor(op, "scale", scale);
  check_scalar_tensor(op, "found_inf", found_inf);
  check_device(op, "scale", scale, device, "inputs[0]");
  check_device(op, "found_inf", found_inf, device, "inputs[0]");
  // outputs[i] may be inputs[i] (in place), but no output may be written twice.
  std::vector<NamedTensor> written;
  append_named(written, "outputs", outputs);
  written.push_back({"found_inf", &found_inf});
  check_no_overlap(op, written, {{"scale", &scale}});
  check_inputs_apart_from_outputs(op, "inputs", inputs, "outputs", outputs);
  return device;
}

namespace {

// Meta: the op returns nothing and changes no metadata, so checking the arguments is all there is.
void multi_tensor_scale_meta(at::TensorList inputs, at::TensorList outputs, const at::Tensor& scale,
                             const at::Tensor& found_inf) {
  check_multi_tensor_scale_args(inputs, outputs, scale, found_inf);
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, CatchAll, m) {
  register_meta_and_sparse(m, "multi_tensor_scale_", &multi_tensor_scale_meta);
}

}  // namespace ampkit::detail
