// Registration helpers shared by the op files in csrc/ops (the schemas are in registration.cpp).
#pragma once

#include <torch/library.h>

#include <initializer_list>

namespace ampkit::detail {

// Registers `meta` as the op's Meta kernel (torch.compile and opcheck trace it) and as its kernel
// for sparse tensors: no kernel of ours takes them, and running the argument checks turns the
// dispatcher's generic "could not run with the SparseCPU backend" into an error that names the
// argument. For the mutating list ops `meta` is the checks alone (they return nothing and change
// no metadata). Call it from TORCH_LIBRARY_IMPL(ampkit, CatchAll, m), which leaves the key to each
// registration.
template <typename Fn>
void register_meta_and_sparse(torch::Library& library, const char* op_name, Fn* meta) {
  for (const c10::DispatchKey key :
       {c10::DispatchKey::Meta, c10::DispatchKey::SparseCPU, c10::DispatchKey::SparseCUDA}) {
    library.impl(op_name, torch::dispatch(key, meta));
  }
}

}  // namespace ampkit::detail
