// The Python extension ampkit._C. The only translation unit that includes <torch/extension.h>:
// ops reach Python through torch.ops.ampkit (registered by libampkit); this module binds what
// the dispatcher cannot carry (build information, stateful C++ classes).
#include <torch/extension.h>

#include "ampkit/build_info.h"
// ---- autocast policies ----
#include "autocast_bindings.h"

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
  // ---- autocast policies: ampkit._C._AutocastPolicy, _AutocastRegion, ... ----
  ampkit::python::bind_autocast(module);
}
