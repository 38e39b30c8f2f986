#include "ops/validation.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <functional>
#include <sstream>
#include <utility>

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

std::ostream& operator<<(std::ostream& out, const ItemName& name) {
  out << name.list_;
  if (name.index_ >= 0) out << "[" << name.index_ << "]";
  return out;
}

bool is_supported_float(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
}

bool is_supported_float_or_double(at::ScalarType dtype) {
  return is_supported_float(dtype) || dtype == at::kDouble;
}

void check_float_tensor(const char* op, const ItemName& name, const at::Tensor& tensor, const DtypeRule& rule) {
  TORCH_CHECK(tensor.defined(), op, ": ", name, " must be a tensor, got an undefined tensor");
  TORCH_CHECK(tensor.layout() == at::kStrided, op, ": ", name, " must be a dense (strided) tensor, got layout ",
              tensor.layout());
  TORCH_CHECK_TYPE(rule.accepts(tensor.scalar_type()), op, ": ", name, " must have dtype ", rule.names, ", got ",
                   dtype_name(tensor.scalar_type()));
}

void check_scalar_tensor(const char* op, const ItemName& name, const at::Tensor& tensor) {
  TORCH_CHECK(tensor.defined(), op, ": ", name, " must be a one-element float32 tensor, got an undefined tensor");
  TORCH_CHECK_TYPE(tensor.scalar_type() == at::kFloat, op, ": ", name,
                   " must be a one-element float32 tensor, got dtype ", dtype_name(tensor.scalar_type()));
  TORCH_CHECK(tensor.numel() == 1, op, ": ", name, " must be a one-element float32 tensor, got ", tensor.numel(),
              " elements (shape ", tensor.sizes(), ")");
}

void check_device(const char* op, const ItemName& name, const at::Tensor& tensor, const c10::Device& expected,
                  const ItemName& expected_from) {
  TORCH_CHECK(tensor.device() == expected, op, ": ", name, " must be on ", expected, " (the device of ",
              expected_from, "), got ", tensor.device());
}

void check_contiguous(const char* op, const ItemName& name, const at::Tensor& tensor) {
  TORCH_CHECK(tensor.is_contiguous(), op, ": ", name, " must be contiguous, got a tensor of shape ", tensor.sizes(),
              " with strides ", tensor.strides());
}

bool is_flat_in_memory(const at::Tensor& tensor) {
  return tensor.is_contiguous() || tensor.is_non_overlapping_and_dense();
}

bool same_memory_order(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

void check_flat_in_memory(const char* op, const ItemName& name, const at::Tensor& tensor) {
  TORCH_CHECK(is_flat_in_memory(tensor), op, ": ", name,
              " must be dense in memory (contiguous, channels_last or another permutation of a contiguous "
              "tensor), got a tensor of shape ", tensor.sizes(), " with strides ", tensor.strides(),
              "; pass a dense copy and copy the result back");
}

void check_same_memory_order(const char* op, const ItemName& name, const at::Tensor& tensor,
                             const ItemName& reference_name, const at::Tensor& reference) {
  TORCH_CHECK(same_memory_order(tensor, reference), op, ": ", name, " must have the memory layout of ",
              reference_name, " (strides ", reference.strides(), "), got strides ", tensor.strides(),
              " for shape ", tensor.sizes());
}

std::optional<c10::Device> check_tensor_list(const char* op, const char* name, at::TensorList list,
                                             const ListRules& rules) {
  if (list.empty()) {
    TORCH_CHECK_VALUE(rules.allow_empty, op, ": ", name, " must hold at least one tensor, got an empty list");
    return std::nullopt;
  }
  const ItemName first_name = indexed(name, 0);
  check_float_tensor(op, first_name, list[0], rules.dtypes);
  const c10::Device device = list[0].device();
  const at::ScalarType dtype = list[0].scalar_type();
  for (size_t i = 0; i < list.size(); ++i) {
    const ItemName item = indexed(name, i);
    if (i > 0) {
      check_float_tensor(op, item, list[i], rules.dtypes);
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

namespace {

struct ByteRange {
  int64_t begin = 0;
  int64_t end = 0;  // one past the last byte
};

// The bytes of its storage that a strided tensor can touch (non-negative strides, as dense tensors have).
ByteRange byte_range(const at::Tensor& tensor) {
  const int64_t item = static_cast<int64_t>(tensor.element_size());
  int64_t last = 0;
  for (int64_t d = 0; d < tensor.dim(); ++d) last += (tensor.size(d) - 1) * std::abs(tensor.stride(d));
  const int64_t begin = tensor.storage_offset() * item;
  return {begin, begin + (last + 1) * item};
}

bool same_view(const at::Tensor& a, const at::Tensor& b) {
  return a.storage_offset() == b.storage_offset() && a.sizes() == b.sizes() && a.strides() == b.strides() &&
         a.element_size() == b.element_size();
}

// True when a and b (of one storage) certainly share memory.
bool overlaps(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  if (a.unsafeGetTensorImpl() == b.unsafeGetTensorImpl() || same_view(a, b)) return true;
  if (!is_flat_in_memory(a) || !is_flat_in_memory(b)) return false;
  const ByteRange ra = byte_range(a);
  const ByteRange rb = byte_range(b);
  return ra.begin < rb.end && rb.begin < ra.end;
}

const void* storage_key(const at::Tensor& tensor) {
  // The storage object, not its data pointer: meta and fake tensors have no data but distinct storages.
  const c10::TensorImpl* impl = tensor.unsafeGetTensorImpl();
  return impl->has_storage() ? static_cast<const void*>(impl->unsafe_storage().unsafeGetStorageImpl())
                             : static_cast<const void*>(impl);
}

// (storage key, index) of each defined tensor, sorted by key with the indices of one key ascending:
// tensors that may share memory sit next to each other. One allocation, where a map of vectors made
// one per tensor (a 148-tensor AdamW step checks ~900 tensors on every call).
struct StorageEntry {
  const void* key;
  size_t index;
  bool operator<(const StorageEntry& other) const {
    return key != other.key ? std::less<const void*>()(key, other.key) : index < other.index;
  }
};

template <typename TensorAt>
std::vector<StorageEntry> sorted_by_storage(size_t count, const TensorAt& tensor_at) {
  std::vector<StorageEntry> entries;
  entries.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    const at::Tensor& tensor = tensor_at(i);
    if (tensor.defined()) entries.push_back({storage_key(tensor), i});
  }
  std::sort(entries.begin(), entries.end());
  return entries;
}

// The entries of `key`, in ascending index order (empty when none).
std::pair<const StorageEntry*, const StorageEntry*> entries_of(const std::vector<StorageEntry>& sorted,
                                                               const void* key) {
  const auto first = std::lower_bound(sorted.begin(), sorted.end(), StorageEntry{key, 0});
  auto last = first;
  while (last != sorted.end() && last->key == key) ++last;
  return {sorted.data() + (first - sorted.begin()), sorted.data() + (last - sorted.begin())};
}

}  // namespace

void append_named(std::vector<NamedTensor>& out, const char* name, at::TensorList list) {
  for (size_t i = 0; i < list.size(); ++i) out.push_back({indexed(name, i), &list[i]});
}

void check_no_overlap(const char* op, const std::vector<NamedTensor>& written, const std::vector<NamedTensor>& read) {
  const std::vector<StorageEntry> by_storage =
      sorted_by_storage(written.size(), [&](size_t i) -> const at::Tensor& { return *written[i].tensor; });
  // Two written tensors that overlap: the error names the same pair as a walk in list order would
  // (the first tensor that overlaps an earlier one, and the earliest of those), whatever the order
  // of the storages.
  size_t later = written.size(), earlier = written.size();
  for (size_t run = 0; run < by_storage.size();) {
    size_t run_end = run + 1;
    while (run_end < by_storage.size() && by_storage[run_end].key == by_storage[run].key) ++run_end;
    for (size_t b = run + 1; b < run_end; ++b) {
      const size_t i = by_storage[b].index;
      if (i > later) break;
      for (size_t a = run; a < b; ++a) {
        const size_t j = by_storage[a].index;
        if (overlaps(*written[j].tensor, *written[i].tensor) && (i < later || (i == later && j < earlier))) {
          later = i;
          earlier = j;
          break;
        }
      }
    }
    run = run_end;
  }
  TORCH_CHECK(later == written.size(), op, ": ", written[later].name, " shares memory with ", written[earlier].name,
              " (the same tensor, or overlapping views); each tensor the op writes must be its own, got both at "
              "storage offset ", written[later].tensor->storage_offset());
  for (const NamedTensor& entry : read) {
    const at::Tensor& tensor = *entry.tensor;
    if (!tensor.defined()) continue;
    const auto [first, last] = entries_of(by_storage, storage_key(tensor));
    for (const StorageEntry* it = first; it != last; ++it) {
      TORCH_CHECK(!overlaps(*written[it->index].tensor, tensor), op, ": ", entry.name, " shares memory with ",
                  written[it->index].name, ", which the op writes; pass a separate tensor");
    }
  }
}

void check_inputs_apart_from_outputs(const char* op, const char* inputs_name, at::TensorList inputs,
                                     const char* outputs_name, at::TensorList outputs) {
  const std::vector<StorageEntry> outputs_by_storage =
      sorted_by_storage(outputs.size(), [&](size_t j) -> const at::Tensor& { return outputs[j]; });
  for (size_t i = 0; i < inputs.size(); ++i) {
    const at::Tensor& input = inputs[i];
    if (!input.defined()) continue;
    const auto [first, last] = entries_of(outputs_by_storage, storage_key(input));
    for (const StorageEntry* it = first; it != last; ++it) {
      const size_t j = it->index;
      if (j == i && same_view(input, outputs[j])) continue;  // in place
      TORCH_CHECK(!overlaps(input, outputs[j]), op, ": ", indexed(inputs_name, i), " shares memory with ",
                  indexed(outputs_name, j), ", which the op writes while other elements still read it; an ",
                  "input may only be its own output (the same view, in place)");
    }
  }
}

}  // namespace ampkit::detail
