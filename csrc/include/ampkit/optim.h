// FP32-master-weight optimizers for torch:: C++ frontend loops: ampkit::optim::SGD, Adam, AdamW.
//
// They derive from torch::optim::Optimizer, take torch::optim's options and formulas, and keep an
// FP32 master copy (plus FP32 state) of every float16/bfloat16 parameter; float32 parameters are
// updated in place, float64 parameters in place in double with float64 state (as torch does).
// One fused op per step (ampkit::master_sgd_step_ / master_adam_step_) reads the gradient,
// unscales and clips it, updates master and state and writes the model copy.
//
// Loss scaling (the protocol torch.amp.GradScaler uses with Python optimizers): a scaler calls
// set_grad_scaling(grad_scale, found_inf) before step(); the gradients are multiplied by
// 1 / grad_scale inside the kernel and, when found_inf != 0, the step changes nothing (masters,
// state, step counters, model copy). Nothing is read back to the host. Whenever a step applies a
// grad_scale or a clip_coef, the same pass leaves each gradient unscaled (and clipped), as torch's
// GradScaler.unscale_ does, skipped step included.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace ampkit {

// ---- the ops (through the dispatcher; see csrc/ops/registration.cpp for the contract) ----

void master_sgd_step_(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                      at::TensorList momentum_buffers, at::TensorList steps, const at::Tensor& lr,
                      const at::Tensor& inv_scale, const at::Tensor& clip_coef, const std::optional<at::Tensor>& found_inf,
                      double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
                      bool write_back_grads = false);

// max_exp_avg_sqs: empty (Adam) or one per param (amsgrad).
void master_adam_step_(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                       at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                       at::TensorList steps, const at::Tensor& lr, const at::Tensor& inv_scale,
                       const at::Tensor& clip_coef, const std::optional<at::Tensor>& found_inf, double beta1,
                       double beta2, double eps, double weight_decay, bool decoupled_weight_decay, bool maximize,
                       bool write_back_grads = false);

namespace optim {

struct SGDOptions : public torch::optim::OptimizerCloneableOptions<SGDOptions> {
  SGDOptions(double lr = 1e-3) : lr_(lr) {}  // NOLINT(google-explicit-constructor): as torch's
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(double, momentum) = 0;
  TORCH_ARG(double, dampening) = 0;
  TORCH_ARG(double, weight_decay) = 0;
  TORCH_ARG(bool, nesterov) = false;
  TORCH_ARG(bool, maximize) = false;
  // false: float16/bfloat16 params are updated directly (state still FP32).
  TORCH_ARG(bool, master_weights) = true;

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override { return lr(); }
  void set_lr(const double lr) override { this->lr(lr); }
};

struct AdamOptions : public torch::optim::OptimizerCloneableOptions<AdamOptions> {
  AdamOptions(double lr = 1e-3) : lr_(lr) {}  // NOLINT(google-explicit-constructor)
  using betas_t = std::tuple<double, double>;
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(betas_t, betas) = std::make_tuple(0.9, 0.999);
  TORCH_ARG(double, eps) = 1e-8;
  TORCH_ARG(double, weight_decay) = 0;  // Adam: L2 (added to the gradient); AdamW: decoupled
  TORCH_ARG(bool, amsgrad) = false;     // torch's: the denominator uses the running max of exp_avg_sq
  TORCH_ARG(bool, maximize) = false;
  TORCH_ARG(bool, master_weights) = true;

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override { return lr(); }
  void set_lr(const double lr) override { this->lr(lr); }
};

// AdamW's options are Adam's with torch's AdamW default weight_decay = 1e-2 (the setters return
// AdamOptions&, which AdamW takes).
struct AdamWOptions : public AdamOptions {
  AdamWOptions(double lr = 1e-3) : AdamOptions(lr) { weight_decay(1e-2); }  // NOLINT
};

// The state of one parameter. `master` is undefined when the parameter is its own master.
struct MasterParamState : public torch::optim::OptimizerCloneableParamState<MasterParamState> {
  TORCH_ARG(at::Tensor, step);  // one-element float32 on the parameter's device: steps taken
  TORCH_ARG(at::Tensor, master);
  TORCH_ARG(at::Tensor, momentum_buffer);  // SGD with momentum
  TORCH_ARG(at::Tensor, exp_avg);          // Adam, AdamW
  TORCH_ARG(at::Tensor, exp_avg_sq);       // Adam, AdamW
  TORCH_ARG(at::Tensor, max_exp_avg_sq);   // Adam, AdamW with amsgrad
};

// What SGD, Adam and AdamW share: state, masters, the scaling protocol, step(), save/load.
class MasterWeightOptimizer : public torch::optim::Optimizer {
 public:
  // The GradScaler protocol (Python: `_step_supports_amp_scaling`). For the next step() only:
  // gradients are multiplied by 1 / grad_scale (undefined: already unscaled) and the step is
  // skipped on the device when found_inf != 0 (undefined: never). One-element float tensors.
  static constexpr bool supports_amp_scaling = true;
  void set_grad_scaling(const at::Tensor& grad_scale, const at::Tensor& found_inf);
  // For the next step() only: every gradient is multiplied by clip_coef (a one-element float
  // tensor, e.g. a gradient-norm clip factor computed on the device).
  void set_clip_coef(const at::Tensor& clip_coef);

  // The learning rate of param group `group_index` as a tensor (one-element float32) read on the
  // device at every step, instead of the group's options().lr(): a schedule can then change it in
  // place (lr.fill_(value)) without a host value in the step, and a captured CUDA graph replays
  // with the new value. An undefined tensor returns the group to options().lr().
  void set_lr_tensor(size_t group_index, const at::Tensor& lr);

  // Steps once; see the class comment. Returns the closure's loss, if any.
  torch::Tensor step(LossClosure closure = nullptr) override;

  // The FP32 tensor each parameter's update is applied to, in param_groups order.
  std::vector<at::Tensor> master_params();

  // Checkpoints (torch::save(optimizer, ...) / torch::load(optimizer, ...)): every master and
  // state tensor exactly. load() checks the optimizer kind, group and parameter counts and every
  // shape before it changes anything.
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  virtual const char* name() const = 0;

 protected:
  struct Bucket {
    std::vector<at::Tensor> params, masters, grads, steps, state0, state1, state2;
    // (original, dense copy the kernel stepped): written back after the launch.
    std::vector<std::pair<at::Tensor, at::Tensor>> copy_backs;
  };
  struct Scalars {
    at::Tensor lr, inv_scale, clip_coef;
    std::optional<at::Tensor> found_inf;
    bool write_back_grads = false;  // a grad_scale or clip_coef applies: leave the grads unscaled
  };

  MasterWeightOptimizer(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
                        std::unique_ptr<torch::optim::OptimizerOptions> defaults);
  // Checks every group's options and parameters and creates the state; derived constructors call it.
  void initialise();
  MasterParamState& state_for(const at::Tensor& param, const torch::optim::OptimizerParamGroup& group);

  virtual void check_options(const torch::optim::OptimizerOptions& options) const = 0;
  virtual bool master_weights(const torch::optim::OptimizerOptions& options) const = 0;
  virtual void init_state(MasterParamState& state, const at::Tensor& param,
                          const torch::optim::OptimizerOptions& options) const = 0;
  // state0..2 of a bucket: the optimizer's state lists (momentum_buffer; exp_avg, exp_avg_sq, max_exp_avg_sq).
  virtual void collect_state(MasterParamState& state, Bucket& bucket) const = 0;
  virtual void launch(const torch::optim::OptimizerOptions& options, const Bucket& bucket,
                      const Scalars& scalars) = 0;

 private:
  at::Tensor grad_scale_, found_inf_, clip_coef_;
  std::vector<at::Tensor> lr_tensors_;  // per param group; undefined: the group's options().lr()
};

class SGD : public MasterWeightOptimizer {
 public:
  explicit SGD(const std::vector<torch::optim::OptimizerParamGroup>& param_groups, SGDOptions defaults = {});
  explicit SGD(std::vector<at::Tensor> params, SGDOptions defaults = {});
  const char* name() const override { return "SGD"; }

 protected:
  void check_options(const torch::optim::OptimizerOptions& options) const override;
  bool master_weights(const torch::optim::OptimizerOptions& options) const override;
  void init_state(MasterParamState& state, const at::Tensor& param,
                  const torch::optim::OptimizerOptions& options) const override;
  void collect_state(MasterParamState& state, Bucket& bucket) const override;
  void launch(const torch::optim::OptimizerOptions& options, const Bucket& bucket, const Scalars& scalars) override;
};

class Adam : public MasterWeightOptimizer {
 public:
  explicit Adam(const std::vector<torch::optim::OptimizerParamGroup>& param_groups, AdamOptions defaults = {});
  explicit Adam(std::vector<at::Tensor> params, AdamOptions defaults = {});
  const char* name() const override { return decoupled_ ? "AdamW" : "Adam"; }

 protected:
  Adam(const std::vector<torch::optim::OptimizerParamGroup>& param_groups, AdamOptions defaults, bool decoupled);
  void check_options(const torch::optim::OptimizerOptions& options) const override;
  bool master_weights(const torch::optim::OptimizerOptions& options) const override;
  void init_state(MasterParamState& state, const at::Tensor& param,
                  const torch::optim::OptimizerOptions& options) const override;
  void collect_state(MasterParamState& state, Bucket& bucket) const override;
  void launch(const torch::optim::OptimizerOptions& options, const Bucket& bucket, const Scalars& scalars) override;

 private:
  bool decoupled_;
};

class AdamW : public Adam {
 public:
  explicit AdamW(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
                 AdamOptions defaults = AdamWOptions());
  explicit AdamW(std::vector<at::Tensor> params, AdamOptions defaults = AdamWOptions());
};

}  // namespace optim
}  // namespace ampkit
