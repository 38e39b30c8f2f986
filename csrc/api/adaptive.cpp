// ampkit::AdaptivePrecision (ampkit/adaptive.h): device-side blame per step, decisions at update().
#include "ampkit/adaptive.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>

#include <algorithm>
#include <optional>
#include <utility>

namespace ampkit {

namespace detail {
// One training step's records: the wrapped layers in the order their forward ran, a non-finite flag
// per forward output (device), and a non-finite flag per layer's parameter gradients (device).
struct StepRecord {
  std::vector<size_t> forward_order;
  std::vector<at::Tensor> forward_flags;
  at::Tensor gradient_flags;  // bool [layers]
};

struct AdaptiveRecords {
  std::vector<size_t> forward_order;  // the step in progress
  std::vector<at::Tensor> forward_flags;
  std::vector<StepRecord> steps;  // since the last update()
};
}  // namespace detail

namespace {

std::string dtype_name(c10::ScalarType dtype) {
  return dtype == c10::kHalf ? "float16" : dtype == c10::kBFloat16 ? "bfloat16" : "float32";
}

// Flags of every step since the last update, read back in one transfer: per step, the blamed layer
// (first non-finite forward output, else first non-finite gradient) or nullopt.
std::vector<std::optional<size_t>> blamed_layers(const std::vector<detail::StepRecord>& steps) {
  std::vector<at::Tensor> flags;
  for (const auto& step : steps) {
    for (const auto& flag : step.forward_flags) flags.push_back(flag.reshape({1}));
    flags.push_back(step.gradient_flags.reshape({-1}));
  }
  std::vector<std::optional<size_t>> blamed;
  if (flags.empty()) return blamed;
  const at::Tensor host = at::cat(flags).to(at::kCPU, at::kBool);
  const bool* values = host.const_data_ptr<bool>();
  size_t at = 0;
  for (const auto& step : steps) {
    std::optional<size_t> culprit;
    for (size_t i = 0; i < step.forward_order.size(); ++i) {
      if (!culprit && values[at + i]) culprit = step.forward_order[i];
    }
    at += step.forward_order.size();
    const auto layers = static_cast<size_t>(step.gradient_flags.numel());
    for (size_t i = 0; i < layers && !culprit; ++i) {
      if (values[at + i]) culprit = i;
    }
    at += layers;
    blamed.push_back(culprit);
  }
  return blamed;
}

}  // namespace

bool PrecisionChange::operator==(const PrecisionChange& other) const {
  return step == other.step && target == other.target && from_dtype == other.from_dtype &&
         to_dtype == other.to_dtype && reason == other.reason;
}

std::ostream& operator<<(std::ostream& stream, const PrecisionChange& change) {
  return stream << "step " << change.step << ": " << change.target << " " << change.from_dtype << " -> "
                << change.to_dtype << " (" << change.reason << ")";
}

bool AdaptivePrecisionState::operator==(const AdaptivePrecisionState& other) const {
  return recent_blame == other.recent_blame && promoted_at == other.promoted_at && promotions == other.promotions &&
         clean_steps == other.clean_steps && changes == other.changes && frozen == other.frozen;
}

AdaptivePrecision::AdaptivePrecision(autocast::Policy policy, AdaptivePrecisionOptions options)
    : policy_(std::move(policy)), options_(options), records_(std::make_shared<detail::AdaptiveRecords>()) {
  TORCH_CHECK_VALUE(options_.window >= 1, "ampkit::AdaptivePrecision: window must be >= 1, got ", options_.window);
  TORCH_CHECK_VALUE(options_.promote_after >= 1 && options_.promote_after <= options_.window,
                    "ampkit::AdaptivePrecision: promote_after must be in [1, window = ", options_.window, "], got ",
                    options_.promote_after);
  TORCH_CHECK_VALUE(options_.demote_after >= 0, "ampkit::AdaptivePrecision: demote_after must be >= 0 (0: never), got ",
                    options_.demote_after);
}

size_t AdaptivePrecision::add_layer(const std::string& name, const std::shared_ptr<AdaptiveLayerImpl>& layer) {
  TORCH_CHECK_VALUE(!name.empty(), "ampkit::AdaptivePrecision::wrap: name must not be empty");
  TORCH_CHECK_VALUE(std::find(names_.begin(), names_.end(), name) == names_.end(),
                    "ampkit::AdaptivePrecision::wrap: a layer named '", name, "' is wrapped already");
  names_.push_back(name);
  layers_.push_back(layer);
  return names_.size() - 1;
}

std::vector<std::string> AdaptivePrecision::layer_names() const { return names_; }

std::unique_ptr<AutocastGuard> AdaptivePrecision::region() const { return std::make_unique<AutocastGuard>(policy_); }

void AdaptivePrecision::record_output(size_t layer, const at::Tensor& output) {
  // Only training forwards are blamed (evaluation passes have no backward to close their step).
  if (!at::GradMode::is_enabled() || !output.is_floating_point()) return;
  records_->forward_order.push_back(layer);
  records_->forward_flags.push_back(at::isfinite(output).all().logical_not());
}

void AdaptivePrecision::after_backward() {
  std::vector<at::Tensor> gradient_flags;
  std::optional<c10::Device> device;
  for (const auto& weak : layers_) {
    const auto layer = weak.lock();
    at::Tensor any_non_finite;
    if (layer) {
      for (const auto& parameter : layer->parameters()) {
        if (!parameter.grad().defined()) continue;
        const at::Tensor flag = at::isfinite(parameter.grad()).all().logical_not();
        any_non_finite = any_non_finite.defined() ? any_non_finite.logical_or(flag) : flag;
        device = flag.device();
      }
    }
    gradient_flags.push_back(any_non_finite);
  }
  if (!device && !records_->forward_flags.empty()) device = records_->forward_flags.front().device();
  const auto options = at::TensorOptions().dtype(at::kBool).device(device.value_or(c10::Device(c10::kCPU)));
  for (auto& flag : gradient_flags) {
    if (!flag.defined()) flag = at::zeros({}, options);
  }
  detail::StepRecord step;
  step.forward_order = std::move(records_->forward_order);
  step.forward_flags = std::move(records_->forward_flags);
  step.gradient_flags = gradient_flags.empty() ? at::zeros({0}, options) : at::stack(gradient_flags);
  records_->forward_order.clear();
  records_->forward_flags.clear();
  records_->steps.push_back(std::move(step));
}

std::vector<PrecisionChange> AdaptivePrecision::update(int64_t step) {
  TORCH_CHECK_VALUE(step >= 0, "ampkit::AdaptivePrecision::update: step must be >= 0, got ", step);
  const std::vector<std::optional<size_t>> blamed = blamed_layers(records_->steps);
  records_->steps.clear();
  std::vector<PrecisionChange> changes;
  if (state_.frozen) return changes;

  std::vector<std::string> window_blame;
  int64_t clean = 0;
  for (const auto& culprit : blamed) {
    if (!culprit) {
      ++clean;
      continue;
    }
    const std::string& name = names_[*culprit];
    if (std::find(window_blame.begin(), window_blame.end(), name) == window_blame.end()) window_blame.push_back(name);
  }
  state_.recent_blame.push_back(window_blame);
  while (static_cast<int64_t>(state_.recent_blame.size()) > options_.window) {
    state_.recent_blame.erase(state_.recent_blame.begin());
  }
  const std::string low = dtype_name(policy_.dtype());

  // Demotion first: a promoted layer that stayed clean long enough tries the low dtype again.
  if (options_.demote_after > 0) {
    for (auto it = state_.promoted_at.begin(); it != state_.promoted_at.end();) {
      const std::string name = it->first;
      int64_t& clean_steps = state_.clean_steps[name];
      clean_steps = blamed.size() == static_cast<size_t>(clean) ? clean_steps + clean : 0;
      const int64_t needed = options_.demote_after << std::min<int64_t>(state_.promotions[name] - 1, 30);
      if (clean_steps >= needed) {
        changes.push_back({step, name, "float32", low, "clean for " + std::to_string(clean_steps) + " steps"});
        state_.clean_steps.erase(name);
        it = state_.promoted_at.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& name : names_) {
    if (state_.promoted_at.count(name)) continue;
    const auto windows = std::count_if(state_.recent_blame.begin(), state_.recent_blame.end(), [&](const auto& w) {
      return std::find(w.begin(), w.end(), name) != w.end();
    });
    if (windows >= options_.promote_after) {
      state_.promoted_at[name] = step;
      state_.promotions[name] += 1;
      state_.clean_steps[name] = 0;
      changes.push_back({step, name, low, "float32",
                         "first non-finite output or gradient in " + std::to_string(windows) + " of the last " +
                             std::to_string(state_.recent_blame.size()) + " logging windows"});
      // Its blame is settled: later windows start from a clean slate for it.
      for (auto& w : state_.recent_blame) w.erase(std::remove(w.begin(), w.end(), name), w.end());
    }
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (const auto layer = layers_[i].lock()) layer->promoted_ = state_.promoted_at.count(names_[i]) > 0;
  }
  state_.changes.insert(state_.changes.end(), changes.begin(), changes.end());
  return changes;
}

void AdaptivePrecision::load_state_dict(const AdaptivePrecisionState& state) {
  auto known = [&](const std::string& name, const char* entry) {
    TORCH_CHECK_VALUE(std::find(names_.begin(), names_.end(), name) != names_.end(),
                      "ampkit::AdaptivePrecision::load_state_dict: ", entry, " names '", name,
                      "', which is not a wrapped layer");
  };
  for (const auto& window : state.recent_blame) {
    for (const auto& name : window) known(name, "recent_blame");
  }
  for (const auto* map : {&state.promoted_at, &state.promotions, &state.clean_steps}) {
    for (const auto& [name, value] : *map) {
      known(name, "a counter");
      TORCH_CHECK_VALUE(value >= 0, "ampkit::AdaptivePrecision::load_state_dict: the counter of '", name,
                        "' must be >= 0, got ", value);
    }
  }
  for (const auto& change : state.changes) known(change.target, "changes");
  state_ = state;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (const auto layer = layers_[i].lock()) layer->promoted_ = state_.promoted_at.count(names_[i]) > 0;
  }
}

at::Tensor AdaptiveLayerImpl::forward(const at::Tensor& input) {
  at::Tensor output;
  if (promoted_) {
    // FP32: autocast off inside, floating inputs widened (as a float32 per-module policy does).
    AutocastGuard guard(controller_->policy().device_type(), c10::kBFloat16, /*enabled=*/false);
    output = inner_.forward<at::Tensor>(input.is_floating_point() ? input.to(c10::kFloat) : input);
  } else {
    AutocastGuard guard(controller_->policy());
    output = inner_.forward<at::Tensor>(input);
  }
  controller_->record_output(index_, output);
  return output;
}

}  // namespace ampkit
