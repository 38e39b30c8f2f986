// The Python extension ampkit._C. The only translation unit that includes <torch/extension.h>:
// ops reach Python through torch.ops.ampkit (registered by libampkit); this module binds what
// the dispatcher cannot carry (build information, stateful C++ classes).
#include <torch/extension.h>

#include "ampkit/build_info.h"
#include "ampkit/fused_linear.h"
// ---- autocast policies ----
#include "autocast_bindings.h"
// ---- argument contracts (GradScaler options, optimizer hyper-parameters) ----
#include "contract_bindings.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "ampkit compiled core";
  module.def("build_info", [] {
    const ampkit::BuildInfo info = ampkit::build_info();
    pybind11::dict result;
    result["version"] = info.version;
    result["torch_version"] = info.torch_version;
    result["cuda"] = info.cuda;
    result["cuda_architectures"] = info.cuda_architectures;
    return result;
  });
  // The activation names of fused_linear, and their check (ampkit.nn reaches the op's rule).
  module.def("_fused_linear_activations", &ampkit::fused_linear_activations);
  module.def("_check_fused_linear_activation", [](const std::string& caller, const std::string& activation) {
    ampkit::check_fused_linear_activation(caller, activation);
  });
  // Diagnostics: fused vs unfused epilogue GEMMs of the CUDA fused_linear / fused_mlp kernels.
  module.def("_fused_epilogue_counts", [] {
    const ampkit::FusedEpilogueCounts counts = ampkit::fused_epilogue_counts();
    pybind11::dict result;
    result["fused"] = counts.fused;
    result["unfused"] = counts.unfused;
    return result;
  });
  module.def("_reset_fused_epilogue_counts", &ampkit::reset_fused_epilogue_counts);
  // ---- autocast policies: ampkit._C._AutocastPolicy, _AutocastRegion, ... ----
  ampkit::python::bind_autocast(module);
  // ---- the checks the Python GradScaler and optimizers share with C++: ampkit._C._check_* ----
  ampkit::python::bind_contracts(module);
}
