// The per-element arithmetic of ampkit's master-weight optimizers, shared by the CUDA kernels
// and the CPU kernels (csrc/cpu), so both devices run the same formulas.
//
// The order of operations follows torch.optim's single-tensor SGD/Adam/AdamW: per-step
// coefficients are derived in double (torch does that arithmetic on Python floats) and rounded
// to float where torch hands them to a float tensor op; the element math is float. On fp32
// parameters the results therefore differ from torch's only by rounding (FMA contraction and
// vectorisation), which the differential tests bound.
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
};

namespace optim_math {

// ---- SGD (torch.optim.SGD: momentum, dampening, nesterov, weight_decay, maximize) ----

struct SgdCoefficients {
  float neg_lr;
  float momentum;
  float one_minus_dampening;
  float weight_decay;
  bool has_momentum;
  bool first_step;  // torch initialises the momentum buffer with the gradient itself
  bool nesterov;
  bool maximize;
};

// `steps_taken`: the parameter's step counter before this step.
AMPKIT_HOST_DEVICE SgdCoefficients sgd_coefficients(const SgdHyper& hyper, float lr, float steps_taken) {
  SgdCoefficients c;
  c.neg_lr = static_cast<float>(-static_cast<double>(lr));
  c.momentum = static_cast<float>(hyper.momentum);
  c.one_minus_dampening = static_cast<float>(1.0 - hyper.dampening);
  c.weight_decay = static_cast<float>(hyper.weight_decay);
  c.has_momentum = hyper.momentum != 0.0;
  c.first_step = steps_taken == 0.0f;
  c.nesterov = hyper.nesterov;
  c.maximize = hyper.maximize;
  return c;
}

// Returns the new weight; `momentum_buffer` is updated in place when momentum is on.
AMPKIT_HOST_DEVICE float sgd_update(float param, float grad, float& momentum_buffer, const SgdCoefficients& c) {
  if (c.maximize) grad = -grad;
  if (c.weight_decay != 0.0f) grad = grad + c.weight_decay * param;
  if (c.has_momentum) {
    float buffer = grad;
    if (!c.first_step) {
      buffer = momentum_buffer * c.momentum;
      buffer = buffer + c.one_minus_dampening * grad;
    }
    momentum_buffer = buffer;
    grad = c.nesterov ? grad + c.momentum * buffer : buffer;
  }
  return param + c.neg_lr * grad;
}

// ---- Adam (L2 weight decay) and AdamW (decoupled weight decay) ----

struct AdamCoefficients {
  float lerp_weight;  // 1 - beta1
  float beta2;
  float one_minus_beta2;
  float eps;
  float weight_decay;           // Adam: added to the gradient
  float decay_factor;           // AdamW: 1 - lr * weight_decay
  float neg_step_size;          // -lr / (1 - beta1^step)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
  bool decoupled;
  bool maximize;
};

// `steps_taken`: the parameter's step counter before this step (this step is number steps_taken + 1).
AMPKIT_HOST_DEVICE AdamCoefficients adam_coefficients(const AdamHyper& hyper, float lr, float steps_taken) {
  const double step = static_cast<double>(steps_taken) + 1.0;
  const double learning_rate = static_cast<double>(lr);
  const double bias_correction1 = 1.0 - pow(hyper.beta1, step);
  const double bias_correction2 = 1.0 - pow(hyper.beta2, step);
  AdamCoefficients c;
  c.lerp_weight = static_cast<float>(1.0 - hyper.beta1);
  c.beta2 = static_cast<float>(hyper.beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - hyper.beta2);
  c.eps = static_cast<float>(hyper.eps);
  c.weight_decay = static_cast<float>(hyper.weight_decay);
  c.decay_factor = static_cast<float>(1.0 - learning_rate * hyper.weight_decay);
  c.neg_step_size = static_cast<float>(-(learning_rate / bias_correction1));
  c.bias_correction2_sqrt = static_cast<float>(sqrt(bias_correction2));
  c.decoupled = hyper.decoupled_weight_decay;
  c.maximize = hyper.maximize;
  return c;
}

// torch.lerp's formula: the branch keeps the result exact at both ends of the weight range.
AMPKIT_HOST_DEVICE float lerp(float self, float end, float weight) {
  return weight < 0.5f ? self + weight * (end - self) : end - (end - self) * (1.0f - weight);
}

// Returns the new weight; exp_avg and exp_avg_sq are updated in place.
AMPKIT_HOST_DEVICE float adam_update(float param, float grad, float& exp_avg, float& exp_avg_sq,
                                     const AdamCoefficients& c) {
  if (c.maximize) grad = -grad;
  if (c.weight_decay != 0.0f) {
    if (c.decoupled) {
      param = param * c.decay_factor;
    } else {
      grad = grad + c.weight_decay * param;
    }
  }
  exp_avg = lerp(exp_avg, grad, c.lerp_weight);
  exp_avg_sq = exp_avg_sq * c.beta2;
  exp_avg_sq = exp_avg_sq + c.one_minus_beta2 * grad * grad;
  const float denom = sqrtf(exp_avg_sq) / c.bias_correction2_sqrt + c.eps;
  return param + c.neg_step_size * exp_avg / denom;
}

}  // namespace optim_math
}  // namespace ampkit_kernels
