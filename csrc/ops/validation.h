// Input checks shared by every ampkit op. Each failure names the op, the argument (with its
// index inside a list), what was expected and what was given.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace ampkit::detail {

// "float16", "bfloat16", ... (torch's Python spelling, which users see).
std::string dtype_name(at::ScalarType dtype);
// An argument's name in error messages: "scale", or "tensors[3]" for an item of a list. Written out
// only when a check fails (TORCH_CHECK formats its message then): the checks run on every call of
// every op, and building a std::string per list item cost a 10-tensor optimizer step ~20 % of its
// fixed cost. Holds pointers: it lives no longer than the call it is passed to.
class ItemName {
 public:
  ItemName(const char* name) : list_(name) {}                 // NOLINT: implicit, as a string is
  ItemName(const std::string& name) : list_(name.c_str()) {}  // NOLINT
  ItemName(const char* list, size_t index) : list_(list), index_(static_cast<int64_t>(index)) {}
  friend std::ostream& operator<<(std::ostream& out, const ItemName& name);

 private:
  const char* list_;
  int64_t index_ = -1;  // -1: not a list item
};

// "tensors[3]"
inline ItemName indexed(const char* list_name, size_t index) { return ItemName(list_name, index); }

bool is_supported_float(at::ScalarType dtype);

// A set of dtypes an op accepts: the test, and how error messages name the set.
struct DtypeRule {
  bool (*accepts)(at::ScalarType dtype);
  const char* names;
};
// fp32, fp16 or bf16: the mixed-precision dtypes most ops take.
inline constexpr DtypeRule kMixedPrecisionFloats{is_supported_float, "float32, float16 or bfloat16"};
// Those and fp64, which torch's optimizers and scaler take too (a float64 head or test model).
bool is_supported_float_or_double(at::ScalarType dtype);
inline constexpr DtypeRule kFloatsAndFloat64{is_supported_float_or_double, "float32, float16, bfloat16 or float64"};

// A dtype of `rule` (fp32, fp16 or bf16 by default), strided layout, defined.
void check_float_tensor(const char* op, const ItemName& name, const at::Tensor& tensor,
                        const DtypeRule& rule = kMixedPrecisionFloats);

// A one-element float32 tensor (a device-side scalar such as scale, inv_scale or found_inf).
void check_scalar_tensor(const char* op, const ItemName& name, const at::Tensor& tensor);

void check_device(const char* op, const ItemName& name, const at::Tensor& tensor,
                  const c10::Device& expected, const ItemName& expected_from);

void check_contiguous(const char* op, const ItemName& name, const at::Tensor& tensor);

// ---- layouts ----
// List kernels process a tensor as a flat run of numel elements starting at data_ptr(). True when
// that covers exactly the tensor's elements: contiguous, or dense in another order (channels_last,
// a permuted or transposed parameter). Any other layout (a strided slice) needs a dense copy.
bool is_flat_in_memory(const at::Tensor& tensor);

// True when a and b (same shape) put every element at the same offset from data_ptr(): equal
// strides on every dimension longer than 1 (a size-1 dimension's stride never moves a pointer).
bool same_memory_order(const at::Tensor& a, const at::Tensor& b);

// `tensor` is flat in memory (see is_flat_in_memory).
void check_flat_in_memory(const char* op, const ItemName& name, const at::Tensor& tensor);

// tensor has reference's memory order, so element i of one flat run is element i of the other.
void check_same_memory_order(const char* op, const ItemName& name, const at::Tensor& tensor,
                             const ItemName& reference_name, const at::Tensor& reference);

struct ListRules {
  bool allow_empty = false;
  bool require_contiguous = true;
  bool require_same_dtype = true;
  DtypeRule dtypes = kMixedPrecisionFloats;
};

// Checks every tensor of a list: defined, float dtype, one device, and the rules. Returns the
// device of the list (the first tensor's), or nullopt for an allowed empty list.
std::optional<c10::Device> check_tensor_list(const char* op, const char* name, at::TensorList list,
                                             const ListRules& rules = {});

// `b` has as many tensors as `a`, and b[i] has the shape of a[i].
void check_matching_lists(const char* op, const char* a_name, at::TensorList a, const char* b_name,
                          at::TensorList b);

// ---- aliasing (bad input: the same tensor twice where each must be its own) ----
// One tensor an op reads or writes, with the name errors use ("params[3]", "found_inf").
struct NamedTensor {
  ItemName name;
  const at::Tensor* tensor;
};

// Every tensor of `written` must have memory of its own: no two of them, and none of them and any
// of `read`, may share memory (the same tensor twice, or overlapping views of one storage). A list
// op would otherwise update the shared elements twice, or read values it has already overwritten,
// and silently give a wrong answer. Read-only tensors may alias each other. Views of one storage
// that are not both flat in memory are only refused when they are identical (no false alarms for
// interleaved views, which cannot be told apart cheaply).
void check_no_overlap(const char* op, const std::vector<NamedTensor>& written, const std::vector<NamedTensor>& read = {});

// inputs[i] may be outputs[i] itself (the same view: in place); otherwise no input may share memory
// with any output (the GPU's blocks would race: one reads what another has already written).
void check_inputs_apart_from_outputs(const char* op, const char* inputs_name, at::TensorList inputs,
                                     const char* outputs_name, at::TensorList outputs);

// Helper: appends list[i] as "name[i]".
void append_named(std::vector<NamedTensor>& out, const char* name, at::TensorList list);

}  // namespace ampkit::detail
