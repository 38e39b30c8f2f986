// Argument contracts with one home: the GradScaler options and optimizer hyper-parameters. The
// ops (update_scale_, master_sgd_step_, master_adam_step_), the C++ API (ampkit::GradScaler,
// ampkit::optim) and the Python package (through ampkit._C) all check here, so each rule is
// written once. A failure throws c10::ValueError ("<prefix>: <argument><suffix> must be
// <expected>, got <value>"), which Python sees as ValueError.
//
// The scale's reciprocal, the other rule the scaler and the optimizers share, is an op:
// ampkit::reciprocal_scale (ampkit/loss_scaling.h).
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>

namespace ampkit::contracts {

// Whom a message is written for: numbers and bounds read the way that caller writes them.
enum class Audience {
  Cpp,     // 1, 0.5, 2^31-1, "inf for no bound" (the C++ API and the ops)
  Python,  // 1.0, 0.5, 2**31-1, "or None" (the Python package)
};

// How an optimizer hyper-parameter is named and its expectation phrased.
enum class Form {
  Options,       // betas[0]; "a finite number", then the bounds (the optimizers' options)
  OpArguments,  // beta1; finiteness and bounds in one clause (the op's arguments)
};

// Where a check runs. Messages read "<prefix>: <argument><suffix> must be ...".
struct Context {
  Context(std::string prefix, Audience audience = Audience::Cpp, std::string suffix = "",  // NOLINT: {"prefix"}
          Form form = Form::Options)
      : prefix(std::move(prefix)), audience(audience), suffix(std::move(suffix)), form(form) {}

  std::string prefix;  // "ampkit::GradScaler", "GradScaler", "ampkit.update_scale_", ...
  Audience audience;
  std::string suffix;  // " of group 1": which optimizer param group
  Form form;
};

// ---- dynamic loss scaling ----

struct LossScaleOptions {
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
  int64_t hysteresis = 1;
  double min_scale = 0.0;                                      // 0: no lower bound
  double max_scale = std::numeric_limits<double>::infinity();  // inf: no upper bound
};

// growth_factor finite and > 1; backoff_factor in (0, 1); growth_interval and hysteresis in
// [1, 2^31-1] (their trackers are int32); min_scale finite and >= 0; max_scale > 0; min_scale <=
// max_scale.
void check_loss_scale_options(const LossScaleOptions& options, const Context& context);

// A loss-scale value (init_scale, a loaded scale, update(new_scale)): finite and > 0.
void check_scale_value(const char* name, double value, const Context& context);

// ---- optimizer hyper-parameters (torch.optim's ranges) ----
// lr is absent where it is a device tensor (the ops take it so; it is not read on the host).

struct SgdHyperparameters {
  std::optional<double> lr;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

// lr >= 0, momentum >= 0, weight_decay >= 0, all finite; dampening finite; nesterov needs
// momentum > 0 and dampening == 0.
void check_sgd_hyperparameters(const SgdHyperparameters& hyper, const Context& context);

struct AdamHyperparameters {
  std::optional<double> lr;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

// lr >= 0, betas in [0, 1), eps > 0, weight_decay >= 0, all finite.
void check_adam_hyperparameters(const AdamHyperparameters& hyper, const Context& context);

// How `value` reads for `audience` (1 or 1.0, nan, inf, 1e-08): for messages about a value.
std::string format_number(double value, Audience audience);

}  // namespace ampkit::contracts
