// ampkit::AdaptivePrecision (ampkit/adaptive.h): device-side records per step, decisions at update().
#include "ampkit/adaptive.h"

#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <utility>

namespace ampkit {

namespace detail {
// One training step's records: the wrapped layers in the order their forward ran with a non-finite
// flag per output, a flag per layer's own parameter gradients (when blame is gathered) and the loss.
struct StepRecord {
  std::vector<size_t> forward_order;
  std::vector<at::Tensor> forward_flags;
  at::Tensor gradient_flags;  // bool [layers], undefined when blame was off
  at::Tensor loss;            // undefined without a loss
};

// A sampled diagnostic step: the op kinds whose lower-precision outputs were watched, and a flag
// that is set for the first one that went non-finite.
struct OpSample {
  std::vector<std::string> ops;
  at::Tensor first_non_finite;  // bool [ops]
};

struct AdaptiveRecords {
  bool recording = false;  // a training region is open
  std::vector<size_t> forward_order;  // the step in progress
  std::vector<at::Tensor> forward_flags;
  std::vector<StepRecord> steps;  // since the last update()
  std::vector<at::Tensor> underflow;
  std::vector<OpSample> samples;
};
}  // namespace detail

namespace {

// Unscaled gradient values below fp16's smallest subnormal become 0 in fp16.
constexpr double kFp16SmallestSubnormal = 5.9604644775390625e-08;  // 2^-24
const char* const kModelTarget = "<model>";
const char* const kScaleTarget = "<loss scale>";
const char* const kOpPrefix = "op:";

std::string dtype_name(std::optional<c10::ScalarType> dtype) {
  if (!dtype) return "float32";
  return *dtype == c10::kHalf ? "float16" : *dtype == c10::kBFloat16 ? "bfloat16" : "float32";
}

// The dtype a name in a state stands for (nullopt: float32); false for an unknown name.
bool parse_dtype(const std::string& name, std::optional<c10::ScalarType>& dtype) {
  dtype.reset();
  if (name == "float16") dtype = c10::kHalf;
  if (name == "bfloat16") dtype = c10::kBFloat16;
  return dtype.has_value() || name == "float32";
}

bool bf16_supported(c10::DeviceType device_type) {
  // On CUDA: what torch's bf16 kernels need (compute capability 8.0+).
  return device_type != c10::kCUDA || at::detail::getCUDAHooks().supportsBFloat16ConvolutionWithCuDNNv8();
}

std::string percent(double fraction, int digits) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.*f%%", digits, 100.0 * fraction);
  return text;
}

template <typename Predicate>
int64_t count_windows(const std::vector<std::vector<std::string>>& windows, Predicate&& holds) {
  return std::count_if(windows.begin(), windows.end(), holds);
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

void push_window(std::vector<std::vector<std::string>>& windows, std::vector<std::string> window, int64_t keep) {
  windows.push_back(std::move(window));
  while (static_cast<int64_t>(windows.size()) > keep) windows.erase(windows.begin());
}

// Each wrapped layer's own parameters: a wrapped layer nested inside another keeps its parameters
// to itself.
std::vector<std::vector<at::Tensor>> own_parameters(const std::vector<std::weak_ptr<AdaptiveLayerImpl>>& layers) {
  std::vector<std::vector<at::Tensor>> owned(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto layer = layers[i].lock();
    if (!layer) continue;
    std::set<const c10::TensorImpl*> inner;
    for (const auto& module : layer->modules(/*include_self=*/false)) {
      if (dynamic_cast<AdaptiveLayerImpl*>(module.get()) == nullptr) continue;
      for (const auto& parameter : module->parameters()) inner.insert(parameter.unsafeGetTensorImpl());
    }
    for (const auto& parameter : layer->parameters()) {
      if (!inner.count(parameter.unsafeGetTensorImpl())) owned[i].push_back(parameter);
    }
  }
  return owned;
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

bool AdaptiveWindow::operator==(const AdaptiveWindow& other) const {
  return steps == other.steps && non_finite == other.non_finite && blame == other.blame &&
         loss_sum == other.loss_sum && loss_count == other.loss_count && underflow_sum == other.underflow_sum &&
         underflow_samples == other.underflow_samples && op_flags == other.op_flags;
}

bool AdaptivePrecisionState::operator==(const AdaptivePrecisionState& other) const {
  return recent_blame == other.recent_blame && promoted_at == other.promoted_at && promotions == other.promotions &&
         clean_steps == other.clean_steps && changes == other.changes && frozen == other.frozen &&
         active_dtype == other.active_dtype && warmup_done == other.warmup_done && denied_ops == other.denied_ops &&
         recent_op_blame == other.recent_op_blame && skip_streak == other.skip_streak &&
         underflow_streak == other.underflow_streak && previous_loss == other.previous_loss &&
         op_armed == other.op_armed && blaming == other.blaming && calls == other.calls &&
         overflow_events == other.overflow_events && window == other.window;
}

AdaptivePrecision::AdaptivePrecision(autocast::Policy policy, AdaptivePrecisionOptions options, GradScaler* scaler)
    : base_policy_(policy),
      policy_(policy),
      active_policy_(std::move(policy)),
      options_(options),
      scaler_(scaler),
      records_(std::make_shared<detail::AdaptiveRecords>()) {
  const char* where = "ampkit::AdaptivePrecision: ";
  TORCH_CHECK_VALUE(options_.window >= 1, where, "window must be >= 1, got ", options_.window);
  TORCH_CHECK_VALUE(options_.promote_after >= 1 && options_.promote_after <= options_.window, where,
                    "promote_after must be in [1, window = ", options_.window, "], got ", options_.promote_after);
  TORCH_CHECK_VALUE(options_.demote_after >= 0, where, "demote_after must be >= 0 (0: never), got ",
                    options_.demote_after);
  for (const auto& [name, value, minimum] :
       {std::tuple<const char*, int64_t, int64_t>{"warmup_steps", options_.warmup_steps, 0},
        {"warmup_epochs", options_.warmup_epochs, 0},
        {"fallback_windows", options_.fallback_windows, 1},
        {"underflow_windows", options_.underflow_windows, 1},
        {"sample_every", options_.sample_every, 1}}) {
    TORCH_CHECK_VALUE(value >= minimum, where, name, " must be >= ", minimum, ", got ", value);
  }
  for (const auto& [name, value] : {std::pair<const char*, double>{"warmup_loss_change", options_.warmup_loss_change},
                                    {"max_skip_rate", options_.max_skip_rate},
                                    {"underflow_threshold", options_.underflow_threshold}}) {
    TORCH_CHECK_VALUE(value == 0 || (value > 0 && value < 1), where, name, " must be in (0, 1), or 0 (off), got ",
                      value);
  }
  const bool warmup = options_.warmup_steps > 0 || options_.warmup_epochs > 0 || options_.warmup_loss_change > 0;
  if (!warmup) active_ = policy_.dtype();
  state_.warmup_done = !warmup;
  state_.blaming = options_.blame == BlameMode::kAlways;
  // The counter of overflowing iterations so far (a resumed scaler starts from its checkpoint).
  if (scaler_ != nullptr && scaler_->is_enabled()) state_.overflow_events = scaler_->overflow_events().item<int64_t>();
  apply_decisions();
}

size_t AdaptivePrecision::add_layer(const std::string& name, const std::shared_ptr<AdaptiveLayerImpl>& layer) {
  TORCH_CHECK_VALUE(!name.empty(), "ampkit::AdaptivePrecision::wrap: name must not be empty");
  TORCH_CHECK_VALUE(!contains(names_, name), "ampkit::AdaptivePrecision::wrap: a layer named '", name,
                    "' is wrapped already");
  names_.push_back(name);
  layers_.push_back(layer);
  return names_.size() - 1;
}

std::vector<std::string> AdaptivePrecision::layer_names() const { return names_; }

bool AdaptivePrecision::blaming() const {
  // Without a scaler nothing else counts gradient overflows on the device: blame every step.
  return state_.blaming || options_.blame == BlameMode::kAlways || scaler_ == nullptr || !scaler_->is_enabled();
}

AdaptiveRegion AdaptivePrecision::region() {
  const bool recording = at::GradMode::is_enabled();
  const bool sampling = recording && options_.ops && state_.op_armed && active_.has_value();
  if (sampling) state_.op_armed = false;
  return AdaptiveRegion(*this, active_policy_, active_.has_value(), recording, sampling);
}

AdaptiveRegion::AdaptiveRegion(AdaptivePrecision& controller, const autocast::Policy& policy, bool enabled,
                               bool recording, bool sampling)
    : controller_(controller), guard_(policy, enabled), recording_(recording) {
  if (sampling) watch_ = std::make_unique<autocast::OutputWatch>();
  if (recording_) controller_.set_recording(true);
}

AdaptiveRegion::~AdaptiveRegion() {
  if (recording_) controller_.set_recording(false);
  if (watch_) {
    const std::vector<autocast::OutputFlag> outputs = watch_->outputs();
    watch_.reset();
    controller_.close_sample(outputs);
  }
}

void AdaptivePrecision::set_recording(bool recording) { records_->recording = recording; }

void AdaptivePrecision::close_sample(const std::vector<autocast::OutputFlag>& outputs) {
  if (outputs.empty()) return;
  detail::OpSample sample;
  std::vector<at::Tensor> flags;
  for (const auto& output : outputs) {
    sample.ops.push_back(output.op);
    flags.push_back(output.non_finite.reshape({1}).to(outputs.front().non_finite.device()));
  }
  const at::Tensor non_finite = at::cat(flags);
  // Only the first op to go non-finite is blamed: later ones inherit its infs and NaNs.
  sample.first_non_finite = non_finite.logical_and(non_finite.to(at::kLong).cumsum(0).eq(1));
  records_->samples.push_back(std::move(sample));
}

void AdaptivePrecision::enter_layer(bool promoted, std::optional<AutocastGuard>& guard) const {
  if (!active_ || promoted) {
    guard.emplace(policy_, /*enabled=*/false);
  } else {
    guard.emplace(active_policy_);
  }
}

void AdaptivePrecision::record_output(size_t layer, const at::Tensor& output) {
  // Only training forwards in a training region are blamed (evaluation has no backward to close a step).
  if (!records_->recording || !blaming() || !at::GradMode::is_enabled() || !output.is_floating_point()) return;
  records_->forward_order.push_back(layer);
  records_->forward_flags.push_back(at::isfinite(output).all().logical_not());
}

void AdaptivePrecision::after_backward(const at::Tensor& loss) {
  TORCH_CHECK_VALUE(!loss.defined() || loss.numel() == 1,
                    "ampkit::AdaptivePrecision::after_backward: loss must be a one-element tensor, got shape ",
                    loss.sizes());
  const bool blame = blaming();
  const bool sample_underflow = options_.underflow_threshold > 0 && state_.calls % options_.sample_every == 0;
  // A clean step that samples nothing records only its loss: the layers' parameters are not walked.
  std::vector<std::vector<at::Tensor>> owned;
  std::optional<c10::Device> device;
  if (blame || sample_underflow) {
    owned = own_parameters(layers_);
    for (const auto& parameters : owned) {
      for (const auto& parameter : parameters) {
        if (parameter.grad().defined()) device = parameter.grad().device();
      }
    }
  }
  if (!device && loss.defined()) device = loss.device();
  const auto flag_options = at::TensorOptions().dtype(at::kBool).device(device.value_or(c10::Device(c10::kCPU)));

  detail::StepRecord step;
  if (blame) {
    std::vector<at::Tensor> gradient_flags;
    for (const auto& parameters : owned) {
      at::Tensor any_non_finite;
      for (const auto& parameter : parameters) {
        if (!parameter.grad().defined()) continue;
        const at::Tensor flag = at::isfinite(parameter.grad()).all().logical_not();
        any_non_finite = any_non_finite.defined() ? any_non_finite.logical_or(flag) : flag;
      }
      gradient_flags.push_back(any_non_finite.defined() ? any_non_finite : at::zeros({}, flag_options));
    }
    step.gradient_flags = gradient_flags.empty() ? at::zeros({0}, flag_options) : at::stack(gradient_flags);
  }
  step.forward_order = std::move(records_->forward_order);
  step.forward_flags = std::move(records_->forward_flags);
  records_->forward_order.clear();
  records_->forward_flags.clear();
  if (loss.defined()) step.loss = loss.detach().reshape({}).to(at::kDouble);
  records_->steps.push_back(std::move(step));

  if (sample_underflow && device) {
    // The share of gradient values that fp16 would flush to zero once unscaled (never changed here).
    at::Tensor inv_scale = at::ones({}, at::TensorOptions().dtype(at::kFloat).device(*device));
    if (scaler_ != nullptr && scaler_->is_enabled() && scaler_->scale_tensor().defined()) {
      inv_scale = scaler_->scale_tensor().to(*device, at::kDouble).reciprocal().to(at::kFloat);
    }
    at::Tensor tiny = at::zeros({}, at::TensorOptions().dtype(at::kLong).device(*device));
    int64_t total = 0;
    for (const auto& parameters : owned) {
      for (const auto& parameter : parameters) {
        if (!parameter.grad().defined()) continue;
        const at::Tensor grad = parameter.grad().detach().to(at::kFloat);
        tiny = tiny + grad.abs().mul(inv_scale).lt(kFp16SmallestSubnormal).logical_and(grad.ne(0)).sum();
        total += grad.numel();
      }
    }
    records_->underflow.push_back(tiny.to(at::kDouble) / static_cast<double>(std::max<int64_t>(total, 1)));
  }
  state_.calls += 1;
}

void AdaptivePrecision::digest() {
  auto& records = *records_;
  if (records.steps.empty() && records.underflow.empty() && records.samples.empty()) return;
  const bool count_overflows = !records.steps.empty() && scaler_ != nullptr && scaler_->is_enabled();
  std::vector<at::Tensor> parts;
  for (const auto& step : records.steps) {
    for (const auto& flag : step.forward_flags) parts.push_back(flag.reshape({1}));
    if (step.gradient_flags.defined()) parts.push_back(step.gradient_flags.reshape({-1}));
    if (step.loss.defined()) parts.push_back(step.loss.reshape({1}));
  }
  for (const auto& fraction : records.underflow) parts.push_back(fraction.reshape({1}));
  for (const auto& sample : records.samples) parts.push_back(sample.first_non_finite.reshape({-1}));
  if (count_overflows) parts.push_back(scaler_->overflow_events().reshape({1}));
  std::vector<double> values;
  if (!parts.empty()) {
    const c10::Device device = parts.front().device();
    for (auto& part : parts) part = part.to(device, at::kDouble);
    const at::Tensor host = at::cat(parts).to(at::kCPU);  // the one transfer
    values.assign(host.const_data_ptr<double>(), host.const_data_ptr<double>() + host.numel());
  }

  AdaptiveWindow& window = state_.window;
  size_t at = 0;
  int64_t flagged = 0;
  for (const auto& step : records.steps) {
    std::optional<size_t> culprit;
    bool non_finite = false;
    for (size_t i = 0; i < step.forward_order.size(); ++i, ++at) {
      if (values[at] != 0) {
        non_finite = true;
        if (!culprit) culprit = step.forward_order[i];
      }
    }
    const size_t gradient_layers = step.gradient_flags.defined() ? static_cast<size_t>(step.gradient_flags.numel()) : 0;
    for (size_t i = 0; i < gradient_layers; ++i, ++at) {
      if (values[at] != 0) {
        non_finite = true;
        if (!culprit) culprit = i;
      }
    }
    if (step.loss.defined()) {
      const double loss = values[at++];
      if (std::isfinite(loss)) {
        window.loss_sum += loss;
        window.loss_count += 1;
      } else {
        non_finite = true;  // a non-finite loss alone blames no layer
      }
    }
    window.steps += 1;
    flagged += non_finite;
    if (culprit) window.blame[names_[*culprit]] += 1;
  }
  for (size_t i = 0; i < records.underflow.size(); ++i, ++at) {
    window.underflow_sum += values[at];
    window.underflow_samples += 1;
  }
  for (const auto& sample : records.samples) {
    std::vector<std::string> first;
    for (size_t i = 0; i < sample.ops.size(); ++i, ++at) {
      if (values[at] != 0) first.push_back(sample.ops[i]);
    }
    window.op_flags.push_back(std::move(first));
  }
  int64_t overflowed = 0;
  if (count_overflows) {
    const auto total = static_cast<int64_t>(values[at++]);
    overflowed = total - state_.overflow_events;
    state_.overflow_events = total;
  }
  // A step is non-finite if its records say so or the scaler counted it.
  window.non_finite += std::max(flagged, overflowed);
  records.steps.clear();
  records.underflow.clear();
  records.samples.clear();
}

void AdaptivePrecision::change(std::vector<PrecisionChange>& changes, int64_t step, const std::string& target,
                               std::optional<c10::ScalarType> from, std::optional<c10::ScalarType> to,
                               const std::string& reason) {
  PrecisionChange change{step, target, dtype_name(from), dtype_name(to), reason};
  state_.changes.push_back(change);
  changes.push_back(std::move(change));
}

std::vector<PrecisionChange> AdaptivePrecision::update(int64_t step, std::optional<int64_t> epoch) {
  TORCH_CHECK_VALUE(step >= 0, "ampkit::AdaptivePrecision::update: step must be >= 0, got ", step);
  TORCH_CHECK_VALUE(!epoch || *epoch >= 0, "ampkit::AdaptivePrecision::update: epoch must be >= 0, got ",
                    epoch.value_or(0));
  digest();
  const AdaptiveWindow window = std::move(state_.window);
  state_.window = AdaptiveWindow{};
  std::vector<PrecisionChange> changes;
  if (window.steps == 0) return changes;
  // Blame for the next window: on after a non-finite step, off after a clean window.
  state_.blaming = options_.blame == BlameMode::kAlways || window.non_finite > 0;
  if (state_.frozen) return changes;

  if (window.non_finite > 0 && options_.ops) state_.op_armed = true;  // the next region is a sampled step
  std::optional<double> loss;
  if (window.loss_count > 0) loss = window.loss_sum / static_cast<double>(window.loss_count);
  if (!state_.warmup_done) {
    decide_warmup(step, epoch, loss, changes);
  } else {
    bool promoted = options_.layers && decide_layers(step, window, changes);
    if (options_.ops && !window.op_flags.empty()) promoted = decide_ops(step, window, changes) || promoted;
    decide_fallback(step, window, promoted, changes);
    decide_underflow(step, window, changes);
  }
  state_.previous_loss = loss;
  apply_decisions();
  return changes;
}

void AdaptivePrecision::decide_warmup(int64_t step, std::optional<int64_t> epoch, std::optional<double> loss,
                                      std::vector<PrecisionChange>& changes) {
  std::string reason;
  if (options_.warmup_steps > 0 && step >= options_.warmup_steps) {
    reason = "warm-up of " + std::to_string(options_.warmup_steps) + " steps done";
  } else if (options_.warmup_epochs > 0 && epoch && *epoch >= options_.warmup_epochs) {
    reason = "warm-up of " + std::to_string(options_.warmup_epochs) + " epochs done";
  } else if (options_.warmup_loss_change > 0 && loss && state_.previous_loss && *state_.previous_loss != 0) {
    const double relative = std::abs(*loss - *state_.previous_loss) / std::abs(*state_.previous_loss);
    if (relative < options_.warmup_loss_change) {
      reason = "loss changed by " + percent(relative, 2) + " < " + percent(options_.warmup_loss_change, 2) +
               " between logging windows";
    }
  }
  if (reason.empty()) return;
  state_.warmup_done = true;
  change(changes, step, kModelTarget, std::nullopt, policy_.dtype(), reason);
  active_ = policy_.dtype();
}

bool AdaptivePrecision::decide_layers(int64_t step, const AdaptiveWindow& window,
                                      std::vector<PrecisionChange>& changes) {
  std::vector<std::string> blamed;
  for (const auto& entry : window.blame) blamed.push_back(entry.first);
  push_window(state_.recent_blame, blamed, options_.window);

  // Demotion first: a promoted layer that stayed clean long enough tries the low dtype again.
  if (options_.demote_after > 0) {
    for (auto it = state_.promoted_at.begin(); it != state_.promoted_at.end();) {
      const std::string name = it->first;
      int64_t& clean_steps = state_.clean_steps[name];
      clean_steps = window.non_finite == 0 ? clean_steps + window.steps : 0;
      const int64_t needed = options_.demote_after << std::min<int64_t>(state_.promotions[name] - 1, 30);
      if (clean_steps >= needed) {
        change(changes, step, name, std::nullopt, active_, "clean for " + std::to_string(clean_steps) + " steps");
        state_.clean_steps.erase(name);
        it = state_.promoted_at.erase(it);
      } else {
        ++it;
      }
    }
  }
  bool promoted = false;
  for (const auto& name : names_) {
    if (state_.promoted_at.count(name)) continue;
    const int64_t windows =
        count_windows(state_.recent_blame, [&](const auto& w) { return contains(w, name); });
    if (windows < options_.promote_after) continue;
    state_.promoted_at[name] = step;
    state_.promotions[name] += 1;
    state_.clean_steps[name] = 0;
    change(changes, step, name, active_, std::nullopt,
           "first non-finite output or gradient in " + std::to_string(windows) + " of the last " +
               std::to_string(state_.recent_blame.size()) + " logging windows");
    // Its blame is settled: later windows start from a clean slate for it.
    for (auto& w : state_.recent_blame) w.erase(std::remove(w.begin(), w.end(), name), w.end());
    promoted = true;
  }
  return promoted;
}

bool AdaptivePrecision::decide_ops(int64_t step, const AdaptiveWindow& window, std::vector<PrecisionChange>& changes) {
  std::vector<std::string> blamed;
  for (const auto& first : window.op_flags) {
    for (const auto& op : first) {
      if (!contains(blamed, op)) blamed.push_back(op);
    }
  }
  std::sort(blamed.begin(), blamed.end());
  push_window(state_.recent_op_blame, blamed, options_.window);
  bool promoted = false;
  for (const auto& op : blamed) {
    if (contains(state_.denied_ops, op)) continue;
    const int64_t windows = count_windows(state_.recent_op_blame, [&](const auto& w) { return contains(w, op); });
    if (windows < options_.promote_after) continue;
    policy_ = policy_.deny({op});
    state_.denied_ops.push_back(op);
    change(changes, step, kOpPrefix + op, active_, std::nullopt,
           "first non-finite op output in " + std::to_string(windows) + " of the last " +
               std::to_string(state_.recent_op_blame.size()) + " sampled diagnostic steps");
    for (auto& w : state_.recent_op_blame) w.erase(std::remove(w.begin(), w.end(), op), w.end());
    promoted = true;
  }
  return promoted;
}

void AdaptivePrecision::decide_fallback(int64_t step, const AdaptiveWindow& window, bool promoted,
                                        std::vector<PrecisionChange>& changes) {
  if (options_.max_skip_rate <= 0 || !active_) return;
  const double rate = static_cast<double>(window.non_finite) / static_cast<double>(window.steps);
  if (promoted || rate <= options_.max_skip_rate) {
    state_.skip_streak = 0;
    return;
  }
  if (++state_.skip_streak < options_.fallback_windows) return;
  state_.skip_streak = 0;
  std::optional<c10::ScalarType> safer;
  if (*active_ == c10::kHalf && bf16_supported(policy_.device_type())) safer = c10::kBFloat16;
  const std::string reason = percent(rate, 0) + " of steps non-finite (> " + percent(options_.max_skip_rate, 0) +
                             ") for " + std::to_string(options_.fallback_windows) + " logging windows";
  TORCH_WARN("ampkit::AdaptivePrecision: ", reason, "; falling back from ", dtype_name(active_), " to ",
             dtype_name(safer));
  change(changes, step, kModelTarget, active_, safer, reason);
  active_ = safer;
}

void AdaptivePrecision::decide_underflow(int64_t step, const AdaptiveWindow& window,
                                         std::vector<PrecisionChange>& changes) {
  if (options_.underflow_threshold <= 0 || window.underflow_samples == 0 || active_ != c10::kHalf) return;
  const double fraction = window.underflow_sum / static_cast<double>(window.underflow_samples);
  if (fraction <= options_.underflow_threshold) {
    state_.underflow_streak = 0;
    return;
  }
  if (++state_.underflow_streak < options_.underflow_windows) return;
  state_.underflow_streak = 0;
  const std::string reason = percent(fraction, 1) + " of gradient values would flush to zero in float16 (> " +
                             percent(options_.underflow_threshold, 1) + ") for " +
                             std::to_string(options_.underflow_windows) + " logging windows";
  if (options_.prefer_bf16 && bf16_supported(policy_.device_type())) {
    change(changes, step, kModelTarget, active_, c10::kBFloat16, reason);
    active_ = c10::kBFloat16;
  } else if (scaler_ != nullptr && scaler_->is_enabled()) {
    const double floor = scaler_->get_scale();
    if (floor > scaler_->options().min_scale()) {
      scaler_->set_min_scale(floor);
      char text[64];
      std::snprintf(text, sizeof(text), "%g", floor);
      change(changes, step, kScaleTarget, active_, active_, reason + ": the loss scale's floor is raised to " + text);
    }
  }
}

void AdaptivePrecision::apply_decisions() {
  state_.active_dtype = dtype_name(active_);
  if (active_) {
    // Replaced only when it differs: a new policy object means new kernels at the next region.
    autocast::Policy wanted = policy_.with_dtype(*active_);
    if (wanted != active_policy_) active_policy_ = std::move(wanted);
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (const auto layer = layers_[i].lock()) layer->promoted_ = state_.promoted_at.count(names_[i]) > 0;
  }
}

AdaptivePrecisionState AdaptivePrecision::state_dict() {
  digest();
  return state_;
}

void AdaptivePrecision::load_state_dict(const AdaptivePrecisionState& state) {
  const char* where = "ampkit::AdaptivePrecision::load_state_dict: ";
  auto known = [&](const std::string& name, const char* entry) {
    TORCH_CHECK_VALUE(contains(names_, name), where, entry, " names '", name, "', which is not a wrapped layer");
  };
  auto counter = [&](const char* entry, int64_t value) {
    TORCH_CHECK_VALUE(value >= 0, where, entry, " must be >= 0, got ", value);
  };
  for (const auto& window : state.recent_blame) {
    for (const auto& name : window) known(name, "recent_blame");
  }
  for (const auto* map : {&state.promoted_at, &state.promotions, &state.clean_steps}) {
    for (const auto& [name, value] : *map) {
      known(name, "a counter");
      TORCH_CHECK_VALUE(value >= 0, where, "the counter of '", name, "' must be >= 0, got ", value);
    }
  }
  for (const auto& [name, value] : state.window.blame) {
    known(name, "window.blame");
    counter("window.blame", value);
  }
  for (const auto& change : state.changes) {
    const std::string& target = change.target;
    if (target != kModelTarget && target != kScaleTarget && target.rfind(kOpPrefix, 0) != 0) known(target, "changes");
  }
  std::optional<c10::ScalarType> active;
  TORCH_CHECK_VALUE(parse_dtype(state.active_dtype, active), where,
                    "active_dtype must be 'float16', 'bfloat16' or 'float32', got '", state.active_dtype, "'");
  autocast::Policy policy = base_policy_;
  if (!state.denied_ops.empty()) {
    try {
      policy = policy.deny(state.denied_ops);
    } catch (const c10::Error& error) {
      TORCH_CHECK_VALUE(false, where, "denied_ops cannot be denied by this policy: ", error.what_without_backtrace());
    }
  }
  for (const auto& window : state.recent_op_blame) {
    for (const auto& op : window) {
      TORCH_CHECK_VALUE(policy.list_of(op).has_value(), where, "recent_op_blame names '", op,
                        "', which is not in the policy's lists");
    }
  }
  for (const auto& [entry, value] :
       {std::pair<const char*, int64_t>{"skip_streak", state.skip_streak},
        {"underflow_streak", state.underflow_streak},
        {"calls", state.calls},
        {"overflow_events", state.overflow_events},
        {"window.steps", state.window.steps},
        {"window.non_finite", state.window.non_finite},
        {"window.loss_count", state.window.loss_count},
        {"window.underflow_samples", state.window.underflow_samples}}) {
    counter(entry, value);
  }
  TORCH_CHECK_VALUE(!state.previous_loss || std::isfinite(*state.previous_loss), where,
                    "previous_loss must be finite, got ", state.previous_loss.value_or(0));
  TORCH_CHECK_VALUE(std::isfinite(state.window.loss_sum) && std::isfinite(state.window.underflow_sum), where,
                    "window sums must be finite, got ", state.window.loss_sum, " and ", state.window.underflow_sum);
  // Validated whole: now nothing can fail.
  state_ = state;
  policy_ = std::move(policy);
  active_ = active;
  records_->forward_order.clear();
  records_->forward_flags.clear();
  records_->steps.clear();
  records_->underflow.clear();
  records_->samples.clear();
  apply_decisions();
}

at::Tensor AdaptiveLayerImpl::forward(const at::Tensor& input) {
  std::optional<AutocastGuard> guard;
  controller_->enter_layer(promoted_, guard);
  // FP32 (promoted): floating inputs widened, as a float32 per-module policy does.
  const bool widen = promoted_ && input.is_floating_point() && input.scalar_type() != c10::kFloat;
  at::Tensor output = inner_.forward<at::Tensor>(widen ? input.to(c10::kFloat) : input);
  controller_->record_output(index_, output);
  return output;
}

}  // namespace ampkit
