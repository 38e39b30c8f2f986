// Argument checks of master_sgd_step_ / master_adam_step_, shared by the CPU, CUDA and Meta
// kernels, plus the hyper-parameter structs every device kernel reads. float64 params take float64
// grads, float64 state, a float64 (or float32) lr and no masters; other params take FP32 state.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace ampkit::detail {

constexpr const char* kMasterSgdStepOp = "ampkit.master_sgd_step_";
constexpr const char* kMasterAdamStepOp = "ampkit.master_adam_step_";

struct MasterStepArgs {
  c10::Device device = c10::kCPU;
  bool has_masters = false;  // false: params are the weights themselves (read and written)
};

MasterStepArgs check_master_sgd_step_args(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                                          at::TensorList momentum_buffers, at::TensorList steps, const at::Tensor& lr,
                                          const at::Tensor& inv_scale, const at::Tensor& clip_coef,
                                          const std::optional<at::Tensor>& found_inf, double momentum,
                                          double dampening, double weight_decay, bool nesterov, bool write_back_grads);

MasterStepArgs check_master_adam_step_args(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                                           at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                           at::TensorList max_exp_avg_sqs, at::TensorList steps, const at::Tensor& lr,
                                           const at::Tensor& inv_scale, const at::Tensor& clip_coef,
                                           const std::optional<at::Tensor>& found_inf, double beta1, double beta2,
                                           double eps, double weight_decay, bool write_back_grads);

// True when found_inf is given and nonzero. Reads the value: only for CPU tensors.
bool cpu_step_skipped(const std::optional<at::Tensor>& found_inf);

}  // namespace ampkit::detail
