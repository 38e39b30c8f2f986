// Adaptive precision for torch:: C++ frontend loops: what overflows moves to FP32 by itself (and back,
// optionally), by the rules of ampkit.AdaptivePrecision in Python.
//
//   ampkit::GradScaler scaler;
//   ampkit::AdaptivePrecision adaptive(ampkit::autocast::Policy::torch_default(torch::kCUDA, torch::kHalf),
//                                      {}, &scaler);
//   auto fc1 = adaptive.wrap("fc1", torch::nn::Linear(784, 256));   // each layer that may overflow
//   ...
//   { auto region = adaptive.region(); loss = loss_fn(model(x), y); }  // the current decisions' region
//   scaler.scale(loss).backward();
//   adaptive.after_backward(loss);    // device work only
//   scaler.step(optimizer); scaler.update();
//   if (step % 20 == 0) for (const auto& change : adaptive.update(step, epoch)) std::cout << change << "\n";
//
// What it decides, each at a logging point (update()), from what the steps since the last one recorded
// on the device (read there with one transfer; nothing is read during a step):
// * per-layer promotion: the first wrapped layer (in execution order) whose forward output is non-finite
//   (a forward overflow, which loss scaling cannot fix), else the first (in wrap order) whose own
//   parameters' gradients are, is blamed for the step. A layer blamed in `promote_after` of the last
//   `window` logging windows runs in FP32 from then on (its forward in a disabled region, floating
//   inputs cast to float32); with demote_after = m it returns to the low dtype after m clean steps,
//   and m doubles each time it has to be promoted again (backoff).
//   Blame costs a flag per watched output and gradient: by default it is gathered only from the
//   logging point after a non-finite step (the scaler's device counter of overflowing iterations
//   says so) until a window comes out clean, so a clean run pays nothing; BlameMode::kAlways (or no
//   scaler to count overflows) gathers it on every step.
// * per-op promotion (`ops`): after a window with a non-finite step, the next training region is a
//   sampled diagnostic step: an autocast::OutputWatch flags every lower-precision op output. An op kind
//   first to go non-finite in `promote_after` of the last `window` sampled steps moves to the policy's
//   fp32 (deny) list. One sampled step per troubled window costs nothing on clean runs, and an op that
//   overflows keeps overflowing, so it is found without a flag per op on every step.
// * the schedule: FP32 for a warm-up (steps, epochs, or until the mean loss changed by less than
//   `warmup_loss_change` between two logging windows), then the policy's dtype; and the fallback:
//   when more than `max_skip_rate` of the steps were non-finite for `fallback_windows` windows in a
//   row that promoted nothing, fp16 -> bf16 (where the device supports it) -> FP32, with a warning.
// * underflow: when the share of nonzero gradient values (sampled every `sample_every` steps) that
//   fp16 would flush to zero once unscaled stays above `underflow_threshold` for `underflow_windows`
//   windows: bf16 with `prefer_bf16` where supported, else the scaler's floor (min_scale) rises to the
//   current scale. No gradient value is ever changed.
// freeze() fixes the decisions (a policy change is a new trace for compiled code).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "ampkit/autocast.h"
#include "ampkit/grad_scaler.h"

namespace ampkit {

struct PrecisionChange {
  int64_t step;
  std::string target;      // the wrapped layer's name
  std::string from_dtype;  // "float16", "bfloat16", "float32"
  std::string to_dtype;
  std::string reason;
  bool operator==(const PrecisionChange& other) const;
};
std::ostream& operator<<(std::ostream& stream, const PrecisionChange& change);

enum class BlameMode { kAfterNonFinite, kAlways };

// The controller's settings; 0 turns a threshold or a warm-up off.
struct AdaptivePrecisionOptions {
  int64_t window = 3;         // logging windows looked back on
  int64_t promote_after = 2;  // blamed in this many of them: FP32
  int64_t demote_after = 0;   // clean steps before trying the low dtype again; 0: never
  BlameMode blame = BlameMode::kAfterNonFinite;
  bool layers = true;  // per-layer promotion
  bool ops = false;  // per-op promotion through sampled diagnostic steps
  int64_t warmup_steps = 0;
  int64_t warmup_epochs = 0;
  double warmup_loss_change = 0;  // relative change of the mean loss between windows, in (0, 1)
  double max_skip_rate = 0.25;    // in (0, 1); 0: never fall back
  int64_t fallback_windows = 3;
  double underflow_threshold = 0;  // in (0, 1)
  int64_t underflow_windows = 2;
  bool prefer_bf16 = true;
  int64_t sample_every = 20;  // steps between underflow measurements
};

// The steps of the logging window in progress, digested on the host.
struct AdaptiveWindow {
  int64_t steps = 0;
  int64_t non_finite = 0;
  std::map<std::string, int64_t> blame;  // layer -> steps it was blamed for
  double loss_sum = 0;
  int64_t loss_count = 0;
  double underflow_sum = 0;
  int64_t underflow_samples = 0;
  std::vector<std::vector<std::string>> op_flags;  // per sampled step, the op kind first non-finite (0 or 1)
  bool operator==(const AdaptiveWindow& other) const;
};

// Plain-data state (what a checkpoint holds), so a resumed run takes the same decisions.
struct AdaptivePrecisionState {
  std::vector<std::vector<std::string>> recent_blame;  // per logging window, the layers blamed in it
  std::map<std::string, int64_t> promoted_at;          // layer -> step of its promotion
  std::map<std::string, int64_t> promotions;           // layer -> how often it was promoted
  std::map<std::string, int64_t> clean_steps;          // promoted layer -> clean steps since
  std::vector<PrecisionChange> changes;
  bool frozen = false;
  std::string active_dtype;  // what regions autocast to now: "float16", "bfloat16" or "float32"
  bool warmup_done = true;
  std::vector<std::string> denied_ops;                    // op kinds moved to the fp32 list
  std::vector<std::vector<std::string>> recent_op_blame;  // per sampled window, the op kinds blamed
  int64_t skip_streak = 0;
  int64_t underflow_streak = 0;
  std::optional<double> previous_loss;  // the last window's mean loss
  bool op_armed = false;                // the next training region is a sampled diagnostic step
  bool blaming = false;
  int64_t calls = 0;            // after_backward() calls
  int64_t overflow_events = 0;  // the scaler's counter at the last read
  AdaptiveWindow window;        // the window in progress
  bool operator==(const AdaptivePrecisionState& other) const;
};

namespace detail {
struct AdaptiveRecords;  // the device-side records of the steps since the last update()
}

class AdaptiveLayerImpl;
class AdaptiveLayer;
class AdaptiveRegion;

// Must outlive the layers it wraps (they call back into it).
class AdaptivePrecision {
 public:
  // `scaler` (optional; must outlive the controller) provides the device counter of overflowing
  // iterations, the scale for underflow measurements and the floor to raise.
  explicit AdaptivePrecision(autocast::Policy policy, AdaptivePrecisionOptions options = {},
                             GradScaler* scaler = nullptr);
  // Wrapped layers point back at their controller: it stays where it was made.
  AdaptivePrecision(const AdaptivePrecision&) = delete;
  AdaptivePrecision& operator=(const AdaptivePrecision&) = delete;

  // `inner` (any torch::nn module holder with forward(Tensor) -> Tensor) wrapped under `name`: its
  // forward runs in the current decisions' region, or in FP32 once promoted, and its output and its
  // own parameters' gradients are watched (a wrapped layer nested inside leaves its parameters to the
  // inner one). Register the returned module in the model in place of `inner`.
  template <typename ModuleHolder>
  AdaptiveLayer wrap(const std::string& name, ModuleHolder inner);

  // The region a training forward runs in: the policy (with the ops denied so far) in the active
  // dtype, or a disabled region in FP32. A sampled diagnostic step watches op outputs inside it.
  AdaptiveRegion region();
  // After backward, before the optimizer step (`loss`: optional one-element tensor, for the warm-up
  // by loss change). Device work only.
  void after_backward(const at::Tensor& loss = {});
  // At a logging point (`step`: optimizer steps done; `epoch`: epochs completed, for warm-up in
  // epochs): reads what the steps since the last call recorded (one transfer), decides, and returns
  // the new decisions.
  std::vector<PrecisionChange> update(int64_t step, std::optional<int64_t> epoch = std::nullopt);
  void freeze() { state_.frozen = true; }
  void unfreeze() { state_.frozen = false; }

  bool is_promoted(const std::string& name) const { return state_.promoted_at.count(name) > 0; }
  const std::vector<PrecisionChange>& changes() const { return state_.changes; }
  // The policy's lists with the denied ops, in the policy's dtype.
  const autocast::Policy& policy() const { return policy_; }
  // What regions autocast to now; nullopt: FP32 (warm-up or the last-resort fallback).
  std::optional<c10::ScalarType> active_dtype() const { return active_; }
  std::vector<std::string> layer_names() const;

  // Digests the records of the steps since the last logging point into the window in progress (a
  // host read): take it at a logging point or a checkpoint, not on every step.
  AdaptivePrecisionState state_dict();
  // Refuses (c10::ValueError naming the entry) a state that names an unknown layer or op, holds
  // negative counters or an unknown dtype; nothing changes on a refusal.
  void load_state_dict(const AdaptivePrecisionState& state);

  // Internal, for AdaptiveLayerImpl and AdaptiveRegion.
  void record_output(size_t layer, const at::Tensor& output);
  // The region a wrapped layer's forward runs in (FP32 when it is promoted or the model is in FP32).
  void enter_layer(bool promoted, std::optional<AutocastGuard>& guard) const;
  void close_sample(const std::vector<autocast::OutputFlag>& outputs);
  void set_recording(bool recording);

 private:
  size_t add_layer(const std::string& name, const std::shared_ptr<AdaptiveLayerImpl>& layer);
  void digest();
  bool blaming() const;
  void apply_decisions();
  void change(std::vector<PrecisionChange>& changes, int64_t step, const std::string& target,
              std::optional<c10::ScalarType> from, std::optional<c10::ScalarType> to, const std::string& reason);
  void decide_warmup(int64_t step, std::optional<int64_t> epoch, std::optional<double> loss,
                     std::vector<PrecisionChange>& changes);
  bool decide_layers(int64_t step, const AdaptiveWindow& window, std::vector<PrecisionChange>& changes);
  bool decide_ops(int64_t step, const AdaptiveWindow& window, std::vector<PrecisionChange>& changes);
  void decide_fallback(int64_t step, const AdaptiveWindow& window, bool promoted,
                       std::vector<PrecisionChange>& changes);
  void decide_underflow(int64_t step, const AdaptiveWindow& window, std::vector<PrecisionChange>& changes);

  autocast::Policy base_policy_;  // as given: what load_state_dict starts from
  autocast::Policy policy_;       // with the denied ops
  autocast::Policy active_policy_;  // policy_ in the active dtype (what regions and layers enter)
  AdaptivePrecisionOptions options_;
  GradScaler* scaler_;
  std::vector<std::string> names_;
  std::vector<std::weak_ptr<AdaptiveLayerImpl>> layers_;
  std::shared_ptr<detail::AdaptiveRecords> records_;
  std::optional<c10::ScalarType> active_;
  AdaptivePrecisionState state_;
};

// What AdaptivePrecision::region() returns: the autocast region (plus the op watch on a sampled
// diagnostic step) until it goes out of scope.
class AdaptiveRegion {
 public:
  AdaptiveRegion(AdaptivePrecision& controller, const autocast::Policy& policy, bool enabled, bool recording,
                 bool sampling);
  ~AdaptiveRegion();
  AdaptiveRegion(const AdaptiveRegion&) = delete;
  AdaptiveRegion& operator=(const AdaptiveRegion&) = delete;

 private:
  AdaptivePrecision& controller_;
  AutocastGuard guard_;
  std::unique_ptr<autocast::OutputWatch> watch_;
  bool recording_;
};

// A layer watched by an AdaptivePrecision (made by AdaptivePrecision::wrap).
class AdaptiveLayerImpl : public torch::nn::Module {
 public:
  template <typename ModuleHolder>
  AdaptiveLayerImpl(AdaptivePrecision* controller, ModuleHolder inner) : controller_(controller), inner_(inner) {
    register_module("inner", inner.ptr());
  }
  at::Tensor forward(const at::Tensor& input);
  bool promoted() const { return promoted_; }

 private:
  friend class AdaptivePrecision;
  AdaptivePrecision* controller_;
  torch::nn::AnyModule inner_;
  size_t index_ = 0;
  bool promoted_ = false;
};

TORCH_MODULE(AdaptiveLayer);

template <typename ModuleHolder>
AdaptiveLayer AdaptivePrecision::wrap(const std::string& name, ModuleHolder inner) {
  auto layer = std::make_shared<AdaptiveLayerImpl>(this, std::move(inner));
  layer->index_ = add_layer(name, layer);
  return AdaptiveLayer(layer);
}

}  // namespace ampkit
