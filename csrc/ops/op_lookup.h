// The typed dispatcher handle of a registered op, for calling it from C++ (the public API in
// csrc/api, and wrappers that redispatch below Autograd or Autocast). Look it up once per op:
//   static const auto op = detail::find_typed_op<void(at::TensorList, ...)>("ampkit::multi_tensor_scale_");
// The signature must match the schema in ops/registration.cpp; a mismatch throws on first use.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace ampkit::detail {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_typed_op(const char* qualified_name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(qualified_name, "").typed<Signature>();
}

}  // namespace ampkit::detail
