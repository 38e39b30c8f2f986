// The per-element arithmetic of ampkit's master-weight optimizers, shared by the CUDA kernels
// and the CPU kernels (csrc/cpu), so both devices run the same formulas.
//
// The order of operations follows torch.optim's single-tensor SGD/Adam/AdamW: per-step
// coefficients are derived in double (torch does that arithmetic on Python floats) and rounded
// to the compute type where torch hands them to a tensor op. The compute type T is float for
// fp32/fp16/bf16 parameters (FP32 masters and state) and double for fp64 parameters, which torch
// updates in double with float64 state. On fp32 parameters the results therefore differ from
// torch's only by rounding (FMA contraction and vectorisation), which the differential tests bound.
//
// The update functions take the value type V apart from the coefficients' type T: the kernels
// run them on V = T, and the CPU kernels also on a vector of floats (csrc/cpu/vector_isa.h's
// FloatVec, whose operators work lane by lane, plus nan_propagating_max and square_root
// overloads for it), so every instruction set runs these very formulas.
//
// Plain C++ (no CUDA or ATen headers), so the CPU-only build can include it.
#pragma once

#include <cmath>

#include "ampkit_kernels/host_device.h"

namespace ampkit_kernels {

struct SgdHyper {
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
  bool maximize = false;
};

struct AdamHyper {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled_weight_decay = false;  // AdamW
  bool maximize = false;
  bool amsgrad = false;  // the denominator uses the running maximum of exp_avg_sq
};

namespace optim_math {

// sqrt in the compute type: sqrtf for float (as the float kernels always used), sqrt for double.
AMPKIT_HOST_DEVICE float square_root(float value) { return sqrtf(value); }
AMPKIT_HOST_DEVICE double square_root(double value) { return sqrt(value); }

// torch.maximum: NaN in either operand gives NaN (fmax would drop it).
template <typename T>
AMPKIT_HOST_DEVICE T nan_propagating_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

// ---- SGD (torch.optim.SGD: momentum, dampening, nesterov, weight_decay, maximize) ----

template <typename T>
struct SgdCoefficients {
  T neg_lr;
  T momentum;
  T one_minus_dampening;
  T weight_decay;
  bool has_momentum;
  bool first_step;  // torch initialises the momentum buffer with the gradient itself
  bool nesterov;
  bool maximize;
};

// `lr`: the value of the step's lr tensor (float32 for fp32/fp16/bf16 params, float64 for fp64
// params: torch's lr is a Python float). `steps_taken`: the parameter's step counter before this step.
template <typename T>
AMPKIT_HOST_DEVICE SgdCoefficients<T> sgd_coefficients(const SgdHyper& hyper, double lr, float steps_taken) {
  SgdCoefficients<T> c;
  c.neg_lr = static_cast<T>(-lr);
  c.momentum = static_cast<T>(hyper.momentum);
  c.one_minus_dampening = static_cast<T>(1.0 - hyper.dampening);
  c.weight_decay = static_cast<T>(hyper.weight_decay);
  c.has_momentum = hyper.momentum != 0.0;
  c.first_step = steps_taken == 0.0f;
  c.nesterov = hyper.nesterov;
  c.maximize = hyper.maximize;
  return c;
}

// Returns the new weight; `momentum_buffer` is updated in place when momentum is on.
template <typename V, typename T>
AMPKIT_HOST_DEVICE V sgd_update(V param, V grad, V& momentum_buffer, const SgdCoefficients<T>& c) {
  if (c.maximize) grad = -grad;
  if (c.weight_decay != T(0)) grad = grad + c.weight_decay * param;
  if (c.has_momentum) {
    V buffer = grad;
    if (!c.first_step) {
      buffer = momentum_buffer * c.momentum;
      buffer = buffer + c.one_minus_dampening * grad;
    }
    momentum_buffer = buffer;
    grad = c.nesterov ? grad + c.momentum * buffer : buffer;
  }
  return param + c.neg_lr * grad;
}

// ---- Adam (L2 weight decay) and AdamW (decoupled weight decay), with or without amsgrad ----

template <typename T>
struct AdamCoefficients {
  T lerp_weight;  // 1 - beta1
  T beta2;
  T one_minus_beta2;
  T eps;
  T weight_decay;           // Adam: added to the gradient
  T decay_factor;           // AdamW: 1 - lr * weight_decay
  T neg_step_size;          // -lr / (1 - beta1^step)
  T bias_correction2_sqrt;  // sqrt(1 - beta2^step)
  bool decoupled;
  bool maximize;
  bool amsgrad;
};

// `lr` as for sgd_coefficients; `steps_taken`: the parameter's step counter before this step
// (this step is number steps_taken + 1).
template <typename T>
AMPKIT_HOST_DEVICE AdamCoefficients<T> adam_coefficients(const AdamHyper& hyper, double lr, float steps_taken) {
  const double step = static_cast<double>(steps_taken) + 1.0;
  const double bias_correction1 = 1.0 - pow(hyper.beta1, step);
  const double bias_correction2 = 1.0 - pow(hyper.beta2, step);
  AdamCoefficients<T> c;
  c.lerp_weight = static_cast<T>(1.0 - hyper.beta1);
  c.beta2 = static_cast<T>(hyper.beta2);
  c.one_minus_beta2 = static_cast<T>(1.0 - hyper.beta2);
  c.eps = static_cast<T>(hyper.eps);
  c.weight_decay = static_cast<T>(hyper.weight_decay);
  c.decay_factor = static_cast<T>(1.0 - lr * hyper.weight_decay);
  c.neg_step_size = static_cast<T>(-(lr / bias_correction1));
  c.bias_correction2_sqrt = static_cast<T>(sqrt(bias_correction2));
  c.decoupled = hyper.decoupled_weight_decay;
  c.maximize = hyper.maximize;
  c.amsgrad = hyper.amsgrad;
  return c;
}

// torch.lerp's formula: the branch keeps the result exact at both ends of the weight range.
template <typename V, typename T>
AMPKIT_HOST_DEVICE V lerp(V self, V end, T weight) {
  return weight < T(0.5) ? self + weight * (end - self) : end - (end - self) * (T(1) - weight);
}

// Returns the new weight; exp_avg and exp_avg_sq are updated in place, and with amsgrad
// max_exp_avg_sq too (torch: max_exp_avg_sq = maximum(max_exp_avg_sq, exp_avg_sq), and the
// denominator takes it in place of exp_avg_sq). Without amsgrad max_exp_avg_sq is not touched.
template <typename V, typename T>
AMPKIT_HOST_DEVICE V adam_update(V param, V grad, V& exp_avg, V& exp_avg_sq, V& max_exp_avg_sq,
                                 const AdamCoefficients<T>& c) {
  if (c.maximize) grad = -grad;
  if (c.weight_decay != T(0)) {
    if (c.decoupled) {
      param = param * c.decay_factor;
    } else {
      grad = grad + c.weight_decay * param;
    }
  }
  exp_avg = lerp(exp_avg, grad, c.lerp_weight);
  exp_avg_sq = exp_avg_sq * c.beta2;
  exp_avg_sq = exp_avg_sq + c.one_minus_beta2 * grad * grad;
  V second_moment = exp_avg_sq;
  if (c.amsgrad) {
    max_exp_avg_sq = nan_propagating_max(max_exp_avg_sq, exp_avg_sq);
    second_moment = max_exp_avg_sq;
  }
  const V denom = square_root(second_moment) / c.bias_correction2_sqrt + c.eps;
  return param + c.neg_step_size * exp_avg / denom;
}

}  // namespace optim_math
}  // namespace ampkit_kernels
