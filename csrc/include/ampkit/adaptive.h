// Adaptive precision for torch:: C++ frontend loops: the layers that overflow move to FP32 by
// themselves (and back, optionally), as ampkit.AdaptivePrecision does in Python.
//
//   ampkit::AdaptivePrecision adaptive(ampkit::autocast::Policy::torch_default(torch::kCUDA, torch::kHalf));
//   auto fc1 = adaptive.wrap("fc1", torch::nn::Linear(784, 256));   // each layer that may overflow
//   ...
//   { auto region = adaptive.region(); loss = loss_fn(model(x), y); }  // the policy's autocast region
//   scaler.scale(loss).backward();
//   adaptive.after_backward();        // device work only: which wrapped layer's gradients are non-finite
//   scaler.step(optimizer); scaler.update();
//   if (step % 20 == 0) for (const auto& change : adaptive.update(step)) std::cout << change << "\n";
//
// Blame, as in Python: the first wrapped layer (in execution order) whose forward output is non-finite
// (a forward overflow, which loss scaling cannot fix), else the first (in wrap order) whose parameter
// gradients are. Both are recorded on the device (no host read during a step); update(), run at
// logging points, reads everything recorded since the last one with one transfer. A layer blamed in
// `promote_after` of the last `window` logging windows runs in FP32 from then on (its forward in a
// disabled region, floating inputs cast to float32); with demote_after = m it returns to the policy's
// dtype after m clean steps, and m doubles each time it has to be promoted again (backoff). freeze()
// fixes the decisions (a policy change is a new trace for compiled code).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "ampkit/autocast.h"

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

struct AdaptivePrecisionOptions {
  int64_t window = 3;         // logging windows looked back on
  int64_t promote_after = 2;  // blamed in this many of them: FP32
  int64_t demote_after = 0;   // clean steps before trying the low dtype again; 0: never
};

// Plain-data state (what a checkpoint holds), so a resumed run takes the same decisions.
struct AdaptivePrecisionState {
  std::vector<std::vector<std::string>> recent_blame;  // per logging window, the layers blamed in it
  std::map<std::string, int64_t> promoted_at;          // layer -> step of its promotion
  std::map<std::string, int64_t> promotions;           // layer -> how often it was promoted
  std::map<std::string, int64_t> clean_steps;          // promoted layer -> clean steps since
  std::vector<PrecisionChange> changes;
  bool frozen = false;
  bool operator==(const AdaptivePrecisionState& other) const;
};

namespace detail {
struct AdaptiveRecords;  // the device-side records of the steps since the last update()
}

class AdaptiveLayerImpl;
class AdaptiveLayer;

// Must outlive the layers it wraps (they call back into it).
class AdaptivePrecision {
 public:
  explicit AdaptivePrecision(autocast::Policy policy, AdaptivePrecisionOptions options = {});
  // Wrapped layers point back at their controller: it stays where it was made.
  AdaptivePrecision(const AdaptivePrecision&) = delete;
  AdaptivePrecision& operator=(const AdaptivePrecision&) = delete;

  // `inner` (any torch::nn module holder with forward(Tensor) -> Tensor) wrapped under `name`: its
  // forward runs in the policy's region, or in FP32 once promoted, and its output and its parameters'
  // gradients are watched. Register the returned module in the model in place of `inner`.
  template <typename ModuleHolder>
  AdaptiveLayer wrap(const std::string& name, ModuleHolder inner);

  // The region a training forward runs in (the policy's); the wrapped layers open their own inside it.
  std::unique_ptr<AutocastGuard> region() const;
  // After backward: device work only.
  void after_backward();
  // At a logging point (`step`: the optimizer steps done): reads what the steps since the last call
  // recorded (one transfer) and returns the new decisions.
  std::vector<PrecisionChange> update(int64_t step);
  void freeze() { state_.frozen = true; }
  void unfreeze() { state_.frozen = false; }

  bool is_promoted(const std::string& name) const { return state_.promoted_at.count(name) > 0; }
  const std::vector<PrecisionChange>& changes() const { return state_.changes; }
  const autocast::Policy& policy() const { return policy_; }
  std::vector<std::string> layer_names() const;

  AdaptivePrecisionState state_dict() const { return state_; }
  // Refuses (c10::ValueError naming the entry) a state that names an unknown layer or holds negative
  // counters; nothing changes on a refusal.
  void load_state_dict(const AdaptivePrecisionState& state);

  // Internal, for AdaptiveLayerImpl.
  void record_output(size_t layer, const at::Tensor& output);

 private:
  size_t add_layer(const std::string& name, const std::shared_ptr<AdaptiveLayerImpl>& layer);

  autocast::Policy policy_;
  AdaptivePrecisionOptions options_;
  std::vector<std::string> names_;
  std::vector<std::weak_ptr<AdaptiveLayerImpl>> layers_;
  std::shared_ptr<detail::AdaptiveRecords> records_;
  AdaptivePrecisionState state_;
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
