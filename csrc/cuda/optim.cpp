#include <torch/library.h>

#include "ampkit_kernels/optim.h"
#include "cuda/kernel_glue.h"
#include "ops/optim.h"

namespace ampkit::cuda {
namespace {

// {params, masters (or nulls), grads, state lists..., steps} as the kernels/ entry points take them.
ampkit_kernels::TensorLists make_step_lists(at::TensorList params, at::TensorList master_params,
                                            at::TensorList grads, std::initializer_list<at::TensorList> state_lists,
                                            at::TensorList steps) {
  auto pointers = [&](at::TensorList list) {
    std::vector<void*> result(params.size(), nullptr);
    for (size_t i = 0; i < list.size(); ++i) result[i] = list[i].data_ptr();
    return result;
  };
  ampkit_kernels::TensorLists lists;
  for (const auto& param : params) lists.numels.push_back(param.numel());
  lists.lists.push_back(pointers(params));
  lists.lists.push_back(pointers(master_params));
  lists.lists.push_back(pointers(grads));
  for (const at::TensorList state : state_lists) lists.lists.push_back(pointers(state));
  lists.lists.push_back(pointers(steps));
  return lists;
}

ampkit_kernels::StepScalars step_scalars(const at::Tensor& lr, const at::Tensor& inv_scale,
                                         const at::Tensor& clip_coef, const std::optional<at::Tensor>& found_inf,
                                         bool write_back_grads) {
  ampkit_kernels::StepScalars scalars;
  if (lr.scalar_type() == at::kDouble) {
    scalars.lr_fp64 = lr.const_data_ptr<double>();
  } else {
    scalars.lr = lr.const_data_ptr<float>();
  }
  scalars.write_back_grads = write_back_grads;
  scalars.inv_scale = inv_scale.const_data_ptr<float>();
  scalars.clip_coef = clip_coef.const_data_ptr<float>();
  if (found_inf.has_value() && found_inf->defined()) scalars.found_inf = found_inf->const_data_ptr<float>();
  return scalars;
}

void master_sgd_step_cuda(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                          at::TensorList momentum_buffers, at::TensorList steps, const at::Tensor& lr,
                          const at::Tensor& inv_scale, const at::Tensor& clip_coef,
                          const std::optional<at::Tensor>& found_inf, double momentum, double dampening,
                          double weight_decay, bool nesterov, bool maximize, bool write_back_grads) {
  const auto args = detail::check_master_sgd_step_args(params, master_params, grads, momentum_buffers, steps, lr,
                                                       inv_scale, clip_coef, found_inf, momentum, dampening,
                                                       weight_decay, nesterov, write_back_grads);
  check_cuda_device(detail::kMasterSgdStepOp, "params", args.device);
  const c10::cuda::CUDAGuard guard(args.device);
  const auto result = ampkit_kernels::master_sgd_step(
      make_step_lists(params, master_params, grads, {momentum_buffers}, steps), kernel_dtype(params[0].scalar_type()),
      kernel_dtype(grads[0].scalar_type()), step_scalars(lr, inv_scale, clip_coef, found_inf, write_back_grads),
      ampkit_kernels::SgdHyper{momentum, dampening, weight_decay, nesterov, maximize}, current_stream());
  check_result(detail::kMasterSgdStepOp, result);
}

void master_adam_step_cuda(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                           at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                           at::TensorList steps, const at::Tensor& lr, const at::Tensor& inv_scale,
                           const at::Tensor& clip_coef, const std::optional<at::Tensor>& found_inf, double beta1,
                           double beta2, double eps, double weight_decay, bool decoupled_weight_decay, bool maximize,
                           bool write_back_grads) {
  const auto args = detail::check_master_adam_step_args(params, master_params, grads, exp_avgs, exp_avg_sqs,
                                                        max_exp_avg_sqs, steps, lr, inv_scale, clip_coef, found_inf,
                                                        beta1, beta2, eps, weight_decay, write_back_grads);
  check_cuda_device(detail::kMasterAdamStepOp, "params", args.device);
  const c10::cuda::CUDAGuard guard(args.device);
  const auto result = ampkit_kernels::master_adam_step(
      make_step_lists(params, master_params, grads, {exp_avgs, exp_avg_sqs, max_exp_avg_sqs}, steps),
      kernel_dtype(params[0].scalar_type()), kernel_dtype(grads[0].scalar_type()),
      step_scalars(lr, inv_scale, clip_coef, found_inf, write_back_grads),
      ampkit_kernels::AdamHyper{beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize,
                                /*amsgrad=*/!max_exp_avg_sqs.empty()},
      current_stream());
  check_result(detail::kMasterAdamStepOp, result);
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, CUDA, m) {
  m.impl("master_sgd_step_", &master_sgd_step_cuda);
  m.impl("master_adam_step_", &master_adam_step_cuda);
}

}  // namespace ampkit::cuda
