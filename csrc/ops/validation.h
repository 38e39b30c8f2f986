// Input checks shared by every ampkit op. Each failure names the op, the argument (with its
// index inside a list), what was expected and what was given.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <string>

namespace ampkit::detail {

// "float16", "bfloat16", ... (torch's Python spelling, which users see).
std::string dtype_name(at::ScalarType dtype);
// "tensors[3]"
std::string indexed(const char* list_name, size_t index);

bool is_supported_float(at::ScalarType dtype);

// fp32, fp16 or bf16, strided layout, defined.
void check_float_tensor(const char* op, const std::string& name, const at::Tensor& tensor);

// A one-element float32 tensor (a device-side scalar such as scale, inv_scale or found_inf).
void check_scalar_tensor(const char* op, const char* name, const at::Tensor& tensor);

void check_device(const char* op, const std::string& name, const at::Tensor& tensor,
                  const c10::Device& expected, const std::string& expected_from);

void check_contiguous(const char* op, const std::string& name, const at::Tensor& tensor);

struct ListRules {
  bool allow_empty = false;
  bool require_contiguous = true;
  bool require_same_dtype = true;
};

// Checks every tensor of a list: defined, float dtype, one device, and the rules. Returns the
// device of the list (the first tensor's), or nullopt for an allowed empty list.
std::optional<c10::Device> check_tensor_list(const char* op, const char* name, at::TensorList list,
                                             const ListRules& rules = {});

// `b` has as many tensors as `a`, and b[i] has the shape of a[i].
void check_matching_lists(const char* op, const char* a_name, at::TensorList a, const char* b_name,
                          at::TensorList b);

}  // namespace ampkit::detail
