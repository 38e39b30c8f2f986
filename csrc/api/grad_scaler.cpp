#include "ampkit/grad_scaler.h"
#include "ampkit/optim.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

#include "ampkit/contracts.h"
#include "ampkit/loss_scaling.h"

namespace ampkit {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr double kFloatMax = static_cast<double>(std::numeric_limits<float>::max());

// The scale and the options, by the contracts every entry point shares (ampkit/contracts.h).
void check_config(const char* where, const char* scale_name, double scale, double growth_factor,
                  double backoff_factor, int64_t growth_interval, int64_t hysteresis, double min_scale,
                  double max_scale) {
  const contracts::Context context{where};
  contracts::check_scale_value(scale_name, scale, context);
  contracts::check_loss_scale_options(
      {growth_factor, backoff_factor, growth_interval, hysteresis, min_scale, max_scale}, context);
}

at::Tensor scalar_tensor(double value, at::ScalarType dtype, const c10::Device& device) {
  return at::full({}, value, at::TensorOptions().dtype(dtype).device(device));
}

}  // namespace

bool GradScalerState::operator==(const GradScalerState& other) const {
  return scale == other.scale && growth_factor == other.growth_factor && backoff_factor == other.backoff_factor &&
         growth_interval == other.growth_interval && growth_tracker == other.growth_tracker &&
         hysteresis == other.hysteresis && hysteresis_tracker == other.hysteresis_tracker &&
         min_scale == other.min_scale && max_scale == other.max_scale && skipped_steps == other.skipped_steps &&
         overflow_events == other.overflow_events;
}

GradScaler::GradScaler(GradScalerOptions options) : options_(std::move(options)) {
  check_config("ampkit::GradScaler", "init_scale", options_.init_scale(), options_.growth_factor(),
               options_.backoff_factor(), options_.growth_interval(), options_.hysteresis(), options_.min_scale(),
               options_.max_scale());
}

void GradScaler::set_min_scale(double min_scale) {
  check_config("ampkit::GradScaler::set_min_scale", "init_scale", options_.init_scale(), options_.growth_factor(),
               options_.backoff_factor(), options_.growth_interval(), options_.hysteresis(), min_scale,
               options_.max_scale());
  options_.min_scale(min_scale);
}

void GradScaler::lazy_init(const c10::Device& device) {
  scale_ = scalar_tensor(options_.init_scale(), at::kFloat, device);
  growth_tracker_ = scalar_tensor(static_cast<double>(init_growth_tracker_), at::kInt, device);
  hysteresis_tracker_ = scalar_tensor(static_cast<double>(init_hysteresis_tracker_), at::kInt, device);
  skipped_steps_ = scalar_tensor(static_cast<double>(init_skipped_steps_), at::kLong, device);
  overflow_events_ = scalar_tensor(static_cast<double>(init_overflow_events_), at::kLong, device);
}

const at::Tensor& GradScaler::require_scale(const char* funcname) const {
  TORCH_CHECK(scale_.defined(), "ampkit::GradScaler: attempted ", funcname,
              " but the scale was never initialised. This may indicate your loop did not call scaler.scale(loss) "
              "earlier in the iteration.");
  return scale_;
}

at::Tensor GradScaler::scale(const at::Tensor& outputs) {
  if (!is_enabled()) return outputs;
  TORCH_CHECK(outputs.defined(), "ampkit::GradScaler::scale: outputs must be a tensor, got an undefined tensor");
  if (!scale_.defined()) lazy_init(outputs.device());
  return outputs * scale_.to(outputs.device(), /*non_blocking=*/true);
}

at::Tensor GradScaler::unscale_impl(torch::optim::Optimizer& optimizer, bool compute_norm, bool check_only) {
  const at::Tensor& scale = require_scale("unscale_");
  OptimizerState& state = per_optimizer_[&optimizer];
  TORCH_CHECK(state.stage != Stage::Unscaled,
              "ampkit::GradScaler: unscale_() has already been called on this optimizer since the last update().");
  TORCH_CHECK(state.stage != Stage::Stepped, "ampkit::GradScaler: unscale_() is being called after step().");
  // check_only: a factor of exactly 1 makes unscale_and_check_ a read-only pass.
  const at::Tensor inv_scale = check_only ? scalar_tensor(1.0, at::kFloat, scale.device()) : reciprocal_scale(scale);

  std::vector<std::pair<c10::Device, std::vector<at::Tensor>>> per_device;
  for (auto& group : optimizer.param_groups()) {
    for (auto& param : group.params()) {
      const at::Tensor& grad = param.grad();
      if (!grad.defined()) continue;
      TORCH_CHECK(!grad.is_sparse(), "ampkit::GradScaler: sparse gradients are not supported by the C++ scaler");
      auto it = std::find_if(per_device.begin(), per_device.end(),
                             [&](const auto& entry) { return entry.first == grad.device(); });
      if (it == per_device.end()) {
        per_device.emplace_back(grad.device(), std::vector<at::Tensor>{});
        it = std::prev(per_device.end());
      }
      it->second.push_back(grad);
    }
  }

  const c10::AutoGradMode no_grad(false);
  state.found_inf_per_device.clear();
  std::vector<at::Tensor> norms;
  for (auto& [device, grads] : per_device) {
    at::Tensor found_inf = scalar_tensor(0.0, at::kFloat, device);
    std::optional<at::Tensor> norm;
    if (compute_norm) norm = scalar_tensor(0.0, at::kFloat, device);
    unscale_and_check_(grads, found_inf, inv_scale.to(device, /*non_blocking=*/true), norm);
    state.found_inf_per_device.emplace_back(device, found_inf);
    if (norm) norms.push_back(norm->to(scale.device(), /*non_blocking=*/true));
  }
  state.stage = Stage::Unscaled;
  if (!compute_norm) return {};
  if (norms.empty()) return scalar_tensor(0.0, at::kFloat, scale.device());
  if (norms.size() == 1) return norms[0];
  return at::linalg_vector_norm(at::stack(norms));
}

void GradScaler::unscale_(torch::optim::Optimizer& optimizer) {
  if (is_enabled()) unscale_impl(optimizer, /*compute_norm=*/false);
}

at::Tensor GradScaler::unscale_with_norm_(torch::optim::Optimizer& optimizer) {
  TORCH_CHECK(is_enabled(), "ampkit::GradScaler::unscale_with_norm_: the scaler is disabled; compute the norm with "
                            "torch::nn::utils::clip_grad_norm_ instead");
  return unscale_impl(optimizer, /*compute_norm=*/true);
}

at::Tensor GradScaler::combined_found_inf(OptimizerState& state) const {
  // Nothing was unscaled, so the optimizer may go back to the start of its iteration.
  if (state.found_inf_per_device.empty()) state.stage = Stage::Ready;
  TORCH_CHECK(!state.found_inf_per_device.empty(),
              "ampkit::GradScaler: step(): no inf checks were recorded for this optimizer: none of its parameters has "
              "a gradient (did backward() run on the scaled loss before step()?)");
  at::Tensor combined;
  for (const auto& entry : state.found_inf_per_device) {
    at::Tensor found = entry.second.to(scale_.device(), /*non_blocking=*/true);
    combined = combined.defined() ? combined + found : found;
  }
  return combined;
}

bool GradScaler::step(torch::optim::Optimizer& optimizer) {
  if (!is_enabled()) {
    optimizer.step();
    return true;
  }
  require_scale("step");
  {
    const OptimizerState& state = per_optimizer_[&optimizer];
    TORCH_CHECK(state.stage != Stage::Stepped,
                "ampkit::GradScaler: step() has already been called since the last update().");
    if (auto* device_skipping = dynamic_cast<optim::MasterWeightOptimizer*>(&optimizer)) {
      // No host sync: the optimizer unscales in its own pass and skips on the device.
      const bool grads_scaled = state.stage == Stage::Ready;
      if (grads_scaled) unscale_impl(optimizer, /*compute_norm=*/false, /*check_only=*/true);
      OptimizerState& checked = per_optimizer_[&optimizer];
      const at::Tensor found_inf = combined_found_inf(checked);
      device_skipping->set_grad_scaling(grads_scaled ? scale_ : at::Tensor(), found_inf);
      device_skipping->step();
      skipped_steps_.add_(found_inf.gt(0).to(at::kLong));
      checked.stage = Stage::Stepped;
      return true;
    }
    if (state.stage == Stage::Ready) unscale_(optimizer);
  }
  OptimizerState& state = per_optimizer_[&optimizer];
  const at::Tensor found_inf = combined_found_inf(state);
  // The one host read: a torch::optim optimizer cannot skip its step on the device.
  const bool clean = found_inf.item<float>() == 0.0f;
  if (clean) {
    optimizer.step();
  } else {
    skipped_steps_.add_(1);
  }
  state.stage = Stage::Stepped;
  return clean;
}

void GradScaler::update() {
  if (!is_enabled()) return;
  const at::Tensor& scale = require_scale("update");
  at::Tensor combined;
  for (const auto& entry : per_optimizer_) {
    for (const auto& device_found : entry.second.found_inf_per_device) {
      at::Tensor found = device_found.second.to(scale.device(), /*non_blocking=*/true);
      combined = combined.defined() ? combined + found : found;
    }
  }
  TORCH_CHECK(combined.defined(),
              "ampkit::GradScaler: update(): no inf checks were recorded prior to update(): call scaler.step(optimizer) "
              "(or scaler.unscale_(optimizer)) in this iteration first");
  update_scale_(scale, growth_tracker_, hysteresis_tracker_, combined, options_.growth_factor(),
                options_.backoff_factor(), options_.growth_interval(), options_.hysteresis(), options_.min_scale(),
                std::min(options_.max_scale(), kFloatMax));
  overflow_events_.add_(combined.gt(0).to(at::kLong));
  last_found_inf_ = combined;
  per_optimizer_.clear();
}

void GradScaler::update(double new_scale) {
  if (!is_enabled()) return;
  const at::Tensor& scale = require_scale("update");
  contracts::check_scale_value("new_scale", new_scale, {"ampkit::GradScaler: update()"});
  scale.fill_(new_scale);
  per_optimizer_.clear();
}

double GradScaler::get_scale() const {
  if (!is_enabled()) return 1.0;
  return scale_.defined() ? static_cast<double>(scale_.item<float>()) : options_.init_scale();
}

at::Tensor GradScaler::skipped_steps() const {
  return skipped_steps_.defined() ? skipped_steps_ : at::scalar_tensor(init_skipped_steps_, at::kLong);
}

at::Tensor GradScaler::overflow_events() const {
  return overflow_events_.defined() ? overflow_events_ : at::scalar_tensor(init_overflow_events_, at::kLong);
}

GradScalerState GradScaler::state_dict() const {
  GradScalerState state;
  state.scale = get_scale();
  state.growth_factor = options_.growth_factor();
  state.backoff_factor = options_.backoff_factor();
  state.growth_interval = options_.growth_interval();
  state.growth_tracker = growth_tracker_.defined() ? growth_tracker_.item<int32_t>() : init_growth_tracker_;
  state.hysteresis = options_.hysteresis();
  state.hysteresis_tracker =
      hysteresis_tracker_.defined() ? hysteresis_tracker_.item<int32_t>() : init_hysteresis_tracker_;
  state.min_scale = options_.min_scale();
  state.max_scale = options_.max_scale();
  state.skipped_steps = skipped_steps().item<int64_t>();
  state.overflow_events = overflow_events().item<int64_t>();
  return state;
}

void GradScaler::load_state_dict(const GradScalerState& state) {
  if (!is_enabled()) return;
  const char* where = "ampkit::GradScaler::load_state_dict";
  check_config(where, "scale", state.scale, state.growth_factor, state.backoff_factor, state.growth_interval,
               state.hysteresis, state.min_scale, state.max_scale);
  // The scale lives in a float32 tensor: beyond float32's range it would become inf or 0.
  TORCH_CHECK_VALUE(state.scale >= std::numeric_limits<float>::denorm_min() &&
                        state.scale <= std::numeric_limits<float>::max(),
                    where, ": scale must be a float32 value in [", std::numeric_limits<float>::denorm_min(), ", ",
                    std::numeric_limits<float>::max(), "], got ", state.scale);
  TORCH_CHECK_VALUE(state.growth_tracker >= 0 && state.growth_tracker <= kInt32Max, where,
                    ": growth_tracker must be in [0, 2^31-1], got ", state.growth_tracker);
  TORCH_CHECK_VALUE(state.hysteresis_tracker >= 0 && state.hysteresis_tracker <= kInt32Max, where,
                    ": hysteresis_tracker must be in [0, 2^31-1], got ", state.hysteresis_tracker);
  TORCH_CHECK_VALUE(state.skipped_steps >= 0, where, ": skipped_steps must be >= 0, got ", state.skipped_steps);
  TORCH_CHECK_VALUE(state.overflow_events >= 0, where, ": overflow_events must be >= 0, got ", state.overflow_events);
  options_.init_scale(state.scale)
      .growth_factor(state.growth_factor)
      .backoff_factor(state.backoff_factor)
      .growth_interval(state.growth_interval)
      .hysteresis(state.hysteresis)
      .min_scale(state.min_scale)
      .max_scale(state.max_scale);
  init_growth_tracker_ = state.growth_tracker;
  init_hysteresis_tracker_ = state.hysteresis_tracker;
  init_skipped_steps_ = state.skipped_steps;
  init_overflow_events_ = state.overflow_events;
  if (scale_.defined()) {
    // In place: tensors handed out earlier (skipped_steps(), ...) stay the scaler's own.
    scale_.fill_(state.scale);
    growth_tracker_.fill_(state.growth_tracker);
    hysteresis_tracker_.fill_(state.hysteresis_tracker);
    skipped_steps_.fill_(state.skipped_steps);
    overflow_events_.fill_(state.overflow_events);
  }
}

}  // namespace ampkit

namespace ampkit {
namespace {

constexpr const char* kArchivePrefix = "ampkit.grad_scaler.";

double read_double(torch::serialize::InputArchive& archive, const char* name) {
  c10::IValue value;
  TORCH_CHECK(archive.try_read(std::string(kArchivePrefix) + name, value),
              "ampkit::GradScaler::load: the archive has no entry ", kArchivePrefix, name,
              " (was it written by GradScaler::save?)");
  TORCH_CHECK_TYPE(value.isDouble() || value.isInt(), "ampkit::GradScaler::load: ", kArchivePrefix, name,
                   " must be a number, got ", value.tagKind());
  return value.isDouble() ? value.toDouble() : static_cast<double>(value.toInt());
}

int64_t read_int(torch::serialize::InputArchive& archive, const char* name) {
  c10::IValue value;
  TORCH_CHECK(archive.try_read(std::string(kArchivePrefix) + name, value),
              "ampkit::GradScaler::load: the archive has no entry ", kArchivePrefix, name,
              " (was it written by GradScaler::save?)");
  TORCH_CHECK_TYPE(value.isInt(), "ampkit::GradScaler::load: ", kArchivePrefix, name, " must be an int, got ",
                   value.tagKind());
  return value.toInt();
}

}  // namespace

void GradScaler::save(torch::serialize::OutputArchive& archive) const {
  const GradScalerState state = state_dict();
  const std::string prefix = kArchivePrefix;
  archive.write(prefix + "scale", state.scale);
  archive.write(prefix + "growth_factor", state.growth_factor);
  archive.write(prefix + "backoff_factor", state.backoff_factor);
  archive.write(prefix + "growth_interval", state.growth_interval);
  archive.write(prefix + "growth_tracker", state.growth_tracker);
  archive.write(prefix + "hysteresis", state.hysteresis);
  archive.write(prefix + "hysteresis_tracker", state.hysteresis_tracker);
  archive.write(prefix + "min_scale", state.min_scale);
  archive.write(prefix + "max_scale", state.max_scale);
  archive.write(prefix + "skipped_steps", state.skipped_steps);
  archive.write(prefix + "overflow_events", state.overflow_events);
}

void GradScaler::load(torch::serialize::InputArchive& archive) {
  GradScalerState state;
  state.scale = read_double(archive, "scale");
  state.growth_factor = read_double(archive, "growth_factor");
  state.backoff_factor = read_double(archive, "backoff_factor");
  state.growth_interval = read_int(archive, "growth_interval");
  state.growth_tracker = read_int(archive, "growth_tracker");
  state.hysteresis = read_int(archive, "hysteresis");
  state.hysteresis_tracker = read_int(archive, "hysteresis_tracker");
  state.min_scale = read_double(archive, "min_scale");
  state.max_scale = read_double(archive, "max_scale");
  state.skipped_steps = read_int(archive, "skipped_steps");
  state.overflow_events = read_int(archive, "overflow_events");
  load_state_dict(state);
}

torch::serialize::OutputArchive& operator<<(torch::serialize::OutputArchive& archive, const GradScaler& scaler) {
  scaler.save(archive);
  return archive;
}

torch::serialize::InputArchive& operator>>(torch::serialize::InputArchive& archive, GradScaler& scaler) {
  scaler.load(archive);
  return archive;
}

}  // namespace ampkit
