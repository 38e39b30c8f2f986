#include "ops/validation.h"

#include <c10/util/Exception.h>

#include <sstream>

namespace ampkit::detail {

std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kDouble: return "float64";
    case at::kByte: return "uint8";
    case at::kChar: return "int8";
    case at::kShort: return "int16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kBool: return "bool";
    case at::kComplexFloat: return "complex64";
    case at::kComplexDouble: return "complex128";
    default: {
      std::ostringstream out;
      out << dtype;
      return out.str();
    }
  }
}

std::string indexed(const char* list_name, size_t index) {
  return std::string(list_name) + "[" + std::to_string(index) + "]";
}

bool is_supported_float(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
}

void check_float_tensor(const char* op, const std::string& name, const at::Tensor& tensor) {
  TORCH_CHECK(tensor.defined(), op, ": ", name, " must be a tensor, got an undefined tensor");
  TORCH_CHECK(tensor.layout() == at::kStrided, op, ": ", name, " must be a dense (strided) tensor, got layout ",
              tensor.layout());
  TORCH_CHECK_TYPE(is_supported_float(tensor.scalar_type()), op, ": ", name,
                   " must have dtype float32, float16 or bfloat16, got ", dtype_name(tensor.scalar_type()));
}

void check_scalar_tensor(const char* op, const char* name, const at::Tensor& tensor) {
  TORCH_CHECK(tensor.defined(), op, ": ", name, " must be a one-element float32 tensor, got an undefined tensor");
  TORCH_CHECK_TYPE(tensor.scalar_type() == at::kFloat, op, ": ", name,
                   " must be a one-element float32 tensor, got dtype ", dtype_name(tensor.scalar_type()));
  TORCH_CHECK(tensor.numel() == 1, op, ": ", name, " must be a one-element float32 tensor, got ", tensor.numel(),
              " elements (shape ", tensor.sizes(), ")");
}

void check_device(const char* op, const std::string& name, const at::Tensor& tensor, const c10::Device& expected,
                  const std::string& expected_from) {
  TORCH_CHECK(tensor.device() == expected, op, ": ", name, " must be on ", expected, " (the device of ",
              expected_from, "), got ", tensor.device());
}

void check_contiguous(const char* op, const std::string& name, const at::Tensor& tensor) {
  TORCH_CHECK(tensor.is_contiguous(), op, ": ", name, " must be contiguous, got a tensor of shape ", tensor.sizes(),
              " with strides ", tensor.strides());
}

std::optional<c10::Device> check_tensor_list(const char* op, const char* name, at::TensorList list,
                                             const ListRules& rules) {
  if (list.empty()) {
    TORCH_CHECK_VALUE(rules.allow_empty, op, ": ", name, " must hold at least one tensor, got an empty list");
    return std::nullopt;
  }
  const std::string first_name = indexed(name, 0);
  check_float_tensor(op, first_name, list[0]);
  const c10::Device device = list[0].device();
  const at::ScalarType dtype = list[0].scalar_type();
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string item = indexed(name, i);
    if (i > 0) {
      check_float_tensor(op, item, list[i]);
      check_device(op, item, list[i], device, first_name);
      TORCH_CHECK_TYPE(!rules.require_same_dtype || list[i].scalar_type() == dtype, op, ": every tensor of ", name,
                       " must have one dtype: ", first_name, " is ", dtype_name(dtype), " but ", item, " is ",
                       dtype_name(list[i].scalar_type()));
    }
    if (rules.require_contiguous) check_contiguous(op, item, list[i]);
  }
  return device;
}

void check_matching_lists(const char* op, const char* a_name, at::TensorList a, const char* b_name,
                          at::TensorList b) {
  TORCH_CHECK(a.size() == b.size(), op, ": ", b_name, " must hold as many tensors as ", a_name, " (", a.size(),
              "), got ", b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    TORCH_CHECK(a[i].sizes() == b[i].sizes(), op, ": ", indexed(b_name, i), " must have the shape of ",
                indexed(a_name, i), " ", a[i].sizes(), ", got ", b[i].sizes());
  }
}

}  // namespace ampkit::detail
