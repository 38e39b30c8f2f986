// pybind11 bindings of the argument contracts (ampkit/contracts.h), so the Python GradScaler and
// optimizers check their options by the same rules, and with the same messages (spelled for
// Python), as the C++ API and the ops. Included by bindings.cpp only. Python checks the types
// before calling (a float where a float is expected); these check the values.
#pragma once

#include <torch/extension.h>

#include <limits>
#include <optional>
#include <string>

#include "ampkit/contracts.h"

namespace ampkit::python {

inline contracts::Context python_context(std::string prefix, std::string suffix = "") {
  return {std::move(prefix), contracts::Audience::Python, std::move(suffix), contracts::Form::Options};
}

inline void bind_contracts(pybind11::module& module) {
  namespace py = pybind11;
  // min_scale / max_scale: None is no bound (C++ spells it 0 / inf).
  module.def(
      "_check_grad_scaler_options",
      [](const std::string& prefix, const std::string& scale_name, double scale, double growth_factor,
         double backoff_factor, int64_t growth_interval, int64_t hysteresis, std::optional<double> min_scale,
         std::optional<double> max_scale) {
        const contracts::Context context = python_context(prefix);
        contracts::check_scale_value(scale_name.c_str(), scale, context);
        contracts::check_loss_scale_options(
            {growth_factor, backoff_factor, growth_interval, hysteresis, min_scale.value_or(0.0),
             max_scale.value_or(std::numeric_limits<double>::infinity())},
            context);
      },
      py::arg("prefix"), py::arg("scale_name"), py::arg("scale"), py::arg("growth_factor"), py::arg("backoff_factor"),
      py::arg("growth_interval"), py::arg("hysteresis"), py::arg("min_scale"), py::arg("max_scale"));
  module.def(
      "_check_scale_value",
      [](const std::string& prefix, const std::string& name, double value) {
        contracts::check_scale_value(name.c_str(), value, python_context(prefix));
      },
      py::arg("prefix"), py::arg("name"), py::arg("value"));
  // lr None: a device tensor, whose value is not read on the host.
  module.def(
      "_check_sgd_hyperparameters",
      [](const std::string& prefix, const std::string& suffix, std::optional<double> lr, double momentum,
         double dampening, double weight_decay, bool nesterov) {
        contracts::check_sgd_hyperparameters({lr, momentum, dampening, weight_decay, nesterov},
                                             python_context(prefix, suffix));
      },
      py::arg("prefix"), py::arg("suffix"), py::arg("lr"), py::arg("momentum"), py::arg("dampening"),
      py::arg("weight_decay"), py::arg("nesterov"));
  module.def(
      "_check_adam_hyperparameters",
      [](const std::string& prefix, const std::string& suffix, std::optional<double> lr, double beta1, double beta2,
         double eps, double weight_decay) {
        contracts::check_adam_hyperparameters({lr, beta1, beta2, eps, weight_decay}, python_context(prefix, suffix));
      },
      py::arg("prefix"), py::arg("suffix"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
      py::arg("weight_decay"));
}

}  // namespace ampkit::python
