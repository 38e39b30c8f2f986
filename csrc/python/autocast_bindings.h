// pybind11 bindings of the autocast policy machinery (ampkit/autocast.h), used by
// python/ampkit/autocasting.py. Included by bindings.cpp only (the TU with <torch/extension.h>).
// Devices and dtypes cross as strings ("cpu", "bfloat16"); the Python layer converts.
#pragma once

#include <torch/extension.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ampkit/autocast.h"

namespace ampkit::python {

inline c10::DeviceType autocast_device_from(const std::string& name) { return c10::Device(name).type(); }

inline c10::ScalarType autocast_dtype_from(const std::string& name) {
  static const std::pair<const char*, c10::ScalarType> names[] = {
      {"float16", c10::kHalf}, {"bfloat16", c10::kBFloat16}, {"float32", c10::kFloat}, {"float64", c10::kDouble}};
  for (const auto& [text, dtype] : names) {
    if (name == text) return dtype;
  }
  TORCH_CHECK_VALUE(false, "ampkit autocast: dtype must be float16 or bfloat16, got ", name);
}

inline std::string autocast_dtype_name(c10::ScalarType dtype) {
  return dtype == c10::kHalf ? "float16" : dtype == c10::kBFloat16 ? "bfloat16" : c10::toString(dtype);
}

inline autocast::OpList autocast_list_from(const std::string& name) {
  for (auto list : {autocast::OpList::kAllow, autocast::OpList::kDeny, autocast::OpList::kPromote,
                    autocast::OpList::kPassthrough}) {
    if (autocast::list_name(list) == name) return list;
  }
  TORCH_CHECK_VALUE(false, "ampkit autocast: list must be allow, deny, promote or passthrough, got ", name);
}

// A region entered and left from Python (the `with` statement drives it).
class AutocastRegion {
 public:
  AutocastRegion(std::string device, std::optional<std::string> dtype, std::optional<autocast::Policy> policy,
                 bool enabled)
      : device_(autocast_device_from(device)), policy_(std::move(policy)), enabled_(enabled) {
    if (dtype) dtype_ = autocast_dtype_from(*dtype);
  }
  void enter() {
    TORCH_CHECK(!guard_, "ampkit.autocast: this region was entered already");
    if (policy_) {
      guard_ = std::make_unique<AutocastGuard>(*policy_, enabled_);
    } else if (dtype_) {
      guard_ = std::make_unique<AutocastGuard>(device_, *dtype_, enabled_);
    } else if (!enabled_) {
      guard_ = std::make_unique<AutocastGuard>(device_, c10::kBFloat16, false);
    } else {
      guard_ = std::make_unique<AutocastGuard>(device_);
    }
  }
  void exit() { guard_.reset(); }

 private:
  c10::DeviceType device_;
  std::optional<c10::ScalarType> dtype_;
  std::optional<autocast::Policy> policy_;
  bool enabled_;
  std::unique_ptr<AutocastGuard> guard_;
};

class ExplainRecording {
 public:
  void start() { recording_ = std::make_unique<autocast::Recording>(); }
  std::vector<autocast::OpRecord> stop() {
    TORCH_CHECK(recording_, "ampkit.explain: recording was not started");
    auto records = recording_->records();
    recording_.reset();
    return records;
  }

 private:
  std::unique_ptr<autocast::Recording> recording_;
};

inline void bind_autocast(pybind11::module& module) {
  namespace py = pybind11;
  using autocast::Policy;
  py::class_<Policy>(module, "_AutocastPolicy")
      .def(py::init([](const std::string& device, const std::string& dtype, const std::vector<std::string>& allow,
                       const std::vector<std::string>& deny, const std::vector<std::string>& promote,
                       const std::vector<std::string>& passthrough) {
             return Policy(autocast_device_from(device), autocast_dtype_from(dtype), allow, deny, promote, passthrough);
           }),
           py::arg("device_type"), py::arg("dtype"), py::arg("allow"), py::arg("deny"), py::arg("promote"),
           py::arg("passthrough"))
      .def_static("torch_default",
                  [](const std::string& device, const std::string& dtype) {
                    return Policy::torch_default(autocast_device_from(device), autocast_dtype_from(dtype));
                  })
      .def("allow", &Policy::allow)
      .def("deny", &Policy::deny)
      .def("promote", &Policy::promote)
      .def("passthrough", &Policy::passthrough)
      .def("with_dtype", [](const Policy& self, const std::string& dtype) { return self.with_dtype(autocast_dtype_from(dtype)); })
      .def_property_readonly("device_type", [](const Policy& self) { return c10::DeviceTypeName(self.device_type(), true); })
      .def_property_readonly("dtype", [](const Policy& self) { return autocast_dtype_name(self.dtype()); })
      .def("list_of",
           [](const Policy& self, const std::string& op) -> std::optional<std::string> {
             const auto list = self.list_of(op);
             if (!list) return std::nullopt;
             return autocast::list_name(*list);
           })
      .def("ops", [](const Policy& self, const std::string& list) { return self.ops(autocast_list_from(list)); })
      .def("__eq__", [](const Policy& self, const Policy& other) { return self == other; });

  module.def("_autocast_install", &autocast::install);
  module.def("_autocast_uninstall", &autocast::uninstall);
  module.def("_autocast_is_installed",
             [](const std::string& device) { return autocast::is_installed(autocast_device_from(device)); });
  module.def("_autocast_set_global_policy", [](const Policy& policy) { autocast::set_global_policy(policy); });
  module.def("_autocast_set_global_policy_name", [](const std::string& name) { autocast::set_global_policy(name); });
  module.def("_autocast_clear_global_policy", &autocast::clear_global_policy);
  module.def("_autocast_global_policy",
             [](const std::string& device) { return autocast::global_policy(autocast_device_from(device)); });
  module.def("_autocast_global_policy_is_float32",
             [](const std::string& device) { return autocast::global_policy_is_float32(autocast_device_from(device)); });
  // torch's own routing as ampkit mirrors it: [(op, route)] for ops torch routes on the device.
  module.def("_autocast_torch_routes",
             [](const std::string& device) { return autocast::torch_routes(autocast_device_from(device)); });

  py::class_<AutocastRegion>(module, "_AutocastRegion")
      .def(py::init<std::string, std::optional<std::string>, std::optional<Policy>, bool>(), py::arg("device_type"),
           py::arg("dtype"), py::arg("policy"), py::arg("enabled"))
      .def("enter", &AutocastRegion::enter)
      .def("exit", &AutocastRegion::exit);

  py::class_<autocast::OpRecord>(module, "_OpRecord")
      .def_readonly("op", &autocast::OpRecord::op)
      .def_readonly("list", &autocast::OpRecord::list)
      .def_readonly("inputs", &autocast::OpRecord::inputs)
      .def_readonly("outputs", &autocast::OpRecord::outputs);
  py::class_<ExplainRecording>(module, "_ExplainRecording")
      .def(py::init<>())
      .def("start", &ExplainRecording::start)
      .def("stop", &ExplainRecording::stop);
}

}  // namespace ampkit::python
