// CPU kernels of master_sgd_step_ / master_adam_step_: the per-element math of
// ampkit_kernels/optim_math.h (the same code the CUDA kernels run), parallel over elements.
// fp32/fp16/bf16 parameters compute in float (FP32 masters and state), fp64 parameters in double.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <array>
#include <type_traits>
#include <vector>

#include "ampkit_kernels/optim_math.h"
#include "cpu/cpu_loops.h"
#include "ops/optim.h"

namespace ampkit::cpu {
namespace {

namespace math = ampkit_kernels::optim_math;

float read_scalar(const at::Tensor& tensor) { return *tensor.const_data_ptr<float>(); }

// lr is float32, or float64 for fp64 params (the checks in ops/optim.cpp).
double read_lr(const at::Tensor& lr) {
  return lr.scalar_type() == at::kDouble ? *lr.const_data_ptr<double>() : static_cast<double>(read_scalar(lr));
}

template <typename T>
T* optional_data(at::TensorList list, size_t index) {
  return list.empty() ? nullptr : list[index].mutable_data_ptr<T>();
}

// The compute type of a parameter's step: double for fp64 params, float otherwise.
template <typename Param>
using ComputeOf = std::conditional_t<std::is_same_v<Param, double>, double, float>;

template <typename Compute, typename Grad>
Compute unscaled(Grad grad, float inv_scale, float clip_coef) {
  return static_cast<Compute>(grad) * static_cast<Compute>(inv_scale) * static_cast<Compute>(clip_coef);
}

// update(weight, grad, state0, state1, state2) -> new weight, for every element of one parameter.
// master == nullptr: the parameter itself holds the weight. Any state may be null (unused). With
// write_back_grads the gradient becomes the unscaled (and clipped) value the update used.
template <typename Compute, typename Param, typename Grad, typename Update>
void update_tensor(Param* param, Compute* master, Grad* grad, std::array<Compute*, 3> state, int64_t numel,
                   float inv_scale, float clip_coef, bool write_back_grads, const Update& update) {
  parallel_chunks(numel, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Compute weight = master != nullptr ? master[i] : static_cast<Compute>(param[i]);
      Compute s[3];
      for (int k = 0; k < 3; ++k) s[k] = state[k] != nullptr ? state[k][i] : Compute(0);
      const Compute g = unscaled<Compute>(grad[i], inv_scale, clip_coef);
      if (write_back_grads) grad[i] = static_cast<Grad>(g);
      weight = update(weight, g, s[0], s[1], s[2]);
      if (master != nullptr) master[i] = weight;
      param[i] = static_cast<Param>(weight);
      for (int k = 0; k < 3; ++k) {
        if (state[k] != nullptr) state[k][i] = s[k];
      }
    }
  });
}

// Calls fn(T{}) with the C++ type of a dtype the checks accepted (float32, float16, bfloat16).
template <typename Fn>
void dispatch_float(at::ScalarType dtype, const Fn& fn) {
  switch (dtype) {
    case at::kFloat: return fn(float{});
    case at::kHalf: return fn(c10::Half{});
    case at::kBFloat16: return fn(c10::BFloat16{});
    default: TORCH_CHECK(false, "ampkit: no CPU optimizer kernel for dtype ", dtype);
  }
}

// Calls fn(Param{}, Grad{}) with the C++ types of one parameter and its gradient: both double for
// fp64 params (the checks require fp64 grads there), else any mix of float/Half/BFloat16.
template <typename Fn>
void dispatch_param_and_grad(const at::Tensor& param, const at::Tensor& grad, const Fn& fn) {
  if (param.scalar_type() == at::kDouble) {
    TORCH_CHECK(grad.scalar_type() == at::kDouble, "ampkit: an fp64 param needs an fp64 grad, got ",
                grad.scalar_type());
    return fn(double{}, double{});
  }
  dispatch_float(param.scalar_type(), [&](auto param_tag) {
    dispatch_float(grad.scalar_type(), [&](auto grad_tag) { fn(param_tag, grad_tag); });
  });
}

// A skipped step with write_back_grads: only the gradients change (unscaled and clipped), as
// torch's GradScaler.unscale_ leaves them before it skips the step.
void unscale_grads(at::TensorList params, at::TensorList grads, float inv_scale, float clip_coef) {
  for (size_t t = 0; t < grads.size(); ++t) {
    dispatch_param_and_grad(params[t], grads[t], [&](auto param_tag, auto grad_tag) {
      using Grad = decltype(grad_tag);
      using Compute = ComputeOf<decltype(param_tag)>;
      Grad* grad = grads[t].mutable_data_ptr<Grad>();
      parallel_chunks(grads[t].numel(), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) grad[i] = static_cast<Grad>(unscaled<Compute>(grad[i], inv_scale, clip_coef));
      });
    });
  }
}

void advance_steps(at::TensorList steps) {
  for (const auto& step : steps) *step.mutable_data_ptr<float>() += 1.0f;
}

void master_sgd_step_cpu(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                         at::TensorList momentum_buffers, at::TensorList steps, const at::Tensor& lr,
                         const at::Tensor& inv_scale, const at::Tensor& clip_coef,
                         const std::optional<at::Tensor>& found_inf, double momentum, double dampening,
                         double weight_decay, bool nesterov, bool maximize, bool write_back_grads) {
  detail::check_master_sgd_step_args(params, master_params, grads, momentum_buffers, steps, lr, inv_scale, clip_coef,
                                     found_inf, momentum, dampening, weight_decay, nesterov, write_back_grads);
  const float inv = read_scalar(inv_scale), clip = read_scalar(clip_coef);
  if (detail::cpu_step_skipped(found_inf)) {
    if (write_back_grads) unscale_grads(params, grads, inv, clip);
    return;
  }
  const ampkit_kernels::SgdHyper hyper{momentum, dampening, weight_decay, nesterov, maximize};
  const double lr_value = read_lr(lr);
  for (size_t t = 0; t < params.size(); ++t) {
    dispatch_param_and_grad(params[t], grads[t], [&](auto param_tag, auto grad_tag) {
      using Param = decltype(param_tag);
      using Grad = decltype(grad_tag);
      using Compute = ComputeOf<Param>;
      const auto c = math::sgd_coefficients<Compute>(hyper, lr_value, read_scalar(steps[t]));
      update_tensor<Compute>(params[t].mutable_data_ptr<Param>(), optional_data<Compute>(master_params, t),
                             grads[t].mutable_data_ptr<Grad>(), {optional_data<Compute>(momentum_buffers, t), nullptr, nullptr},
                             params[t].numel(), inv, clip, write_back_grads,
                             [&](Compute weight, Compute grad, Compute& buffer, Compute&, Compute&) {
                               return math::sgd_update(weight, grad, buffer, c);
                             });
    });
  }
  advance_steps(steps);
}

void master_adam_step_cpu(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                          at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                          at::TensorList steps, const at::Tensor& lr, const at::Tensor& inv_scale,
                          const at::Tensor& clip_coef, const std::optional<at::Tensor>& found_inf, double beta1,
                          double beta2, double eps, double weight_decay, bool decoupled_weight_decay, bool maximize,
                          bool write_back_grads) {
  detail::check_master_adam_step_args(params, master_params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr,
                                      inv_scale, clip_coef, found_inf, beta1, beta2, eps, weight_decay,
                                      write_back_grads);
  const float inv = read_scalar(inv_scale), clip = read_scalar(clip_coef);
  if (detail::cpu_step_skipped(found_inf)) {
    if (write_back_grads) unscale_grads(params, grads, inv, clip);
    return;
  }
  const bool amsgrad = !max_exp_avg_sqs.empty();
  const ampkit_kernels::AdamHyper hyper{beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize, amsgrad};
  const double lr_value = read_lr(lr);
  for (size_t t = 0; t < params.size(); ++t) {
    dispatch_param_and_grad(params[t], grads[t], [&](auto param_tag, auto grad_tag) {
      using Param = decltype(param_tag);
      using Grad = decltype(grad_tag);
      using Compute = ComputeOf<Param>;
      const auto c = math::adam_coefficients<Compute>(hyper, lr_value, read_scalar(steps[t]));
      update_tensor<Compute>(params[t].mutable_data_ptr<Param>(), optional_data<Compute>(master_params, t),
                             grads[t].mutable_data_ptr<Grad>(),
                             {exp_avgs[t].mutable_data_ptr<Compute>(), exp_avg_sqs[t].mutable_data_ptr<Compute>(),
                              optional_data<Compute>(max_exp_avg_sqs, t)},
                             params[t].numel(), inv, clip, write_back_grads,
                             [&](Compute weight, Compute grad, Compute& exp_avg, Compute& exp_avg_sq,
                                 Compute& max_exp_avg_sq) {
                               return math::adam_update(weight, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, c);
                             });
    });
  }
  advance_steps(steps);
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, CPU, m) {
  m.impl("master_sgd_step_", &master_sgd_step_cpu);
  m.impl("master_adam_step_", &master_adam_step_cpu);
}

}  // namespace ampkit::cpu
