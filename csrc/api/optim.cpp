#include "ampkit/optim.h"

#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/GradMode.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <map>
#include <optional>
#include <unordered_set>
#include <utility>
#include <tuple>

#include "ampkit/contracts.h"
#include "ampkit/loss_scaling.h"
#include "ops/op_lookup.h"
#include "ops/validation.h"

namespace ampkit {

void master_sgd_step_(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                      at::TensorList momentum_buffers, at::TensorList steps, const at::Tensor& lr,
                      const at::Tensor& inv_scale, const at::Tensor& clip_coef, const std::optional<at::Tensor>& found_inf,
                      double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
                      bool write_back_grads) {
  static const auto op = detail::find_typed_op<void(
      at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList, const at::Tensor&,
      const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double, double, double, bool, bool,
      bool)>("ampkit::master_sgd_step_");
  op.call(params, master_params, grads, momentum_buffers, steps, lr, inv_scale, clip_coef, found_inf, momentum,
          dampening, weight_decay, nesterov, maximize, write_back_grads);
}

void master_adam_step_(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                       at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                       at::TensorList steps, const at::Tensor& lr, const at::Tensor& inv_scale,
                       const at::Tensor& clip_coef, const std::optional<at::Tensor>& found_inf, double beta1,
                       double beta2, double eps, double weight_decay, bool decoupled_weight_decay, bool maximize,
                       bool write_back_grads) {
  static const auto op = detail::find_typed_op<void(
      at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double, double,
      double, double, bool, bool, bool)>("ampkit::master_adam_step_");
  op.call(params, master_params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, inv_scale, clip_coef,
          found_inf, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize, write_back_grads);
}

namespace optim {
namespace {

using torch::optim::OptimizerOptions;
using torch::optim::OptimizerParamGroup;

// Zeros for a master or a state tensor: in the parameter's layout when it is flat in memory, so the
// fused kernels walk parameter, gradient, master and state in one order (channels_last stays
// channels_last); contiguous otherwise, since the step then works on a dense copy of the parameter.
at::Tensor state_like(const at::Tensor& param, at::ScalarType dtype) {
  const auto memory_format =
      detail::is_flat_in_memory(param) ? at::MemoryFormat::Preserve : at::MemoryFormat::Contiguous;
  return at::zeros_like(param, param.options().dtype(dtype), memory_format);
}

bool in_layout_of(const at::Tensor& tensor, const at::Tensor& param) {
  return detail::is_flat_in_memory(param) ? detail::same_memory_order(tensor, param) : tensor.is_contiguous();
}

bool is_supported_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble;
}

// float64 params keep float64 state (torch's rule: state in the param's dtype); the others FP32.
at::ScalarType state_dtype(const at::Tensor& param) {
  return param.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The names every optimizer state may have, for the archive checks.
constexpr const char* kStateNames[] = {"step", "master", "momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};

template <typename Options>
const Options& options_as(const OptimizerOptions& options, const char* optimizer, const char* expected) {
  const auto* typed = dynamic_cast<const Options*>(&options);
  TORCH_CHECK_TYPE(typed != nullptr, "ampkit::optim::", optimizer, ": parameter group options must be ", expected);
  return *typed;
}

// Archive keys.
std::string group_key(size_t group, const char* what) { return "group." + std::to_string(group) + "." + what; }
std::string state_key(size_t group, size_t index, const char* what) {
  return "state." + std::to_string(group) + "." + std::to_string(index) + "." + what;
}

// The state tensors of a parameter, by name; undefined ones are absent.
std::vector<std::pair<const char*, at::Tensor*>> named_state(MasterParamState& state) {
  std::vector<std::pair<const char*, at::Tensor*>> result;
  auto add = [&](const char* name, at::Tensor& tensor) {
    if (tensor.defined()) result.emplace_back(name, &tensor);
  };
  add("step", state.step());
  add("master", state.master());
  add("momentum_buffer", state.momentum_buffer());
  add("exp_avg", state.exp_avg());
  add("exp_avg_sq", state.exp_avg_sq());
  add("max_exp_avg_sq", state.max_exp_avg_sq());
  return result;
}

// The parameter changed layout since its state was made (model->to(channels_last) replaces the
// parameter's data): a one-time copy of master and state into the new layout.
void lay_out_state_like(MasterParamState& state, const at::Tensor& param) {
  for (const auto& [key, tensor] : named_state(state)) {
    if (tensor->sizes() == param.sizes() && tensor->dim() > 0 && !in_layout_of(*tensor, param)) {
      *tensor = state_like(param, tensor->scalar_type()).copy_(*tensor);
    }
  }
}

// Reads an entry that must exist: a missing one or one of another type is a clear error naming the
// key, not LibTorch's "No such serialized IValue" or "Expected Double but got String".
c10::IValue read_entry(torch::serialize::InputArchive& archive, const std::string& key, const char* where) {
  c10::IValue value;
  TORCH_CHECK_VALUE(archive.try_read(key, value), "ampkit::optim: ", where, " has no entry '", key,
                    "' (was it written by an ampkit optimizer's save?)");
  return value;
}

double read_double(torch::serialize::InputArchive& archive, const std::string& key) {
  const c10::IValue value = read_entry(archive, key, "the archive's parameter group options");
  TORCH_CHECK_TYPE(value.isDouble() || value.isInt(), "ampkit::optim: option '", key,
                   "' in the archive must be a number, got ", value.tagKind());
  return value.isDouble() ? value.toDouble() : static_cast<double>(value.toInt());
}

bool read_bool(torch::serialize::InputArchive& archive, const std::string& key) {
  const c10::IValue value = read_entry(archive, key, "the archive's parameter group options");
  TORCH_CHECK_TYPE(value.isBool(), "ampkit::optim: option '", key, "' in the archive must be a bool, got ",
                   value.tagKind());
  return value.toBool();
}

int64_t read_count(torch::serialize::InputArchive& archive, const std::string& key) {
  const c10::IValue value = read_entry(archive, key, "the archive");
  TORCH_CHECK_TYPE(value.isInt(), "ampkit::optim: '", key, "' in the archive must be an int, got ", value.tagKind());
  return value.toInt();
}

// A saved state tensor against the one it replaces: same shape and dtype, dense, finite; the step
// counter a whole number >= 0 and exp_avg_sq >= 0 (a negative one would make the update NaN).
void check_saved_state(const char* optimizer, const char* key, size_t index, size_t group, const at::Tensor& saved,
                       const at::Tensor& current) {
  auto where = [&] {
    return c10::str("ampkit::optim::", optimizer, "::load: '", key, "' of params[", index, "] of group ", group);
  };
  TORCH_CHECK_VALUE(saved.sizes() == current.sizes(), where(), " has shape ", saved.sizes(),
                    " in the archive, but the parameter needs ", current.sizes(), " (a model of another shape?)");
  TORCH_CHECK_TYPE(saved.scalar_type() == current.scalar_type() && saved.layout() == at::kStrided &&
                       !saved.is_meta(),
                   where(), " must be a dense ", c10::toString(current.scalar_type()), " tensor, got a ",
                   c10::toString(saved.scalar_type()), " ", saved.layout(), " tensor on ", saved.device());
  // Loading may read values on the host; stepping never does.
  TORCH_CHECK_VALUE(saved.isfinite().all().item<bool>(), where(), " holds inf or NaN");
  if (std::string(key) == "step") {
    TORCH_CHECK_VALUE((saved.ge(0) & saved.eq(saved.floor())).all().item<bool>(), where(),
                      " must be a whole number >= 0, got ", saved.item<double>());
  }
  if (std::string(key) == "exp_avg_sq" || std::string(key) == "max_exp_avg_sq") {
    TORCH_CHECK_VALUE(saved.ge(0).all().item<bool>(), where(), " must be >= 0 (a running mean of squares)");
  }
}

}  // namespace

// ---- options serialisation ----

void SGDOptions::serialize(torch::serialize::OutputArchive& archive) const {
  archive.write("lr", c10::IValue(lr()));
  archive.write("momentum", c10::IValue(momentum()));
  archive.write("dampening", c10::IValue(dampening()));
  archive.write("weight_decay", c10::IValue(weight_decay()));
  archive.write("nesterov", c10::IValue(nesterov()));
  archive.write("maximize", c10::IValue(maximize()));
  archive.write("master_weights", c10::IValue(master_weights()));
}

void SGDOptions::serialize(torch::serialize::InputArchive& archive) {
  lr(read_double(archive, "lr"));
  momentum(read_double(archive, "momentum"));
  dampening(read_double(archive, "dampening"));
  weight_decay(read_double(archive, "weight_decay"));
  nesterov(read_bool(archive, "nesterov"));
  maximize(read_bool(archive, "maximize"));
  master_weights(read_bool(archive, "master_weights"));
}

void AdamOptions::serialize(torch::serialize::OutputArchive& archive) const {
  archive.write("lr", c10::IValue(lr()));
  archive.write("beta1", c10::IValue(std::get<0>(betas())));
  archive.write("beta2", c10::IValue(std::get<1>(betas())));
  archive.write("eps", c10::IValue(eps()));
  archive.write("weight_decay", c10::IValue(weight_decay()));
  archive.write("amsgrad", c10::IValue(amsgrad()));
  archive.write("maximize", c10::IValue(maximize()));
  archive.write("master_weights", c10::IValue(master_weights()));
}

void AdamOptions::serialize(torch::serialize::InputArchive& archive) {
  lr(read_double(archive, "lr"));
  betas(std::make_tuple(read_double(archive, "beta1"), read_double(archive, "beta2")));
  eps(read_double(archive, "eps"));
  weight_decay(read_double(archive, "weight_decay"));
  // Archives written before amsgrad existed have no entry: they come from amsgrad=false.
  c10::IValue saved_amsgrad;
  amsgrad(archive.try_read("amsgrad", saved_amsgrad) ? read_bool(archive, "amsgrad") : false);
  maximize(read_bool(archive, "maximize"));
  master_weights(read_bool(archive, "master_weights"));
}

// ---- MasterWeightOptimizer ----

MasterWeightOptimizer::MasterWeightOptimizer(const std::vector<OptimizerParamGroup>& param_groups,
                                             std::unique_ptr<OptimizerOptions> defaults)
    : torch::optim::Optimizer(param_groups, std::move(defaults)) {}

void MasterWeightOptimizer::initialise() {
  check_options(defaults());
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    auto& group = param_groups_[g];
    check_options(group.options());
    std::optional<c10::Device> device;
    for (size_t i = 0; i < group.params().size(); ++i) {
      const auto& param = group.params()[i];
      TORCH_CHECK_TYPE(param.defined() && is_supported_dtype(param.scalar_type()), "ampkit::optim::", name(),
                       ": params[", i, "] of group ", g, " must be float32, float16, bfloat16 or float64, got ",
                       param.defined() ? c10::toString(param.scalar_type()) : "an undefined tensor");
      if (!device) device = param.device();
      TORCH_CHECK_VALUE(param.device() == *device, "ampkit::optim::", name(),
                        ": the params of one group must be on one device: params[0] of group ", g, " is on ",
                        *device, ", params[", i, "] on ", param.device());
    }
    // A parameter listed twice would be updated twice per step.
    std::unordered_set<const void*> seen;
    for (size_t i = 0; i < group.params().size(); ++i) {
      TORCH_CHECK_VALUE(seen.insert(group.params()[i].unsafeGetTensorImpl()).second, "ampkit::optim::", name(),
                        ": params[", i, "] of group ", g, " appears twice in the group; pass each parameter once");
    }
    for (const auto& param : group.params()) state_for(param, group);
  }
}

MasterParamState& MasterWeightOptimizer::state_for(const at::Tensor& param, const OptimizerParamGroup& group) {
  auto& slot = state_[param.unsafeGetTensorImpl()];
  if (!slot) {
    const at::NoGradGuard no_grad;
    auto state = std::make_unique<MasterParamState>();
    state->step(at::zeros({}, param.options().dtype(at::kFloat)));
    // float32 and float64 params are their own masters.
    if (master_weights(group.options()) && (param.scalar_type() == at::kHalf || param.scalar_type() == at::kBFloat16)) {
      state->master(state_like(param, at::kFloat).copy_(param.detach()));
    }
    init_state(*state, param, group.options());
    slot = std::move(state);
  }
  return static_cast<MasterParamState&>(*slot);
}

void MasterWeightOptimizer::set_grad_scaling(const at::Tensor& grad_scale, const at::Tensor& found_inf) {
  grad_scale_ = grad_scale;
  found_inf_ = found_inf;
}

void MasterWeightOptimizer::set_clip_coef(const at::Tensor& clip_coef) { clip_coef_ = clip_coef; }

void MasterWeightOptimizer::set_lr_tensor(size_t group_index, const at::Tensor& lr) {
  TORCH_CHECK_INDEX(group_index < param_groups_.size(), "ampkit::optim::", name(), "::set_lr_tensor: group_index ",
                    group_index, " is out of range: the optimizer has ", param_groups_.size(), " param groups");
  if (lr.defined()) {
    TORCH_CHECK_VALUE(lr.numel() == 1, "ampkit::optim::", name(),
                      "::set_lr_tensor: lr must be a one-element float32 tensor, got ", lr.numel(), " elements");
    TORCH_CHECK_TYPE(lr.scalar_type() == at::kFloat, "ampkit::optim::", name(),
                     "::set_lr_tensor: lr must be a one-element float32 tensor, got dtype ",
                     c10::toString(lr.scalar_type()));
  }
  if (lr_tensors_.size() < param_groups_.size()) lr_tensors_.resize(param_groups_.size());
  lr_tensors_[group_index] = lr;
}

std::vector<at::Tensor> MasterWeightOptimizer::master_params() {
  std::vector<at::Tensor> result;
  for (auto& group : param_groups_) {
    for (auto& param : group.params()) {
      auto& state = state_for(param, group);
      result.push_back(state.master().defined() ? state.master() : param);
    }
  }
  return result;
}

torch::Tensor MasterWeightOptimizer::step(LossClosure closure) {
  at::Tensor loss;
  if (closure) {
    const at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  const at::NoGradGuard no_grad;
  // The scaling inputs apply to this step only.
  const at::Tensor grad_scale = std::exchange(grad_scale_, at::Tensor());
  const at::Tensor found_inf = std::exchange(found_inf_, at::Tensor());
  const at::Tensor clip_coef = std::exchange(clip_coef_, at::Tensor());
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    auto& group = param_groups_[g];
    check_options(group.options());
    // Bucket by (device, param dtype, grad dtype, has master): each bucket is one fused launch.
    std::map<std::tuple<std::string, int, int, bool>, Bucket> buckets;
    for (size_t i = 0; i < group.params().size(); ++i) {
      const auto& param = group.params()[i];
      const at::Tensor& grad = param.grad();
      if (!grad.defined()) continue;
      TORCH_CHECK(!grad.is_sparse(), "ampkit::optim::", name(), ": params[", i, "] of group ", g,
                  " has a sparse gradient; sparse gradients are not supported");
      // float64 params compute in double from float64 grads; the others take fp32/fp16/bf16 grads.
      const bool float64_param = param.scalar_type() == at::kDouble;
      const bool grad_supported = float64_param ? grad.scalar_type() == at::kDouble
                                                : is_supported_dtype(grad.scalar_type()) && grad.scalar_type() != at::kDouble;
      TORCH_CHECK_TYPE(grad_supported, "ampkit::optim::", name(), ": params[", i, "] of group ", g, " has a ",
                       c10::toString(grad.scalar_type()), " gradient; supported: ",
                       float64_param ? "float64 (the dtype of the float64 param)" : "float32, float16, bfloat16");
      auto& state = state_for(param, group);
      lay_out_state_like(state, param);
      auto& bucket = buckets[{param.device().str(), static_cast<int>(param.scalar_type()),
                              static_cast<int>(grad.scalar_type()), state.master().defined()}];
      // A parameter that is not flat in memory (a strided slice) is stepped through a dense copy; a
      // gradient in another memory order through a copy in the parameter's order. Both are copied
      // back after the launch (the step may write the gradient too).
      at::Tensor target = param;
      if (!detail::is_flat_in_memory(param)) {
        target = param.detach().clone(at::MemoryFormat::Contiguous);
        bucket.copy_backs.emplace_back(param, target);
      }
      at::Tensor kernel_grad = grad;
      if (!detail::same_memory_order(grad, target)) {
        kernel_grad = at::empty_like(target, grad.options()).copy_(grad);
        bucket.copy_backs.emplace_back(grad, kernel_grad);
      }
      bucket.params.push_back(target);
      if (state.master().defined()) bucket.masters.push_back(state.master());
      bucket.grads.push_back(kernel_grad);
      bucket.steps.push_back(state.step());
      collect_state(state, bucket);
    }
    for (auto& entry : buckets) {
      const Bucket& bucket = entry.second;
      const auto options = at::TensorOptions().dtype(at::kFloat).device(bucket.params[0].device());
      auto device_scalar = [&](const at::Tensor& value, double fallback) {
        if (!value.defined()) return at::full({1}, fallback, options);
        return value.to(options, /*non_blocking=*/true).reshape({1});
      };
      Scalars scalars;
      const bool lr_on_device = g < lr_tensors_.size() && lr_tensors_[g].defined();
      // float64 params take lr in double, so torch's double lr reaches their update unrounded.
      const auto lr_options = options.dtype(state_dtype(bucket.params[0]));
      scalars.lr = lr_on_device ? lr_tensors_[g].to(lr_options, /*non_blocking=*/true).reshape({1})
                                : at::full({1}, group.options().get_lr(), lr_options);
      scalars.inv_scale = grad_scale.defined()
                              ? reciprocal_scale(grad_scale.to(bucket.params[0].device())).reshape({1})
                              : at::full({1}, 1.0, options);
      scalars.clip_coef = device_scalar(clip_coef, 1.0);
      if (found_inf.defined()) scalars.found_inf = device_scalar(found_inf, 0.0);
      scalars.write_back_grads = grad_scale.defined() || clip_coef.defined();
      launch(group.options(), bucket, scalars);
      for (const auto& [original, dense_copy] : bucket.copy_backs) original.copy_(dense_copy);
    }
  }
  return loss;
}

void MasterWeightOptimizer::save(torch::serialize::OutputArchive& archive) const {
  archive.write("ampkit_optimizer", c10::IValue(std::string(name())));
  archive.write("group_count", c10::IValue(static_cast<int64_t>(param_groups_.size())));
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    const auto& group = param_groups_[g];
    torch::serialize::OutputArchive options_archive(archive.compilation_unit());
    group.options().serialize(options_archive);
    archive.write(group_key(g, "options"), options_archive);
    archive.write(group_key(g, "size"), c10::IValue(static_cast<int64_t>(group.params().size())));
    for (size_t i = 0; i < group.params().size(); ++i) {
      const auto found = state_.find(group.params()[i].unsafeGetTensorImpl());
      if (found == state_.end()) continue;
      auto& state = static_cast<MasterParamState&>(*found->second);
      for (const auto& [key, tensor] : named_state(state)) archive.write(state_key(g, i, key), *tensor);
    }
  }
}

void MasterWeightOptimizer::load(torch::serialize::InputArchive& archive) {
  c10::IValue origin;
  const bool has_origin = archive.try_read("ampkit_optimizer", origin) && origin.isString();
  TORCH_CHECK_VALUE(has_origin && origin.toStringRef() == name(), "ampkit::optim::", name(),
                    "::load: the archive comes from ",
                    has_origin ? "ampkit::optim::" + origin.toStringRef() : std::string("a non-ampkit optimizer"),
                    ", expected one from ampkit::optim::", name());
  const int64_t group_count = read_count(archive, "group_count");
  TORCH_CHECK_VALUE(group_count == static_cast<int64_t>(param_groups_.size()), "ampkit::optim::", name(),
                    "::load: the archive has ", group_count, " parameter groups, this optimizer has ",
                    param_groups_.size());
  // Read and check everything before changing anything.
  std::vector<std::pair<at::Tensor*, at::Tensor>> copies;
  std::vector<std::unique_ptr<OptimizerOptions>> new_options;
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    auto& group = param_groups_[g];
    const int64_t size = read_count(archive, group_key(g, "size"));
    TORCH_CHECK_VALUE(size == static_cast<int64_t>(group.params().size()), "ampkit::optim::", name(),
                      "::load: group ", g, " of the archive has ", size, " params, this optimizer's has ",
                      group.params().size());
    torch::serialize::InputArchive options_archive;
    TORCH_CHECK_VALUE(archive.try_read(group_key(g, "options"), options_archive), "ampkit::optim::", name(),
                      "::load: the archive has no options for group ", g);
    auto options = group.options().clone();
    options->serialize(options_archive);
    check_options(*options);
    new_options.push_back(std::move(options));
    for (size_t i = 0; i < group.params().size(); ++i) {
      auto& state = state_for(group.params()[i], group);
      for (const auto& [key, tensor] : named_state(state)) {
        c10::IValue saved;
        TORCH_CHECK_VALUE(archive.try_read(state_key(g, i, key), saved), "ampkit::optim::", name(),
                          "::load: the archive has no '", key, "' for params[", i, "] of group ", g,
                          " (a different optimizer configuration, master_weights or parameter dtype)");
        TORCH_CHECK_TYPE(saved.isTensor(), "ampkit::optim::", name(), "::load: '", key, "' of params[", i,
                         "] of group ", g, " must be a tensor, got ", saved.tagKind());
        check_saved_state(name(), key, i, g, saved.toTensor(), *tensor);
        copies.emplace_back(tensor, saved.toTensor());
      }
      for (const char* key : kStateNames) {
        bool held = false;
        for (const auto& entry : named_state(state)) held = held || std::string(entry.first) == key;
        c10::IValue unexpected;
        TORCH_CHECK_VALUE(held || !archive.try_read(state_key(g, i, key), unexpected), "ampkit::optim::", name(),
                          "::load: the archive has '", key, "' for params[", i, "] of group ", g,
                          ", which this optimizer does not keep (a different optimizer configuration, amsgrad, "
                          "master_weights or parameter dtype)");
      }
    }
  }
  const at::NoGradGuard no_grad;
  for (auto& [target, saved] : copies) target->copy_(saved);
  for (size_t g = 0; g < param_groups_.size(); ++g) param_groups_[g].set_options(std::move(new_options[g]));
}

// ---- SGD ----

SGD::SGD(const std::vector<OptimizerParamGroup>& param_groups, SGDOptions defaults)
    : MasterWeightOptimizer(param_groups, std::make_unique<SGDOptions>(defaults)) {
  initialise();
}

SGD::SGD(std::vector<at::Tensor> params, SGDOptions defaults)
    : SGD(std::vector<OptimizerParamGroup>{OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void SGD::check_options(const OptimizerOptions& options) const {
  const auto& o = options_as<SGDOptions>(options, "SGD", "ampkit::optim::SGDOptions");
  contracts::check_sgd_hyperparameters({o.lr(), o.momentum(), o.dampening(), o.weight_decay(), o.nesterov()},
                                       {"ampkit::optim::SGD"});
}

bool SGD::master_weights(const OptimizerOptions& options) const {
  return static_cast<const SGDOptions&>(options).master_weights();
}

void SGD::init_state(MasterParamState& state, const at::Tensor& param, const OptimizerOptions& options) const {
  if (static_cast<const SGDOptions&>(options).momentum() != 0) {
    state.momentum_buffer(state_like(param, state_dtype(param)));
  }
}

void SGD::collect_state(MasterParamState& state, Bucket& bucket) const {
  if (state.momentum_buffer().defined()) bucket.state0.push_back(state.momentum_buffer());
}

void SGD::launch(const OptimizerOptions& options, const Bucket& bucket, const Scalars& scalars) {
  const auto& o = static_cast<const SGDOptions&>(options);
  TORCH_CHECK(o.momentum() == 0 || bucket.state0.size() == bucket.params.size(),
              "ampkit::optim::SGD: momentum was switched on after the optimizer was built; build a new optimizer");
  master_sgd_step_(bucket.params, bucket.masters, bucket.grads, o.momentum() != 0 ? bucket.state0 : std::vector<at::Tensor>{},
                   bucket.steps, scalars.lr, scalars.inv_scale, scalars.clip_coef, scalars.found_inf, o.momentum(),
                   o.dampening(), o.weight_decay(), o.nesterov(), o.maximize(), scalars.write_back_grads);
}

// ---- Adam, AdamW ----

Adam::Adam(const std::vector<OptimizerParamGroup>& param_groups, AdamOptions defaults)
    : Adam(param_groups, std::move(defaults), /*decoupled=*/false) {}

Adam::Adam(std::vector<at::Tensor> params, AdamOptions defaults)
    : Adam(std::vector<OptimizerParamGroup>{OptimizerParamGroup(std::move(params))}, std::move(defaults), false) {}

Adam::Adam(const std::vector<OptimizerParamGroup>& param_groups, AdamOptions defaults, bool decoupled)
    : MasterWeightOptimizer(param_groups, std::make_unique<AdamOptions>(defaults)), decoupled_(decoupled) {
  initialise();
}

void Adam::check_options(const OptimizerOptions& options) const {
  const auto& o = options_as<AdamOptions>(options, name(), "ampkit::optim::AdamOptions or AdamWOptions");
  contracts::check_adam_hyperparameters(
      {o.lr(), std::get<0>(o.betas()), std::get<1>(o.betas()), o.eps(), o.weight_decay()},
      {std::string("ampkit::optim::") + name()});
}

bool Adam::master_weights(const OptimizerOptions& options) const {
  return static_cast<const AdamOptions&>(options).master_weights();
}

void Adam::init_state(MasterParamState& state, const at::Tensor& param, const OptimizerOptions& options) const {
  state.exp_avg(state_like(param, state_dtype(param)));
  state.exp_avg_sq(state_like(param, state_dtype(param)));
  if (static_cast<const AdamOptions&>(options).amsgrad()) state.max_exp_avg_sq(at::zeros_like(state.exp_avg_sq()));
}

void Adam::collect_state(MasterParamState& state, Bucket& bucket) const {
  bucket.state0.push_back(state.exp_avg());
  bucket.state1.push_back(state.exp_avg_sq());
  if (state.max_exp_avg_sq().defined()) bucket.state2.push_back(state.max_exp_avg_sq());
}

void Adam::launch(const OptimizerOptions& options, const Bucket& bucket, const Scalars& scalars) {
  const auto& o = static_cast<const AdamOptions&>(options);
  TORCH_CHECK(!o.amsgrad() || bucket.state2.size() == bucket.params.size(), "ampkit::optim::", name(),
              ": amsgrad was switched on after the optimizer was built; build a new optimizer");
  master_adam_step_(bucket.params, bucket.masters, bucket.grads, bucket.state0, bucket.state1,
                    o.amsgrad() ? bucket.state2 : std::vector<at::Tensor>{}, bucket.steps, scalars.lr,
                    scalars.inv_scale, scalars.clip_coef, scalars.found_inf, std::get<0>(o.betas()),
                    std::get<1>(o.betas()), o.eps(), o.weight_decay(), decoupled_, o.maximize(),
                    scalars.write_back_grads);
}

AdamW::AdamW(const std::vector<OptimizerParamGroup>& param_groups, AdamOptions defaults)
    : Adam(param_groups, std::move(defaults), /*decoupled=*/true) {}

AdamW::AdamW(std::vector<at::Tensor> params, AdamOptions defaults)
    : Adam(std::vector<OptimizerParamGroup>{OptimizerParamGroup(std::move(params))}, std::move(defaults), true) {}

}  // namespace optim
}  // namespace ampkit
