#include "ops/optim.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <initializer_list>
#include <utility>
#include <vector>

#include "ampkit/contracts.h"
#include "ops/registration.h"
#include "ops/validation.h"

namespace ampkit::detail {
namespace {

// The kernels walk params[i] and every tensor parallel to it (grads, masters, state) as flat runs
// of numel elements: each params[i] must be flat in memory (any dense layout: contiguous,
// channels_last, permuted) and each parallel tensor must have its memory order.
ListRules layout_free_rules(bool allow_empty, bool allow_float64) {
  ListRules rules;
  rules.allow_empty = allow_empty;
  rules.dtypes = allow_float64 ? kFloatsAndFloat64 : kMixedPrecisionFloats;
  rules.require_contiguous = false;  // checked per tensor against params[i] (check_parallel_layouts)
  return rules;
}

void check_parallel_layouts(const char* op, const char* name, at::TensorList list, at::TensorList params) {
  for (size_t i = 0; i < list.size(); ++i) {
    check_same_memory_order(op, indexed(name, i), list[i], indexed("params", i), params[i]);
  }
}

bool is_float64(at::TensorList params) { return params[0].scalar_type() == at::kDouble; }

// A list parallel to params (masters or optimizer state): same length, shapes, layouts and device;
// FP32, except the state of float64 params, which is float64 (torch keeps it in the param's dtype).
void check_fp32_list(const char* op, const char* name, at::TensorList list, at::TensorList params,
                     const c10::Device& device, bool allow_empty) {
  // The dtype is checked against the params' below.
  if (!check_tensor_list(op, name, list, layout_free_rules(allow_empty, /*allow_float64=*/true))) return;
  check_matching_lists(op, "params", params, name, list);
  check_parallel_layouts(op, name, list, params);
  const bool float64 = is_float64(params);
  for (size_t i = 0; i < list.size(); ++i) {
    const ItemName item = indexed(name, i);
    TORCH_CHECK_TYPE(!float64 || list[i].scalar_type() == at::kDouble, op, ": ", item,
                     " must have dtype float64 (the state of float64 params is float64), got ",
                     dtype_name(list[i].scalar_type()));
    TORCH_CHECK_TYPE(float64 || list[i].scalar_type() == at::kFloat, op, ": ", item,
                     " must have dtype float32 (masters and optimizer state are kept in FP32), got ",
                     dtype_name(list[i].scalar_type()));
  }
  check_device(op, indexed(name, 0), list[0], device, "params[0]");
}

void check_step_scalar(const char* op, const ItemName& name, const at::Tensor& tensor, const c10::Device& device) {
  check_scalar_tensor(op, name, tensor);
  check_device(op, name, tensor, device, "params[0]");
}

// Everything both optimizers take: params, masters, grads, steps and the device scalars.
MasterStepArgs check_common(const char* op, at::TensorList params, at::TensorList master_params, at::TensorList grads,
                            at::TensorList steps, const at::Tensor& lr, const at::Tensor& inv_scale,
                            const at::Tensor& clip_coef, const std::optional<at::Tensor>& found_inf) {
  MasterStepArgs args;
  args.device = *check_tensor_list(op, "params", params,
                                   layout_free_rules(/*allow_empty=*/false, /*allow_float64=*/true));
  for (size_t i = 0; i < params.size(); ++i) check_flat_in_memory(op, indexed("params", i), params[i]);
  const bool float64 = is_float64(params);
  TORCH_CHECK_VALUE(!float64 || master_params.empty(), op, ": master_params must be empty for float64 params (a "
                    "float64 param is its own master), got ", master_params.size(), " tensors");
  check_fp32_list(op, "master_params", master_params, params, args.device, /*allow_empty=*/true);
  args.has_masters = !master_params.empty();
  check_tensor_list(op, "grads", grads, layout_free_rules(/*allow_empty=*/false, /*allow_float64=*/float64));
  check_matching_lists(op, "params", params, "grads", grads);
  check_parallel_layouts(op, "grads", grads, params);
  check_device(op, "grads[0]", grads[0], args.device, "params[0]");
  for (size_t i = 0; i < grads.size(); ++i) {
    // float64 params compute in double from float64 grads; others never get float64 grads (above).
    TORCH_CHECK_TYPE(!float64 || grads[i].scalar_type() == at::kDouble, op, ": ", indexed("grads", i),
                     " must have dtype float64 (the dtype of float64 params), got ",
                     dtype_name(grads[i].scalar_type()));
  }
  TORCH_CHECK(steps.size() == params.size(), op, ": steps must hold as many tensors as params (", params.size(),
              "), got ", steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    check_step_scalar(op, indexed("steps", i), steps[i], args.device);
  }
  if (float64 && lr.defined() && lr.scalar_type() == at::kDouble) {
    // float64 params: lr may be float64, so torch's Python-float lr reaches the update unrounded.
    TORCH_CHECK(lr.numel() == 1, op, ": lr must be a one-element float32 or float64 tensor, got ", lr.numel(),
                " elements (shape ", lr.sizes(), ")");
    check_device(op, "lr", lr, args.device, "params[0]");
  } else {
    check_step_scalar(op, "lr", lr, args.device);
  }
  check_step_scalar(op, "inv_scale", inv_scale, args.device);
  check_step_scalar(op, "clip_coef", clip_coef, args.device);
  if (found_inf.has_value() && found_inf->defined()) check_step_scalar(op, "found_inf", *found_inf, args.device);
  return args;
}

// Every tensor a step writes (params, masters, state, steps) must be its own: a parameter listed
// twice would be updated twice, a state shared by two parameters would mix their histories.
// With write_back_grads the grads are written too, so they must not share memory either.
void check_step_aliasing(const char* op, at::TensorList params, at::TensorList master_params, at::TensorList grads,
                         std::initializer_list<std::pair<const char*, at::TensorList>> state_lists,
                         at::TensorList steps, const at::Tensor& lr, const at::Tensor& inv_scale,
                         const at::Tensor& clip_coef, const std::optional<at::Tensor>& found_inf,
                         bool write_back_grads) {
  std::vector<NamedTensor> written;
  written.reserve(params.size() * (3 + state_lists.size()));
  append_named(written, "params", params);
  append_named(written, "master_params", master_params);
  for (const auto& [name, list] : state_lists) append_named(written, name, list);
  append_named(written, "steps", steps);
  std::vector<NamedTensor> read;
  append_named(write_back_grads ? written : read, "grads", grads);
  read.push_back({"lr", &lr});
  read.push_back({"inv_scale", &inv_scale});
  read.push_back({"clip_coef", &clip_coef});
  if (found_inf.has_value()) read.push_back({"found_inf", &*found_inf});
  check_no_overlap(op, written, read);
}

}  // namespace

MasterStepArgs check_master_sgd_step_args(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                                          at::TensorList momentum_buffers, at::TensorList steps, const at::Tensor& lr,
                                          const at::Tensor& inv_scale, const at::Tensor& clip_coef,
                                          const std::optional<at::Tensor>& found_inf, double momentum,
                                          double dampening, double weight_decay, bool nesterov,
                                          bool write_back_grads) {
  const char* op = kMasterSgdStepOp;
  const MasterStepArgs args = check_common(op, params, master_params, grads, steps, lr, inv_scale, clip_coef, found_inf);
  // lr is a device tensor here: its value is not read on the host.
  contracts::check_sgd_hyperparameters({std::nullopt, momentum, dampening, weight_decay, nesterov},
                                       {op, contracts::Audience::Cpp, "", contracts::Form::OpArguments});
  if (momentum != 0.0) {
    TORCH_CHECK(!momentum_buffers.empty(), op, ": momentum_buffers must hold one FP32 tensor per param when momentum (",
                momentum, ") is nonzero, got an empty list");
  }
  check_fp32_list(op, "momentum_buffers", momentum_buffers, params, args.device, /*allow_empty=*/momentum == 0.0);
  check_step_aliasing(op, params, master_params, grads, {{"momentum_buffers", momentum_buffers}}, steps, lr, inv_scale,
                      clip_coef, found_inf, write_back_grads);
  return args;
}

MasterStepArgs check_master_adam_step_args(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                                           at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                           at::TensorList max_exp_avg_sqs, at::TensorList steps, const at::Tensor& lr,
                                           const at::Tensor& inv_scale, const at::Tensor& clip_coef,
                                           const std::optional<at::Tensor>& found_inf, double beta1, double beta2,
                                           double eps, double weight_decay, bool write_back_grads) {
  const char* op = kMasterAdamStepOp;
  const MasterStepArgs args = check_common(op, params, master_params, grads, steps, lr, inv_scale, clip_coef, found_inf);
  contracts::check_adam_hyperparameters({std::nullopt, beta1, beta2, eps, weight_decay},
                                        {op, contracts::Audience::Cpp, "", contracts::Form::OpArguments});
  check_fp32_list(op, "exp_avgs", exp_avgs, params, args.device, /*allow_empty=*/false);
  check_fp32_list(op, "exp_avg_sqs", exp_avg_sqs, params, args.device, /*allow_empty=*/false);
  // Empty: plain Adam; one per param: amsgrad.
  check_fp32_list(op, "max_exp_avg_sqs", max_exp_avg_sqs, params, args.device, /*allow_empty=*/true);
  check_step_aliasing(op, params, master_params, grads,
                      {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}, {"max_exp_avg_sqs", max_exp_avg_sqs}},
                      steps, lr, inv_scale, clip_coef, found_inf, write_back_grads);
  return args;
}

bool cpu_step_skipped(const std::optional<at::Tensor>& found_inf) {
  return found_inf.has_value() && found_inf->defined() && *found_inf->const_data_ptr<float>() != 0.0f;
}

namespace {

// Meta: the ops return nothing and change no metadata, so checking the arguments is all there is.
void master_sgd_step_meta(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                          at::TensorList momentum_buffers, at::TensorList steps, const at::Tensor& lr,
                          const at::Tensor& inv_scale, const at::Tensor& clip_coef,
                          const std::optional<at::Tensor>& found_inf, double momentum, double dampening,
                          double weight_decay, bool nesterov, bool maximize, bool write_back_grads) {
  check_master_sgd_step_args(params, master_params, grads, momentum_buffers, steps, lr, inv_scale, clip_coef,
                             found_inf, momentum, dampening, weight_decay, nesterov, write_back_grads);
}

void master_adam_step_meta(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                           at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                           at::TensorList steps, const at::Tensor& lr, const at::Tensor& inv_scale,
                           const at::Tensor& clip_coef, const std::optional<at::Tensor>& found_inf, double beta1,
                           double beta2, double eps, double weight_decay, bool decoupled_weight_decay, bool maximize,
                           bool write_back_grads) {
  check_master_adam_step_args(params, master_params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr,
                              inv_scale, clip_coef, found_inf, beta1, beta2, eps, weight_decay, write_back_grads);
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, CatchAll, m) {
  register_meta_and_sparse(m, "master_sgd_step_", &master_sgd_step_meta);
  register_meta_and_sparse(m, "master_adam_step_", &master_adam_step_meta);
}

}  // namespace ampkit::detail
