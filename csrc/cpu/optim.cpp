// CPU kernels of master_sgd_step_ / master_adam_step_: the per-element math of
// ampkit_kernels/optim_math.h (the same code the CUDA kernels run), parallel over elements.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <vector>

#include "ampkit_kernels/optim_math.h"
#include "cpu/cpu_loops.h"
#include "ops/optim.h"

namespace ampkit::cpu {
namespace {

namespace math = ampkit_kernels::optim_math;

float read_scalar(const at::Tensor& tensor) { return *tensor.const_data_ptr<float>(); }

float* optional_data(at::TensorList list, size_t index) {
  return list.empty() ? nullptr : list[index].mutable_data_ptr<float>();
}

// update(weight, grad, state0, state1) -> new weight, for every element of one parameter.
// master == nullptr: the parameter itself holds the weight. state0/state1 may be null.
template <typename Param, typename Grad, typename Update>
void update_tensor(Param* param, float* master, const Grad* grad, float* state0, float* state1, int64_t numel,
                   float inv_scale, float clip_coef, const Update& update) {
  parallel_chunks(numel, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float weight = master != nullptr ? master[i] : static_cast<float>(param[i]);
      float s0 = state0 != nullptr ? state0[i] : 0.0f;
      float s1 = state1 != nullptr ? state1[i] : 0.0f;
      const float g = static_cast<float>(grad[i]) * inv_scale * clip_coef;
      weight = update(weight, g, s0, s1);
      if (master != nullptr) master[i] = weight;
      param[i] = static_cast<Param>(weight);
      if (state0 != nullptr) state0[i] = s0;
      if (state1 != nullptr) state1[i] = s1;
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

// Calls fn(Param{}, Grad{}) with the C++ types of one parameter and its gradient.
template <typename Fn>
void dispatch_param_and_grad(const at::Tensor& param, const at::Tensor& grad, const Fn& fn) {
  dispatch_float(param.scalar_type(), [&](auto param_tag) {
    dispatch_float(grad.scalar_type(), [&](auto grad_tag) { fn(param_tag, grad_tag); });
  });
}

void advance_steps(at::TensorList steps) {
  for (const auto& step : steps) *step.mutable_data_ptr<float>() += 1.0f;
}

void master_sgd_step_cpu(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                         at::TensorList momentum_buffers, at::TensorList steps, const at::Tensor& lr,
                         const at::Tensor& inv_scale, const at::Tensor& clip_coef,
                         const std::optional<at::Tensor>& found_inf, double momentum, double dampening,
                         double weight_decay, bool nesterov, bool maximize) {
  detail::check_master_sgd_step_args(params, master_params, grads, momentum_buffers, steps, lr, inv_scale, clip_coef,
                                     found_inf, momentum, dampening, weight_decay, nesterov);
  if (detail::cpu_step_skipped(found_inf)) return;
  const ampkit_kernels::SgdHyper hyper{momentum, dampening, weight_decay, nesterov, maximize};
  const float lr_value = read_scalar(lr), inv = read_scalar(inv_scale), clip = read_scalar(clip_coef);
  for (size_t t = 0; t < params.size(); ++t) {
    const math::SgdCoefficients c = math::sgd_coefficients(hyper, lr_value, read_scalar(steps[t]));
    dispatch_param_and_grad(params[t], grads[t], [&](auto param_tag, auto grad_tag) {
      using Param = decltype(param_tag);
      using Grad = decltype(grad_tag);
      update_tensor(params[t].mutable_data_ptr<Param>(), optional_data(master_params, t),
                    grads[t].const_data_ptr<Grad>(), optional_data(momentum_buffers, t), nullptr, params[t].numel(),
                    inv, clip, [&](float weight, float grad, float& buffer, float&) {
                      return math::sgd_update(weight, grad, buffer, c);
                    });
    });
  }
  advance_steps(steps);
}

void master_adam_step_cpu(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                          at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList steps,
                          const at::Tensor& lr, const at::Tensor& inv_scale, const at::Tensor& clip_coef,
                          const std::optional<at::Tensor>& found_inf, double beta1, double beta2, double eps,
                          double weight_decay, bool decoupled_weight_decay, bool maximize) {
  detail::check_master_adam_step_args(params, master_params, grads, exp_avgs, exp_avg_sqs, steps, lr, inv_scale,
                                      clip_coef, found_inf, beta1, beta2, eps, weight_decay);
  if (detail::cpu_step_skipped(found_inf)) return;
  const ampkit_kernels::AdamHyper hyper{beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize};
  const float lr_value = read_scalar(lr), inv = read_scalar(inv_scale), clip = read_scalar(clip_coef);
  for (size_t t = 0; t < params.size(); ++t) {
    const math::AdamCoefficients c = math::adam_coefficients(hyper, lr_value, read_scalar(steps[t]));
    dispatch_param_and_grad(params[t], grads[t], [&](auto param_tag, auto grad_tag) {
      using Param = decltype(param_tag);
      using Grad = decltype(grad_tag);
      update_tensor(params[t].mutable_data_ptr<Param>(), optional_data(master_params, t),
                    grads[t].const_data_ptr<Grad>(), exp_avgs[t].mutable_data_ptr<float>(),
                    exp_avg_sqs[t].mutable_data_ptr<float>(), params[t].numel(), inv, clip,
                    [&](float weight, float grad, float& exp_avg, float& exp_avg_sq) {
                      return math::adam_update(weight, grad, exp_avg, exp_avg_sq, c);
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
