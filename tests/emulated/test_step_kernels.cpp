// The optimizer steps (master SGD / Adam / AdamW, amsgrad, with the step-counter advance and the
// gradient write-back) and the loss-scale update on the emulated device, compared bit for bit with
// ampkit's CPU kernels: both run the per-element formulas of optim_math.h in the same compute type
// (float; double for float64 params) with the same operation order, so every master weight, model
// copy, state element, gradient and step counter must be identical. The float64 path is also
// checked against torch.optim's arithmetic written with plain torch ops in double.
#include <cfloat>
#include <cmath>
#include <limits>

#include "ampkit/loss_scaling.h"
#include "ampkit/optim.h"
#include "ampkit_kernels/loss_scaling.h"
#include "ampkit_kernels/optim.h"
#include "emulated_test_helpers.h"

namespace {

using namespace emulated_test;

enum class Optimizer { Sgd, Adam };

struct StepConfig {
  Optimizer optimizer;
  const char* name;
  kernels::SgdHyper sgd;
  kernels::AdamHyper adam;
};

std::vector<StepConfig> step_configs() {
  std::vector<StepConfig> configs;
  configs.push_back({Optimizer::Sgd, "SGD plain", {0.0, 0.0, 0.0, false, false}, {}});
  configs.push_back({Optimizer::Sgd, "SGD momentum+dampening+wd", {0.9, 0.1, 0.01, false, false}, {}});
  configs.push_back({Optimizer::Sgd, "SGD nesterov maximize", {0.9, 0.0, 0.0, true, true}, {}});
  configs.push_back({Optimizer::Adam, "Adam L2", {}, {0.9, 0.999, 1e-8, 0.01, false, false, false}});
  configs.push_back({Optimizer::Adam, "AdamW maximize", {}, {0.8, 0.99, 1e-6, 0.05, true, true, false}});
  configs.push_back({Optimizer::Adam, "Adam amsgrad L2", {}, {0.9, 0.999, 1e-8, 0.01, false, false, true}});
  configs.push_back({Optimizer::Adam, "AdamW amsgrad maximize", {}, {0.8, 0.99, 1e-6, 0.05, true, true, true}});
  return configs;
}

bool is_amsgrad(const StepConfig& config) { return config.optimizer == Optimizer::Adam && config.adam.amsgrad; }

// One parameter list with everything a step reads and writes, on the CPU (the reference).
// state2 (max_exp_avg_sq) is used by amsgrad only.
struct HostGroup {
  std::vector<at::Tensor> params, masters, grads, state0, state1, state2, steps;
};

// The same on the emulated device; `state1` is empty for SGD, masters/state0/state2 may be empty.
struct DeviceGroup {
  std::vector<DeviceTensor> params, masters, grads, state0, state1, state2, steps;
};

std::vector<void*> pointers(const std::vector<DeviceTensor>& tensors, size_t count) {
  std::vector<void*> out(count, nullptr);
  for (size_t t = 0; t < tensors.size(); ++t) out[t] = tensors[t].data();
  return out;
}

// float64 params keep float64 state; the others FP32.
at::ScalarType state_dtype(at::ScalarType param_dtype) { return param_dtype == at::kDouble ? at::kDouble : at::kFloat; }

HostGroup make_group(const std::vector<int64_t>& sizes, at::ScalarType param_dtype, bool with_masters, bool with_state0,
                     bool with_state1, bool with_state2, uint64_t seed) {
  HostGroup group;
  const at::ScalarType state = state_dtype(param_dtype);
  for (size_t t = 0; t < sizes.size(); ++t) {
    const at::Tensor weights = varied_values(sizes[t], state, seed + t);
    group.params.push_back(weights.to(param_dtype));
    if (with_masters) group.masters.push_back(weights.clone());
    if (with_state0) group.state0.push_back(varied_values(sizes[t], state, seed + 100 + t, 0.1));
    if (with_state1) group.state1.push_back(varied_values(sizes[t], state, seed + 200 + t, 0.01).abs());
    // Around exp_avg_sq's magnitude, so the running max takes either side.
    if (with_state2) group.state2.push_back(varied_values(sizes[t], state, seed + 300 + t, 0.01).abs());
    group.steps.push_back(scalar_tensor(0.0f));
  }
  return group;
}

DeviceGroup copy_to_device(const HostGroup& host) {
  DeviceGroup group;
  group.params = to_device(host.params);
  group.masters = to_device(host.masters);
  group.state0 = to_device(host.state0);
  group.state1 = to_device(host.state1);
  group.state2 = to_device(host.state2, 1);
  group.steps = to_device(host.steps, 3);
  return group;
}

std::vector<at::Tensor> make_grads(const std::vector<int64_t>& sizes, at::ScalarType dtype, uint64_t seed) {
  std::vector<at::Tensor> grads;
  // Loss-scaled gradients (scale 1024), unscaled by the step's inv_scale.
  for (size_t t = 0; t < sizes.size(); ++t) grads.push_back(varied_values(sizes[t], dtype, seed + t, 1024.0));
  return grads;
}

std::vector<at::Tensor> clones(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& tensor : tensors) out.push_back(tensor.clone());
  return out;
}

struct Scalars {
  float lr = 0.01f, inv_scale = 1.0f / 1024.0f, clip_coef = 0.5f, found_inf = 0.0f;
  double lr_fp64 = 0.01;  // the lr of float64 params (a double, as torch's Python float)
  bool write_back_grads = false;
};

// `grads` are written (unscaled and clipped) when s.write_back_grads.
void step_on_cpu(const StepConfig& config, HostGroup& group, at::ScalarType param_dtype,
                 const std::vector<at::Tensor>& grads, const Scalars& s) {
  const at::Tensor lr = param_dtype == at::kDouble ? at::full({1}, s.lr_fp64, at::kDouble) : scalar_tensor(s.lr);
  const at::Tensor inv = scalar_tensor(s.inv_scale), clip = scalar_tensor(s.clip_coef);
  const std::optional<at::Tensor> found = scalar_tensor(s.found_inf);
  if (config.optimizer == Optimizer::Sgd) {
    const kernels::SgdHyper& h = config.sgd;
    ampkit::master_sgd_step_(group.params, group.masters, grads, group.state0, group.steps, lr, inv, clip, found,
                             h.momentum, h.dampening, h.weight_decay, h.nesterov, h.maximize, s.write_back_grads);
  } else {
    const kernels::AdamHyper& h = config.adam;
    ampkit::master_adam_step_(group.params, group.masters, grads, group.state0, group.state1, group.state2,
                              group.steps, lr, inv, clip, found, h.beta1, h.beta2, h.eps, h.weight_decay,
                              h.decoupled_weight_decay, h.maximize, s.write_back_grads);
  }
}

void step_on_device(const StepConfig& config, DeviceGroup& group, at::ScalarType param_dtype,
                    const std::vector<DeviceTensor>& grads, const Scalars& s) {
  const size_t count = group.params.size();
  kernels::TensorLists lists;
  lists.lists = {pointers(group.params, count), pointers(group.masters, count), pointers(grads, count),
                 pointers(group.state0, count)};
  if (config.optimizer == Optimizer::Adam) {
    lists.lists.push_back(pointers(group.state1, count));
    lists.lists.push_back(pointers(group.state2, count));
  }
  lists.lists.push_back(pointers(group.steps, count));
  for (const DeviceTensor& param : group.params) lists.numels.push_back(param.numel());
  kernels::StepScalars scalars;
  if (param_dtype == at::kDouble) {
    scalars.lr_fp64 = &s.lr_fp64;
  } else {
    scalars.lr = &s.lr;
  }
  scalars.inv_scale = &s.inv_scale;
  scalars.clip_coef = &s.clip_coef;
  scalars.found_inf = &s.found_inf;
  scalars.write_back_grads = s.write_back_grads;
  const kernels::DType grad_dtype = kernel_dtype(grads.front().dtype());
  const kernels::DType model_dtype = kernel_dtype(param_dtype);
  if (config.optimizer == Optimizer::Sgd) {
    require_ok(kernels::master_sgd_step(lists, model_dtype, grad_dtype, scalars, config.sgd, nullptr));
  } else {
    require_ok(kernels::master_adam_step(lists, model_dtype, grad_dtype, scalars, config.adam, nullptr));
  }
}

void require_group_matches(const HostGroup& expected, const DeviceGroup& actual) {
  require_tensors_match("params", expected.params, actual.params);
  require_tensors_match("masters", expected.masters, actual.masters);
  require_tensors_match("state0", expected.state0, actual.state0);
  require_tensors_match("state1", expected.state1, actual.state1);
  require_tensors_match("state2", expected.state2, actual.state2);
  require_tensors_match("steps", expected.steps, actual.steps);
}

// Every byte the step could write but the gradients, for the skipped-step check.
std::vector<at::Tensor> snapshot(const DeviceGroup& group) {
  std::vector<at::Tensor> out;
  for (const auto* list : {&group.params, &group.masters, &group.state0, &group.state1, &group.state2, &group.steps}) {
    for (const DeviceTensor& tensor : *list) out.push_back(tensor.to_cpu());
  }
  return out;
}

void require_bytes_equal(const std::vector<at::Tensor>& before, const std::vector<at::Tensor>& after) {
  REQUIRE(before.size() == after.size());
  for (size_t i = 0; i < before.size(); ++i) {
    INFO("tensor " << i);
    REQUIRE(same_bytes(before[i], after[i]));
  }
}

// Three steps (the first initialises SGD's momentum buffer), then a skipped one. With
// write_back_grads the device's gradients must equal the CPU kernel's after every step, the
// skipped one included (there they are the only thing that changes).
void run_steps(const StepConfig& config, at::ScalarType param_dtype, at::ScalarType grad_dtype, bool with_masters,
               const std::vector<int64_t>& sizes, bool write_back_grads = false) {
  const bool sgd = config.optimizer == Optimizer::Sgd;
  const bool with_state0 = !sgd || config.sgd.momentum != 0.0;
  HostGroup host = make_group(sizes, param_dtype, with_masters, with_state0, !sgd, is_amsgrad(config), 1000);
  DeviceGroup device = copy_to_device(host);
  Scalars scalars;
  scalars.write_back_grads = write_back_grads;
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step);
    const std::vector<at::Tensor> grads = make_grads(sizes, grad_dtype, 2000 + 100 * static_cast<uint64_t>(step));
    const std::vector<at::Tensor> host_grads = clones(grads);
    const std::vector<DeviceTensor> device_grads = to_device(grads, 5);
    step_on_cpu(config, host, param_dtype, host_grads, scalars);
    step_on_device(config, device, param_dtype, device_grads, scalars);
    require_group_matches(host, device);
    require_tensors_match("grads", write_back_grads ? host_grads : grads, device_grads);
  }
  // found_inf != 0: nothing at all changes, step counters included; only the grads are unscaled
  // when write_back_grads (what torch's GradScaler.unscale_ leaves before it skips the step).
  Scalars skipped = scalars;
  skipped.found_inf = 1.0f;
  const std::vector<at::Tensor> before = snapshot(device);
  std::vector<at::Tensor> bad_grads = make_grads(sizes, grad_dtype, 9000);
  bad_grads.front()[0] = std::numeric_limits<float>::infinity();
  const std::vector<at::Tensor> host_grads = clones(bad_grads);
  const std::vector<DeviceTensor> device_grads = to_device(bad_grads, 5);
  step_on_cpu(config, host, param_dtype, host_grads, skipped);
  step_on_device(config, device, param_dtype, device_grads, skipped);
  require_bytes_equal(before, snapshot(device));
  require_group_matches(host, device);
  require_tensors_match("grads of the skipped step", write_back_grads ? host_grads : bad_grads, device_grads);
  if (write_back_grads) {
    // The unscaled value, rounded once to the gradient's dtype (inf stays inf).
    for (size_t t = 0; t < sizes.size(); ++t) {
      const at::ScalarType compute = grad_dtype == at::kDouble ? at::kDouble : at::kFloat;
      const at::Tensor expected =
          (bad_grads[t].to(compute) * static_cast<double>(skipped.inv_scale) * static_cast<double>(skipped.clip_coef))
              .to(grad_dtype);
      INFO("grads[" << t << "]");
      REQUIRE_SAME_BITS(expected, device_grads[t].to_cpu());
    }
  }
}

// Sizes: a two-chunk tensor, every tail below a vector (4 elements) and single elements; the
// tensors sit at base offsets 0..7 in turn (aligned and misaligned vector paths).
const std::vector<int64_t>& step_sizes() {
  static const std::vector<int64_t> sizes = {65536 + 6, 1, 2, 3, 64, 65, 66, 67};
  return sizes;
}

TEST_CASE("emulated master SGD/Adam/AdamW steps match the CPU kernels bit for bit: every param and grad dtype",
          "[emulated][optim]") {
  for (const StepConfig& config : step_configs()) {
    for (const at::ScalarType param_dtype : float_dtypes()) {
      for (const at::ScalarType grad_dtype : float_dtypes()) {
        for (const bool with_masters : {true, false}) {
          INFO(config.name << ", params " << c10::toString(param_dtype) << ", grads " << c10::toString(grad_dtype)
                           << (with_masters ? ", FP32 masters" : ", no masters"));
          run_steps(config, param_dtype, grad_dtype, with_masters, step_sizes());
          require_no_findings();
        }
      }
    }
  }
}

TEST_CASE("emulated master steps write the unscaled, clipped grads back like the CPU kernels, skipped steps included",
          "[emulated][optim][write_back_grads]") {
  for (const StepConfig& config : step_configs()) {
    for (const at::ScalarType grad_dtype : float_dtypes()) {
      INFO(config.name << ", grads " << c10::toString(grad_dtype));
      run_steps(config, at::kBFloat16, grad_dtype, true, step_sizes(), /*write_back_grads=*/true);
      run_steps(config, at::kFloat, grad_dtype, false, step_sizes(), /*write_back_grads=*/true);
      require_no_findings();
    }
    INFO(config.name << ", float64");
    run_steps(config, at::kDouble, at::kDouble, false, step_sizes(), /*write_back_grads=*/true);
    require_no_findings();
  }
}

TEST_CASE("emulated master steps on float64 params (double math, float64 state) match the CPU kernels bit for bit",
          "[emulated][optim][float64]") {
  for (const StepConfig& config : step_configs()) {
    INFO(config.name);
    run_steps(config, at::kDouble, at::kDouble, false, step_sizes());
    require_no_findings();
  }
}

// ---- float64 against plain torch ops in double: torch.optim's single-tensor SGD/Adam/AdamW ----

// One torch.optim.SGD step (_single_tensor_sgd) on double tensors; `buffer` undefined on step 1.
void torch_sgd_step(at::Tensor& param, at::Tensor grad, at::Tensor& buffer, const kernels::SgdHyper& h, double lr) {
  if (h.maximize) grad = -grad;
  if (h.weight_decay != 0) grad = grad.add(param, h.weight_decay);
  if (h.momentum != 0) {
    if (!buffer.defined()) {
      buffer = grad.clone();
    } else {
      buffer.mul_(h.momentum).add_(grad, 1 - h.dampening);
    }
    grad = h.nesterov ? grad.add(buffer, h.momentum) : buffer;
  }
  param.add_(grad, -lr);
}

// One torch.optim.Adam/AdamW step (_single_tensor_adam, not capturable) on double tensors.
void torch_adam_step(at::Tensor& param, at::Tensor grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                     at::Tensor& max_exp_avg_sq, int step, const kernels::AdamHyper& h, double lr) {
  if (h.maximize) grad = -grad;
  if (h.weight_decay != 0) {
    if (h.decoupled_weight_decay) {
      param.mul_(1 - lr * h.weight_decay);
    } else {
      grad = grad.add(param, h.weight_decay);
    }
  }
  exp_avg.lerp_(grad, 1 - h.beta1);
  exp_avg_sq.mul_(h.beta2).addcmul_(grad, grad, 1 - h.beta2);
  const double bias_correction1 = 1 - std::pow(h.beta1, step);
  const double bias_correction2 = 1 - std::pow(h.beta2, step);
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);
  at::Tensor denom;
  if (h.amsgrad) {
    at::maximum_out(max_exp_avg_sq, max_exp_avg_sq, exp_avg_sq);
    denom = (max_exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(h.eps);
  } else {
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(h.eps);
  }
  param.addcdiv_(exp_avg, denom, -step_size);
}

// |actual - expected| <= 1e-12 * max|expected| over each tensor: torch's vectorised double kernels
// may fuse multiply-adds where the kernel rounds twice, a few double ulps of the largest element
// per step; a wrong formula or coefficient is many orders of magnitude above it.
void require_close_fp64(const char* what, const at::Tensor& expected, const at::Tensor& actual) {
  INFO(what);
  REQUIRE(actual.scalar_type() == at::kDouble);
  const double scale = expected.abs().max().item<double>();
  const double error = (actual - expected).abs().max().item<double>();
  INFO("max error " << error << " at scale " << scale);
  REQUIRE(error <= 1e-12 * scale);
}

TEST_CASE("emulated float64 steps follow torch.optim's double arithmetic (plain torch ops in double)",
          "[emulated][optim][float64]") {
  const std::vector<int64_t> sizes = {65536 + 6, 3, 67};
  for (const StepConfig& config : step_configs()) {
    INFO(config.name);
    const bool sgd = config.optimizer == Optimizer::Sgd;
    const bool with_state0 = !sgd || config.sgd.momentum != 0.0;
    // Torch starts from zero state; so does the device here.
    HostGroup reference = make_group(sizes, at::kDouble, false, false, false, false, 1000);
    std::vector<at::Tensor> exp_avg, exp_avg_sq, max_sq, buffers(sizes.size());
    DeviceGroup device;
    device.params = to_device(reference.params);
    device.steps = to_device(reference.steps, 3);
    std::vector<at::Tensor> zeros;
    for (const int64_t size : sizes) zeros.push_back(at::zeros({size}, at::kDouble));
    if (with_state0) device.state0 = to_device(zeros);
    if (!sgd) {
      device.state1 = to_device(zeros);
      if (config.adam.amsgrad) device.state2 = to_device(zeros, 1);
      for (size_t t = 0; t < sizes.size(); ++t) {
        exp_avg.push_back(zeros[t].clone());
        exp_avg_sq.push_back(zeros[t].clone());
        max_sq.push_back(zeros[t].clone());
      }
    }
    Scalars scalars;
    scalars.inv_scale = 1.0f;
    scalars.clip_coef = 1.0f;
    scalars.lr_fp64 = 0.01;
    for (int step = 1; step <= 5; ++step) {
      const std::vector<at::Tensor> grads = make_grads(sizes, at::kDouble, 3000 + 10 * static_cast<uint64_t>(step));
      for (size_t t = 0; t < sizes.size(); ++t) {
        const at::Tensor grad = grads[t] / 1024.0;
        if (sgd) {
          torch_sgd_step(reference.params[t], grad, buffers[t], config.sgd, scalars.lr_fp64);
        } else {
          torch_adam_step(reference.params[t], grad, exp_avg[t], exp_avg_sq[t], max_sq[t], step, config.adam,
                          scalars.lr_fp64);
        }
      }
      std::vector<at::Tensor> unscaled;
      for (const at::Tensor& grad : grads) unscaled.push_back(grad / 1024.0);
      step_on_device(config, device, at::kDouble, to_device(unscaled, 5), scalars);
    }
    for (size_t t = 0; t < sizes.size(); ++t) {
      INFO("params[" << t << "]");
      require_close_fp64("param", reference.params[t], device.params[t].to_cpu());
      if (sgd && with_state0) require_close_fp64("momentum_buffer", buffers[t], device.state0[t].to_cpu());
      if (!sgd) {
        require_close_fp64("exp_avg", exp_avg[t], device.state0[t].to_cpu());
        require_close_fp64("exp_avg_sq", exp_avg_sq[t], device.state1[t].to_cpu());
        if (config.adam.amsgrad) require_close_fp64("max_exp_avg_sq", max_sq[t], device.state2[t].to_cpu());
      }
      REQUIRE(device.steps[t].to_cpu().item<float>() == 5.0f);
    }
    require_no_findings();
  }
}

// The optimizer kernels share no memory between threads, so only a bug that lets two blocks or
// threads write one element could depend on the order: each configuration once per order.
TEST_CASE("emulated master steps: the same bits under every thread order", "[emulated][optim]") {
  for (const StepConfig& config : step_configs()) {
    INFO(config.name);
    for_each_thread_order([&] {
      run_steps(config, at::kBFloat16, at::kHalf, true, step_sizes(), /*write_back_grads=*/true);
      run_steps(config, at::kFloat, at::kFloat, false, step_sizes());
      run_steps(config, at::kDouble, at::kDouble, false, step_sizes());
    });
  }
}

// More tensors than one launch table holds (30 with SGD's five lists, 32 with Adam's seven), and
// step counters over more than one table of their own (110 per table): 120 parameters.
TEST_CASE("emulated master steps and step-counter advance across launch tables: every counter once per step, none on "
          "a skipped step",
          "[emulated][optim][steps][tables]") {
  std::vector<int64_t> sizes = {65536 + 6};
  for (int t = 0; t < 119; ++t) sizes.push_back(1 + t % 9);
  for (const StepConfig& config : {step_configs()[1], step_configs()[4], step_configs()[6]}) {
    INFO(config.name);
    for_each_thread_order([&] { run_steps(config, at::kBFloat16, at::kBFloat16, true, sizes); });
  }
}

TEST_CASE("emulated optimizer entry points refuse bad arguments", "[emulated][optim][bad_input]") {
  kernels::TensorLists lists;
  lists.lists.assign(5, {});
  kernels::StepScalars missing;  // lr, inv_scale, clip_coef null
  REQUIRE(kernels::master_sgd_step(lists, kernels::DType::Float32, kernels::DType::Float32, missing, {}, nullptr)
              .status == kernels::Status::InvalidArgument);
  const float one = 1.0f;
  kernels::StepScalars scalars;
  scalars.lr = scalars.inv_scale = scalars.clip_coef = &one;
  lists.lists.assign(6, {});  // Adam needs seven lists
  REQUIRE(kernels::master_adam_step(lists, kernels::DType::Float32, kernels::DType::Float32, scalars, {}, nullptr)
              .status == kernels::Status::InvalidArgument);
  lists.lists.assign(7, {});
  const double lr_fp64 = 1.0;
  kernels::StepScalars both_lrs = scalars;  // lr and lr_fp64: exactly one must be set
  both_lrs.lr_fp64 = &lr_fp64;
  REQUIRE(kernels::master_adam_step(lists, kernels::DType::Float64, kernels::DType::Float64, both_lrs, {}, nullptr)
              .status == kernels::Status::InvalidArgument);
  // float64 params compute in double from float64 grads only.
  REQUIRE(kernels::master_adam_step(lists, kernels::DType::Float64, kernels::DType::Float32, scalars, {}, nullptr)
              .status == kernels::Status::Unsupported);
  lists.lists.assign(5, {});
  REQUIRE(kernels::master_sgd_step(lists, kernels::DType::Float16, kernels::DType::Float64, scalars, {}, nullptr)
              .status == kernels::Status::Unsupported);
  require_no_findings();
}

// ---------------------------------------------------------------------------------------------
// update_scale

struct ScaleState {
  float scale;
  int32_t growth;
  int32_t hysteresis;
};

TEST_CASE("emulated update_scale follows the CPU kernel step for step", "[emulated][update_scale]") {
  struct Config {
    const char* name;
    kernels::ScaleUpdateConfig config;
    float initial;
  };
  const double no_max = std::numeric_limits<double>::infinity();
  const std::vector<Config> configs = {
      {"torch defaults", {2.0, 0.5, 2000, 1, 0.0, no_max}, 65536.0f},
      {"short interval", {2.0, 0.5, 3, 1, 0.0, no_max}, 65536.0f},
      {"hysteresis 3", {2.0, 0.5, 2, 3, 0.0, no_max}, 1024.0f},
      {"min and max scale", {4.0, 0.25, 1, 2, 128.0, 4096.0}, 1024.0f},
      {"growth to FLT_MAX", {2.0, 0.5, 1, 1, 0.0, no_max}, FLT_MAX / 4.0f},
      {"back-off to the smallest float", {2.0, 0.5, 1000, 1, 0.0, no_max}, 1e-44f},
      {"odd factors", {1.7, 0.3, 2, 2, 0.0, 1e30}, 3.0f},
  };
  // 0: clean step, 1: overflow. Runs, alternations and long runs of both.
  const std::vector<int> pattern = {0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1,
                                    0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  for (const Config& c : configs) {
    INFO(c.name);
    const at::Tensor scale = scalar_tensor(c.initial);
    const at::Tensor growth = at::zeros({1}, at::kInt), hysteresis = at::zeros({1}, at::kInt);
    ScaleState device{c.initial, 0, 0};
    for (size_t step = 0; step < pattern.size(); ++step) {
      INFO("step " << step);
      const float found = static_cast<float>(pattern[step]);
      ampkit::update_scale_(scale, growth, hysteresis, scalar_tensor(found), c.config.growth_factor,
                            c.config.backoff_factor, c.config.growth_interval, c.config.hysteresis,
                            c.config.min_scale, c.config.max_scale);
      require_ok(kernels::update_scale(&device.scale, &device.growth, &device.hysteresis, &found, c.config, nullptr));
      REQUIRE(std::memcmp(&device.scale, scale.const_data_ptr<float>(), sizeof(float)) == 0);
      REQUIRE(device.growth == growth.item<int32_t>());
      REQUIRE(device.hysteresis == hysteresis.item<int32_t>());
    }
  }
  float scale = 1.0f, found = 0.0f;
  int growth = 0, hysteresis = 0;
  REQUIRE(kernels::update_scale(&scale, &growth, &hysteresis, &found, {2.0, 0.5, 0, 1, 0.0, no_max}, nullptr).status ==
          kernels::Status::InvalidArgument);
  require_no_findings();
}

}  // namespace
