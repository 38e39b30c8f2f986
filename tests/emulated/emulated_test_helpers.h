// Helpers of the emulated-device suite: device buffers, copies to and from CPU tensors, bitwise
// comparison, and running a case under every thread order.
#pragma once

// torch's headers define a glog-style CHECK that aborts; Catch2's must win, so torch comes first.
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ampkit_emulated/api.h"
#include "ampkit_kernels/common.h"

namespace emulated_test {

namespace kernels = ::ampkit_kernels;  // ampkit_emulated_kernels in this build

// A device allocation: a heap block of its own of exactly the bytes asked for, so AddressSanitizer
// reports any access past its end; filled with 0xFF bytes (a NaN in every float format), as
// freshly allocated device memory holds garbage.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes), data_(new unsigned char[bytes == 0 ? 1 : bytes]) {
    std::memset(data_.get(), 0xFF, bytes == 0 ? 1 : bytes);
  }
  unsigned char* data() const { return data_.get(); }
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_;
  std::unique_ptr<unsigned char[]> data_;
};

// A flat tensor on the emulated device, `offset` elements into its allocation (the elements
// before it stay poison and must stay untouched).
class DeviceTensor {
 public:
  DeviceTensor(const at::Tensor& cpu, int64_t offset)
      : dtype_(cpu.scalar_type()),
        numel_(cpu.numel()),
        offset_(offset),
        buffer_(static_cast<size_t>((offset + cpu.numel()) * static_cast<int64_t>(cpu.element_size()))) {
    const at::Tensor flat = cpu.contiguous();
    if (numel_ > 0) std::memcpy(data(), flat.data_ptr(), static_cast<size_t>(numel_) * element_size());
  }
  void* data() const { return buffer_.data() + static_cast<size_t>(offset_) * element_size(); }
  at::Tensor to_cpu() const {
    at::Tensor out = at::empty({numel_}, at::TensorOptions().dtype(dtype_));
    if (numel_ > 0) std::memcpy(out.data_ptr(), data(), static_cast<size_t>(numel_) * element_size());
    return out;
  }
  bool prefix_untouched() const {
    for (size_t i = 0; i < static_cast<size_t>(offset_) * element_size(); ++i) {
      if (buffer_.data()[i] != 0xFF) return false;
    }
    return true;
  }
  int64_t numel() const { return numel_; }
  at::ScalarType dtype() const { return dtype_; }
  size_t element_size() const { return c10::elementSize(dtype_); }

 private:
  at::ScalarType dtype_;
  int64_t numel_;
  int64_t offset_;
  DeviceBuffer buffer_;
};

// Tensors onto the emulated device at base offsets (t + offset_shift) % 8 elements, tensor by
// tensor: aligned and misaligned vector paths in every list.
inline std::vector<DeviceTensor> to_device(const std::vector<at::Tensor>& tensors, int64_t offset_shift = 0) {
  std::vector<DeviceTensor> out;
  out.reserve(tensors.size());
  for (size_t t = 0; t < tensors.size(); ++t) out.emplace_back(tensors[t], (static_cast<int64_t>(t) + offset_shift) % 8);
  return out;
}

inline kernels::DType kernel_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return kernels::DType::Float32;
    case at::kHalf: return kernels::DType::Float16;
    case at::kBFloat16: return kernels::DType::BFloat16;
    case at::kDouble: return kernels::DType::Float64;
    default: throw std::invalid_argument("no kernel dtype for " + std::string(c10::toString(dtype)));
  }
}

inline const std::vector<at::ScalarType>& float_dtypes() {
  static const std::vector<at::ScalarType> dtypes = {at::kFloat, at::kHalf, at::kBFloat16};
  return dtypes;
}

// Where the bits of two flat tensors of one dtype differ; NaN matches NaN whatever its payload
// (the CPU kernels themselves write different NaN payloads on their vector and portable paths).
// Returns -1 when they match.
inline int64_t first_bit_difference(const at::Tensor& expected, const at::Tensor& actual) {
  REQUIRE(expected.scalar_type() == actual.scalar_type());
  REQUIRE(expected.numel() == actual.numel());
  const at::Tensor e = expected.contiguous(), a = actual.contiguous();
  const at::Tensor e_nan = e.isnan(), a_nan = a.isnan();
  const size_t size = e.element_size();
  const auto* eb = static_cast<const unsigned char*>(e.data_ptr());
  const auto* ab = static_cast<const unsigned char*>(a.data_ptr());
  const bool* en = e_nan.const_data_ptr<bool>();
  const bool* an = a_nan.const_data_ptr<bool>();
  for (int64_t i = 0; i < e.numel(); ++i) {
    if (en[i] && an[i]) continue;
    if (std::memcmp(eb + i * size, ab + i * size, size) != 0) return i;
  }
  return -1;
}

#define REQUIRE_SAME_BITS(expected, actual)                                                              \
  do {                                                                                                   \
    const at::Tensor expected_ = (expected), actual_ = (actual);                                         \
    const int64_t where_ = ::emulated_test::first_bit_difference(expected_, actual_);                    \
    if (where_ >= 0) {                                                                                   \
      FAIL("first difference at element " << where_ << ": expected " << expected_[where_].item<double>() \
                                          << ", got " << actual_[where_].item<double>());                \
    }                                                                                                    \
  } while (0)

// Each device tensor equals its CPU reference bit for bit, and the poison before it is untouched.
inline void require_tensors_match(const char* what, const std::vector<at::Tensor>& expected,
                                  const std::vector<DeviceTensor>& actual) {
  REQUIRE(expected.size() == actual.size());
  for (size_t t = 0; t < expected.size(); ++t) {
    INFO(what << "[" << t << "] of " << expected[t].numel() << " elements");
    REQUIRE(actual[t].prefix_untouched());
    REQUIRE_SAME_BITS(expected[t], actual[t].to_cpu());
  }
}

// Byte equality of two tensors' storage (empty tensors have no data pointer).
inline bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.nbytes() != b.nbytes()) return false;
  return a.nbytes() == 0 || std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0;
}

// The emulated device must have found nothing (races, divergence, bad launches).
inline void require_no_findings() {
  const std::vector<std::string> findings = ampkit_emulated::take_findings();
  for (const std::string& finding : findings) UNSCOPED_INFO(finding);
  REQUIRE(findings.empty());
}

// The thread orders every case runs under.
inline const std::vector<ampkit_emulated::ThreadOrder>& thread_orders() {
  static const std::vector<ampkit_emulated::ThreadOrder> orders = {
      ampkit_emulated::ThreadOrder::InOrder, ampkit_emulated::ThreadOrder::Reversed,
      ampkit_emulated::ThreadOrder::Random};
  return orders;
}
constexpr uint64_t kRandomOrderSeed = 20261202;

// Runs `body` once under each thread order; the order shows in any failure's message.
inline void for_each_thread_order(const std::function<void()>& body) {
  for (const ampkit_emulated::ThreadOrder order : thread_orders()) {
    INFO("thread order: " << ampkit_emulated::thread_order_name(order));
    ampkit_emulated::set_thread_order(order, kRandomOrderSeed);
    body();
    require_no_findings();
  }
  ampkit_emulated::set_thread_order(ampkit_emulated::ThreadOrder::InOrder);
}

inline at::Tensor scalar_tensor(float value) { return at::full({1}, value, at::kFloat); }

// Values that exercise rounding in every format: spread over many binades, both signs.
inline at::Tensor varied_values(int64_t numel, at::ScalarType dtype, uint64_t seed, double magnitude = 1.0) {
  at::Generator generator = at::detail::createCPUGenerator(seed);
  at::Tensor values = at::randn({numel}, generator, at::TensorOptions().dtype(at::kDouble));
  values = values * at::exp(at::randn({numel}, generator, at::TensorOptions().dtype(at::kDouble)) * 2.0) * magnitude;
  if (dtype == at::kHalf) values = values.clamp(-60000.0, 60000.0);  // finite inputs; outputs may still overflow
  return values.to(dtype);
}

// Test-facing wrapper of a kernel entry point's Result.
inline void require_ok(const kernels::Result& result) {
  INFO("kernel result: " << kernels::describe(result));
  REQUIRE(result.ok());
}

}  // namespace emulated_test
