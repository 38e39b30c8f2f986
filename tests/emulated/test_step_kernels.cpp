// The optimizer steps (master SGD / Adam / AdamW with the step-counter advance) and the loss-scale
// update on the emulated device, compared bit for bit with ampkit's CPU kernels: both run the
// per-element formulas of optim_math.h in float with the same operation order, so every master
// weight, model copy, state element and step counter must be identical.
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
  configs.push_back({Optimizer::Adam, "Adam L2", {}, {0.9, 0.999, 1e-8, 0.01, false, false}});
  configs.push_back({Optimizer::Adam, "AdamW maximize", {}, {0.8, 0.99, 1e-6, 0.05, true, true}});
  return configs;
}

// One parameter list with everything a step reads and writes, on the CPU (the reference).
struct HostGroup {
  std::vector<at::Tensor> params, masters, grads, state0, state1, steps;
};

// The same on the emulated device; `state1` is empty for SGD, masters/state0 may be empty.
struct DeviceGroup {
  std::vector<DeviceTensor> params, masters, grads, state0, state1, steps;
};

std::vector<void*> pointers(const std::vector<DeviceTensor>& tensors, size_t count) {
  std::vector<void*> out(count, nullptr);
  for (size_t t = 0; t < tensors.size(); ++t) out[t] = tensors[t].data();
  return out;
}

HostGroup make_group(const std::vector<int64_t>& sizes, at::ScalarType param_dtype, bool with_masters, bool with_state0,
                     bool with_state1, uint64_t seed) {
  HostGroup group;
  for (size_t t = 0; t < sizes.size(); ++t) {
    const at::Tensor weights = varied_values(sizes[t], at::kFloat, seed + t);
    group.params.push_back(weights.to(param_dtype));
    if (with_masters) group.masters.push_back(weights.clone());
    if (with_state0) group.state0.push_back(varied_values(sizes[t], at::kFloat, seed + 100 + t, 0.1));
    if (with_state1) group.state1.push_back(varied_values(sizes[t], at::kFloat, seed + 200 + t, 0.01).abs());
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
  group.steps = to_device(host.steps, 3);
  return group;
}

std::vector<at::Tensor> make_grads(const std::vector<int64_t>& sizes, at::ScalarType dtype, uint64_t seed) {
  std::vector<at::Tensor> grads;
  // Loss-scaled gradients (scale 1024), unscaled by the step's inv_scale.
  for (size_t t = 0; t < sizes.size(); ++t) grads.push_back(varied_values(sizes[t], dtype, seed + t, 1024.0));
  return grads;
}

struct Scalars {
  float lr = 0.01f, inv_scale = 1.0f / 1024.0f, clip_coef = 0.5f, found_inf = 0.0f;
};

void step_on_cpu(const StepConfig& config, HostGroup& group, const std::vector<at::Tensor>& grads, const Scalars& s) {
  const at::Tensor lr = scalar_tensor(s.lr), inv = scalar_tensor(s.inv_scale), clip = scalar_tensor(s.clip_coef);
  const std::optional<at::Tensor> found = scalar_tensor(s.found_inf);
  if (config.optimizer == Optimizer::Sgd) {
    const kernels::SgdHyper& h = config.sgd;
    ampkit::master_sgd_step_(group.params, group.masters, grads, group.state0, group.steps, lr, inv, clip, found,
                             h.momentum, h.dampening, h.weight_decay, h.nesterov, h.maximize);
  } else {
    const kernels::AdamHyper& h = config.adam;
    ampkit::master_adam_step_(group.params, group.masters, grads, group.state0, group.state1, group.steps, lr, inv,
                              clip, found, h.beta1, h.beta2, h.eps, h.weight_decay, h.decoupled_weight_decay,
                              h.maximize);
  }
}

void step_on_device(const StepConfig& config, DeviceGroup& group, at::ScalarType param_dtype,
                    const std::vector<at::Tensor>& host_grads, const Scalars& s) {
  const std::vector<DeviceTensor> grads = to_device(host_grads, 5);
  const size_t count = group.params.size();
  kernels::TensorLists lists;
  lists.lists = {pointers(group.params, count), pointers(group.masters, count), pointers(grads, count),
                 pointers(group.state0, count)};
  if (config.optimizer == Optimizer::Adam) lists.lists.push_back(pointers(group.state1, count));
  lists.lists.push_back(pointers(group.steps, count));
  for (const DeviceTensor& param : group.params) lists.numels.push_back(param.numel());
  kernels::StepScalars scalars;
  scalars.lr = &s.lr;
  scalars.inv_scale = &s.inv_scale;
  scalars.clip_coef = &s.clip_coef;
  scalars.found_inf = &s.found_inf;
  const kernels::DType grad_dtype = kernel_dtype(host_grads.front().scalar_type());
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
  require_tensors_match("steps", expected.steps, actual.steps);
}

// Every byte the step could write, for the skipped-step check.
std::vector<at::Tensor> snapshot(const DeviceGroup& group) {
  std::vector<at::Tensor> out;
  for (const auto* list : {&group.params, &group.masters, &group.state0, &group.state1, &group.steps}) {
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

// Three steps (the first initialises SGD's momentum buffer), then a skipped one.
void run_steps(const StepConfig& config, at::ScalarType param_dtype, at::ScalarType grad_dtype, bool with_masters,
               const std::vector<int64_t>& sizes) {
  const bool sgd = config.optimizer == Optimizer::Sgd;
  const bool with_state0 = !sgd || config.sgd.momentum != 0.0;
  HostGroup host = make_group(sizes, param_dtype, with_masters, with_state0, !sgd, 1000);
  DeviceGroup device = copy_to_device(host);
  Scalars scalars;
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step);
    const std::vector<at::Tensor> grads = make_grads(sizes, grad_dtype, 2000 + 100 * static_cast<uint64_t>(step));
    step_on_cpu(config, host, grads, scalars);
    step_on_device(config, device, param_dtype, grads, scalars);
    require_group_matches(host, device);
  }
  // found_inf != 0: nothing at all changes, step counters included.
  Scalars skipped = scalars;
  skipped.found_inf = 1.0f;
  const std::vector<at::Tensor> before = snapshot(device);
  std::vector<at::Tensor> bad_grads = make_grads(sizes, grad_dtype, 9000);
  bad_grads.front()[0] = std::numeric_limits<float>::infinity();
  step_on_device(config, device, param_dtype, bad_grads, skipped);
  require_bytes_equal(before, snapshot(device));
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

// The optimizer kernels share no memory between threads, so only a bug that lets two blocks or
// threads write one element could depend on the order: each configuration once per order.
TEST_CASE("emulated master steps: the same bits under every thread order", "[emulated][optim]") {
  for (const StepConfig& config : step_configs()) {
    INFO(config.name);
    for_each_thread_order([&] {
      run_steps(config, at::kBFloat16, at::kHalf, true, step_sizes());
      run_steps(config, at::kFloat, at::kFloat, false, step_sizes());
    });
  }
}

// More tensors than one launch table holds (30 with SGD's five lists, 32 with Adam's six), and
// step counters over more than one table of their own (110 per table): 120 parameters.
TEST_CASE("emulated master steps and step-counter advance across launch tables: every counter once per step, none on "
          "a skipped step",
          "[emulated][optim][steps][tables]") {
  std::vector<int64_t> sizes = {65536 + 6};
  for (int t = 0; t < 119; ++t) sizes.push_back(1 + t % 9);
  for (const StepConfig& config : {step_configs()[1], step_configs()[4]}) {
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
  lists.lists.assign(4, {});  // Adam needs six lists
  REQUIRE(kernels::master_adam_step(lists, kernels::DType::Float32, kernels::DType::Float32, scalars, {}, nullptr)
              .status == kernels::Status::InvalidArgument);
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
