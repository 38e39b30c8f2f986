// ampkit::GradScaler: dynamic loss scaling for torch:: C++ frontend training loops, with the
// semantics of Python's torch.amp.GradScaler / ampkit.GradScaler:
//
//   ampkit::GradScaler scaler(ampkit::GradScalerOptions().init_scale(1024));
//   for (...) {
//     optimizer.zero_grad();
//     auto loss = torch::mse_loss(model->forward(x), y);
//     scaler.scale(loss).backward();
//     scaler.step(optimizer);   // unscales, skips the step if any grad is inf/NaN
//     scaler.update();          // grows/backs off the scale, on the device
//   }
//
// Works with any torch::optim::Optimizer. The numeric work is ampkit::unscale_and_check_ and
// ampkit::update_scale_, neither of which reads anything back to the host. C++ frontend
// optimizers cannot skip a step on the device, so step() reads found_inf once (one host sync),
// like torch's Python scaler does for a plain optimizer; get_scale() and state_dict() sync too.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <limits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ampkit {

struct GradScalerOptions {
  TORCH_ARG(double, init_scale) = 65536.0;
  TORCH_ARG(double, growth_factor) = 2.0;
  TORCH_ARG(double, backoff_factor) = 0.5;
  TORCH_ARG(int64_t, growth_interval) = 2000;
  TORCH_ARG(bool, enabled) = true;
  // Back off only after this many consecutive overflowing iterations (1: every one, as torch).
  TORCH_ARG(int64_t, hysteresis) = 1;
  TORCH_ARG(double, min_scale) = 0.0;                                       // 0: no lower bound
  TORCH_ARG(double, max_scale) = std::numeric_limits<double>::infinity();  // inf: no upper bound
};

// Everything needed to resume: the configuration plus the running state (host values).
struct GradScalerState {
  double scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
  int64_t growth_tracker = 0;
  int64_t hysteresis = 1;
  int64_t hysteresis_tracker = 0;
  double min_scale = 0.0;
  double max_scale = std::numeric_limits<double>::infinity();
  int64_t skipped_steps = 0;
  int64_t overflow_events = 0;

  bool operator==(const GradScalerState& other) const;
  bool operator!=(const GradScalerState& other) const { return !(*this == other); }
};

class GradScaler {
 public:
  // Throws c10::ValueError for growth_factor <= 1, backoff_factor outside (0, 1),
  // growth_interval <= 0, hysteresis <= 0, a non-positive init_scale or inconsistent bounds.
  explicit GradScaler(GradScalerOptions options = {});

  // outputs * scale (the scale lives on the device of the first tensor scaled); identity when disabled.
  at::Tensor scale(const at::Tensor& outputs);

  // Unscales the optimizer's grads in place and checks them for inf/NaN (at most once per
  // optimizer per iteration, before step). No host sync.
  void unscale_(torch::optim::Optimizer& optimizer);
  // The same, returning the global L2 norm of the unscaled grads (float32, scale's device)
  // computed in the same pass: for clipping without another read of the grads.
  at::Tensor unscale_with_norm_(torch::optim::Optimizer& optimizer);

  // Unscales (unless unscale_ ran) and calls optimizer.step() unless a grad was inf/NaN.
  // Returns whether the step ran. Reads found_inf once (the only sync of the loop) for a plain
  // torch::optim optimizer. An ampkit::optim optimizer unscales and skips on the device instead
  // (set_grad_scaling): then nothing is read, step() returns true ("submitted"), and whether the
  // step was skipped is in found_inf() / skipped_steps() after update().
  bool step(torch::optim::Optimizer& optimizer);

  // Updates the scale from this iteration's checks, on the device; or sets it to new_scale.
  void update();
  void update(double new_scale);

  // The current scale (syncs); 1 when disabled.
  double get_scale() const;
  // The scale as a float32 device tensor, without a sync; undefined before the first scale() or
  // when disabled.
  const at::Tensor& scale_tensor() const { return scale_; }
  // A new floor for the scale (from the next update() on), checked as the options are.
  void set_min_scale(double min_scale);
  bool is_enabled() const { return options_.enabled(); }
  const GradScalerOptions& options() const { return options_; }

  // Observing skips without a sync: float32 flag of the last update()'s iteration (> 0: its
  // steps were skipped; undefined before the first update), and int64 running counters of
  // skipped optimizer steps and of overflowing iterations. All on the scale's device.
  const at::Tensor& found_inf() const { return last_found_inf_; }
  at::Tensor skipped_steps() const;
  at::Tensor overflow_events() const;

  // Syncs. load_state_dict validates everything before changing anything (c10::ValueError).
  GradScalerState state_dict() const;
  void load_state_dict(const GradScalerState& state);

  // Checkpoints through torch's archives (also what torch::save(scaler, path) and
  // torch::load(scaler, path) use): the state_dict() entries under "ampkit.grad_scaler.*".
  void save(torch::serialize::OutputArchive& archive) const;
  void load(torch::serialize::InputArchive& archive);

 private:
  enum class Stage { Ready, Unscaled, Stepped };
  struct OptimizerState {
    Stage stage = Stage::Ready;
    std::vector<std::pair<c10::Device, at::Tensor>> found_inf_per_device;
  };

  void lazy_init(const c10::Device& device);
  const at::Tensor& require_scale(const char* funcname) const;
  // check_only: record found_inf without changing the grads (for an optimizer that unscales itself).
  at::Tensor unscale_impl(torch::optim::Optimizer& optimizer, bool compute_norm, bool check_only = false);
  at::Tensor combined_found_inf(OptimizerState& state) const;

  GradScalerOptions options_;
  int64_t init_growth_tracker_ = 0;
  int64_t init_hysteresis_tracker_ = 0;
  int64_t init_skipped_steps_ = 0;
  int64_t init_overflow_events_ = 0;
  at::Tensor scale_;  // float32 scalar, created on the first scale()
  at::Tensor growth_tracker_;
  at::Tensor hysteresis_tracker_;
  at::Tensor skipped_steps_;
  at::Tensor overflow_events_;
  at::Tensor last_found_inf_;
  std::unordered_map<const torch::optim::Optimizer*, OptimizerState> per_optimizer_;
};

torch::serialize::OutputArchive& operator<<(torch::serialize::OutputArchive& archive, const GradScaler& scaler);
torch::serialize::InputArchive& operator>>(torch::serialize::InputArchive& archive, GradScaler& scaler);

}  // namespace ampkit
