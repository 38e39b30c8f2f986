// multi_tensor_scale and unscale_and_check (with and without the norm, and finish_norm) on the
// emulated device, compared with ampkit's CPU kernels. The arithmetic is the same on both (one
// fp32 multiply, one rounding to the output dtype), so values and found_inf must match bit for bit;
// only the norm is summed in another order, and is bounded below.
#include <cfloat>
#include <cmath>
#include <limits>

#include "ampkit/loss_scaling.h"
#include "ampkit/multi_tensor_scale.h"
#include "ampkit_kernels/loss_scaling.h"
#include "ampkit_kernels/multi_tensor.h"
#include "emulated_test_helpers.h"

namespace {

using namespace emulated_test;

constexpr int64_t kChunk = 65536;  // the launcher's chunk: one block each

// The sizes every list case covers: every tail below a vector (16 bytes: 4 fp32, 8 fp16/bf16)
// around a vector-friendly length, single elements, and tensors of several chunks.
std::vector<int64_t> list_sizes() {
  std::vector<int64_t> sizes = {1, 2, 3, 5, 7};
  for (int64_t tail = 0; tail < 8; ++tail) sizes.push_back(64 + tail);
  sizes.push_back(0);  // an empty tensor in the middle of a list gets no block
  sizes.push_back(kChunk + 3);
  sizes.push_back(2 * kChunk);
  return sizes;
}

struct DeviceList {
  std::vector<DeviceTensor> tensors;
  kernels::TensorLists lists(size_t depth_of_copies = 1) const {
    kernels::TensorLists result;
    result.lists.assign(depth_of_copies, {});
    for (const DeviceTensor& tensor : tensors) {
      for (auto& list : result.lists) list.push_back(tensor.data());
      result.numels.push_back(tensor.numel());
    }
    return result;
  }
};

DeviceList device_list(const std::vector<at::Tensor>& tensors) { return DeviceList{to_device(tensors)}; }

void require_list_matches(const std::vector<at::Tensor>& expected, const DeviceList& actual) {
  require_tensors_match("tensor", expected, actual.tensors);
}

std::vector<at::Tensor> make_list(const std::vector<int64_t>& sizes, at::ScalarType dtype, uint64_t seed,
                                  double magnitude = 1.0) {
  std::vector<at::Tensor> list;
  for (size_t t = 0; t < sizes.size(); ++t) list.push_back(varied_values(sizes[t], dtype, seed + t, magnitude));
  return list;
}

std::vector<at::Tensor> clones(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& tensor : tensors) out.push_back(tensor.clone());
  return out;
}

// ---------------------------------------------------------------------------------------------
// multi_tensor_scale

struct ScaleOutcome {
  DeviceList outputs;
  float found_inf;
};

// Runs multi_tensor_scale on the emulated device, out of place or in place.
ScaleOutcome scale_on_device(const std::vector<at::Tensor>& inputs, at::ScalarType out_dtype, float scale,
                             bool in_place) {
  DeviceList in = device_list(inputs);
  std::vector<at::Tensor> zeros;
  for (const at::Tensor& input : inputs) zeros.push_back(at::zeros({input.numel()}, out_dtype));
  ScaleOutcome outcome{in_place ? DeviceList{} : device_list(zeros), 0.0f};
  DeviceList& out = in_place ? in : outcome.outputs;
  kernels::TensorLists lists = in.lists(2);
  if (!in_place) lists.lists[1] = out.lists().lists[0];
  const float scale_value = scale;
  float found_inf = 0.0f;
  require_ok(kernels::multi_tensor_scale(lists, kernel_dtype(inputs.front().scalar_type()), kernel_dtype(out_dtype),
                                         &scale_value, &found_inf, nullptr));
  outcome.found_inf = found_inf;
  if (in_place) outcome.outputs = std::move(in);
  return outcome;
}

std::pair<std::vector<at::Tensor>, float> scale_on_cpu(const std::vector<at::Tensor>& inputs, at::ScalarType out_dtype,
                                                       float scale) {
  std::vector<at::Tensor> outputs;
  for (const at::Tensor& input : inputs) outputs.push_back(at::zeros({input.numel()}, out_dtype));
  const at::Tensor found_inf = scalar_tensor(0.0f);
  ampkit::multi_tensor_scale_(inputs, outputs, scalar_tensor(scale), found_inf);
  return {outputs, found_inf.item<float>()};
}

TEST_CASE("emulated multi_tensor_scale matches the CPU kernel for every dtype pair, offset and tail",
          "[emulated][multi_tensor_scale]") {
  const std::vector<int64_t> sizes = list_sizes();
  for (const at::ScalarType in_dtype : float_dtypes()) {
    for (const at::ScalarType out_dtype : float_dtypes()) {
      INFO(c10::toString(in_dtype) << " -> " << c10::toString(out_dtype));
      // Large values so that narrowing overflows to inf in fp16 (not an input non-finite).
      const std::vector<at::Tensor> inputs = make_list(sizes, in_dtype, 11, 300.0);
      const float scale = 0.3f;
      const auto [expected, expected_found] = scale_on_cpu(inputs, out_dtype, scale);
      for_each_thread_order([&] {
        const ScaleOutcome outcome = scale_on_device(inputs, out_dtype, scale, /*in_place=*/false);
        REQUIRE(outcome.found_inf == expected_found);
        require_list_matches(expected, outcome.outputs);
      });
      if (in_dtype == out_dtype) {
        const ScaleOutcome outcome = scale_on_device(inputs, out_dtype, scale, /*in_place=*/true);
        REQUIRE(outcome.found_inf == expected_found);
        require_list_matches(expected, outcome.outputs);
        require_no_findings();
      }
    }
  }
}

// inf, -inf and NaN at the first, a middle and the last element of a chunk (both chunks of a
// two-chunk tensor, and the tensor's last element): found_inf exactly when there is one.
TEST_CASE("emulated multi_tensor_scale: found_inf for a non-finite at every chunk position",
          "[emulated][multi_tensor_scale]") {
  const int64_t numel = kChunk + 100;
  const std::vector<int64_t> positions = {0, kChunk / 2, kChunk - 1, kChunk, kChunk + 50, numel - 1};
  const std::vector<float> specials = {std::numeric_limits<float>::infinity(),
                                       -std::numeric_limits<float>::infinity(),
                                       std::numeric_limits<float>::quiet_NaN()};
  for (const at::ScalarType dtype : float_dtypes()) {
    const at::Tensor clean = varied_values(numel, dtype, 5);
    {
      const ScaleOutcome outcome = scale_on_device({clean}, at::kFloat, 2.0f, false);
      REQUIRE(outcome.found_inf == 0.0f);
    }
    for (const int64_t position : positions) {
      for (const float special : specials) {
        INFO(c10::toString(dtype) << ", " << special << " at " << position);
        at::Tensor input = clean.clone();
        input[position] = special;
        const auto [expected, expected_found] = scale_on_cpu({input}, dtype, 2.0f);
        const ScaleOutcome outcome = scale_on_device({input}, dtype, 2.0f, false);
        REQUIRE(expected_found == 1.0f);
        REQUIRE(outcome.found_inf == 1.0f);
        require_list_matches(expected, outcome.outputs);
      }
    }
  }
  require_no_findings();
}

// ---------------------------------------------------------------------------------------------
// unscale_and_check (+ norm)

struct UnscaleOutcome {
  DeviceList grads;
  float found_inf;
  float norm;
};

// unscale_and_check over one dtype's list, then finish_norm when asked: what the CUDA glue does.
UnscaleOutcome unscale_on_device(const std::vector<at::Tensor>& grads, float inv_scale, bool norm) {
  UnscaleOutcome outcome{device_list(grads), 0.0f, -1.0f};
  const kernels::TensorLists lists = outcome.grads.lists();
  const float inv = inv_scale;
  std::unique_ptr<DeviceBuffer> partials;
  double* partial_data = nullptr;
  const int64_t count = kernels::unscale_norm_partial_count(lists.numels);
  if (norm) {
    partials = std::make_unique<DeviceBuffer>(static_cast<size_t>(count) * sizeof(double));
    partial_data = reinterpret_cast<double*>(partials->data());
  }
  require_ok(kernels::unscale_and_check(lists, kernel_dtype(grads.front().scalar_type()), &inv, &outcome.found_inf,
                                        partial_data, nullptr));
  if (norm) {
    float norm_value = -1.0f;
    require_ok(kernels::finish_norm(partial_data, count, &norm_value, nullptr));
    outcome.norm = norm_value;
  }
  return outcome;
}

struct CpuUnscale {
  std::vector<at::Tensor> grads;
  float found_inf;
  float norm;
};

CpuUnscale unscale_on_cpu(const std::vector<at::Tensor>& grads, float inv_scale) {
  CpuUnscale result{clones(grads), 0.0f, 0.0f};
  const at::Tensor found_inf = scalar_tensor(0.0f), norm = scalar_tensor(-1.0f);
  ampkit::unscale_and_check_(result.grads, found_inf, scalar_tensor(inv_scale), norm);
  result.found_inf = found_inf.item<float>();
  result.norm = norm.item<float>();
  return result;
}

// Two float32 values at most one unit in the last place apart (inf equals inf).
bool within_one_ulp(float expected, float actual) {
  if (expected == actual) return true;
  if (!std::isfinite(expected) || !std::isfinite(actual)) return false;
  return std::nextafter(expected, actual) == actual;
}

// The norm bound: both devices square each float exactly in double and sum in double, in
// different orders; the sums differ by at most n * 2^-53 relatively, far below half a float ulp,
// so the float norms can differ only where the exact value sits at a float rounding boundary:
// by at most one ulp.
#define REQUIRE_NORM_MATCHES(expected, actual)                                 \
  do {                                                                         \
    INFO("CPU norm " << (expected) << ", emulated device norm " << (actual)); \
    REQUIRE(within_one_ulp((expected), (actual)));                             \
  } while (0)

TEST_CASE("emulated unscale_and_check matches the CPU kernel: every dtype, offset and tail, with and without the norm",
          "[emulated][unscale_and_check]") {
  const std::vector<int64_t> sizes = list_sizes();
  for (const at::ScalarType dtype : float_dtypes()) {
    const std::vector<at::Tensor> grads = make_list(sizes, dtype, 21, 1000.0);
    for (const float inv_scale : {1.0f / 65536.0f, 0.37f}) {
      INFO(c10::toString(dtype) << ", inv_scale " << inv_scale);
      const CpuUnscale expected = unscale_on_cpu(grads, inv_scale);
      for_each_thread_order([&] {
        for (const bool norm : {false, true}) {
          INFO("norm " << norm);
          const UnscaleOutcome outcome = unscale_on_device(grads, inv_scale, norm);
          REQUIRE(outcome.found_inf == expected.found_inf);
          require_list_matches(expected.grads, outcome.grads);
          if (norm) REQUIRE_NORM_MATCHES(expected.norm, outcome.norm);
        }
      });
    }
  }
}

// inv_scale == 1: a check-only pass (what GradScaler runs for optimizers that unscale inside their
// own step) reads and never writes: every byte stays, NaN payloads included.
TEST_CASE("emulated unscale_and_check: a check-only pass leaves every byte unchanged", "[emulated][unscale_and_check]") {
  for (const at::ScalarType dtype : float_dtypes()) {
    INFO(c10::toString(dtype));
    std::vector<at::Tensor> grads = make_list(list_sizes(), dtype, 31);
    // A NaN with a payload that a load-and-store through float would change.
    at::Tensor& last = grads.back();
    if (dtype == at::kFloat) {
      const int32_t bits = 0x7FA00001;  // signalling NaN pattern
      std::memcpy(static_cast<char*>(last.data_ptr()) + 4 * 7, &bits, 4);
    } else {
      const int16_t bits = dtype == at::kHalf ? int16_t{0x7D01} : int16_t{0x7F81};
      std::memcpy(static_cast<char*>(last.data_ptr()) + 2 * 7, &bits, 2);
    }
    for_each_thread_order([&] {
      const UnscaleOutcome outcome = unscale_on_device(grads, 1.0f, /*norm=*/false);
      REQUIRE(outcome.found_inf == 1.0f);
      for (size_t t = 0; t < grads.size(); ++t) {
        const at::Tensor after = outcome.grads.tensors[t].to_cpu();
        REQUIRE(same_bytes(after, grads[t]));
      }
    });
  }
}

TEST_CASE("emulated unscale_and_check: found_inf for a non-finite at every chunk position",
          "[emulated][unscale_and_check]") {
  const int64_t numel = kChunk + 100;
  const std::vector<int64_t> positions = {0, kChunk / 2, kChunk - 1, kChunk, kChunk + 50, numel - 1};
  for (const at::ScalarType dtype : float_dtypes()) {
    const at::Tensor clean = varied_values(numel, dtype, 7);
    REQUIRE(unscale_on_device({clean}, 0.5f, true).found_inf == 0.0f);
    for (const int64_t position : positions) {
      for (const float special : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                                  std::numeric_limits<float>::quiet_NaN()}) {
        INFO(c10::toString(dtype) << ", " << special << " at " << position);
        at::Tensor grad = clean.clone();
        grad[position] = special;
        const CpuUnscale expected = unscale_on_cpu({grad}, 0.5f);
        const UnscaleOutcome outcome = unscale_on_device({grad}, 0.5f, /*norm=*/true);
        REQUIRE(expected.found_inf == 1.0f);
        REQUIRE(outcome.found_inf == 1.0f);
        require_list_matches(expected.grads, outcome.grads);
        REQUIRE(std::isnan(expected.norm) == std::isnan(outcome.norm));
      }
    }
  }
  require_no_findings();
}

// A list longer than one launch table (110 tensors for one list, 64 with the norm's second), and a
// tensor whose chunks fill a table (320 blocks) and carry over into slot 0 of the next: the tail
// of that tensor and the tensors after it must each be processed exactly once.
TEST_CASE("emulated list kernels across launch tables: many tensors, and a tensor carried across a table",
          "[emulated][unscale_and_check][multi_tensor_scale][tables]") {
  SECTION("150 small tensors") {
    std::vector<int64_t> sizes;
    for (int t = 0; t < 150; ++t) sizes.push_back(1 + (t * 37) % 300);
    for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      const std::vector<at::Tensor> grads = make_list(sizes, dtype, 41, 10.0);
      const CpuUnscale expected = unscale_on_cpu(grads, 0.25f);
      for_each_thread_order([&] {
        for (const bool norm : {false, true}) {
          const UnscaleOutcome outcome = unscale_on_device(grads, 0.25f, norm);
          require_list_matches(expected.grads, outcome.grads);
          if (norm) REQUIRE_NORM_MATCHES(expected.norm, outcome.norm);
        }
        const auto [scaled, found] = scale_on_cpu(grads, at::kHalf, 3.0f);
        const ScaleOutcome outcome = scale_on_device(grads, at::kHalf, 3.0f, false);
        REQUIRE(outcome.found_inf == found);
        require_list_matches(scaled, outcome.outputs);
      });
    }
  }
  SECTION("a tensor carried over into the next table") {
    // One small tensor, then 320 chunks and a bit: the table fills at the big tensor's 320th
    // block and its last chunks go to the next table; then one more small tensor.
    const std::vector<int64_t> sizes = {3, 320 * kChunk + 1000, 5};
    const std::vector<at::Tensor> grads = make_list(sizes, at::kHalf, 51, 100.0);
    const CpuUnscale expected = unscale_on_cpu(grads, 0.125f);
    for (const bool norm : {false, true}) {
      const UnscaleOutcome outcome = unscale_on_device(grads, 0.125f, norm);
      require_list_matches(expected.grads, outcome.grads);
      if (norm) REQUIRE_NORM_MATCHES(expected.norm, outcome.norm);
    }
    const auto [scaled, found] = scale_on_cpu(grads, at::kHalf, 0.5f);
    const ScaleOutcome in_place = scale_on_device(grads, at::kHalf, 0.5f, /*in_place=*/true);
    require_list_matches(scaled, in_place.outputs);
    require_no_findings();
  }
}

// ---------------------------------------------------------------------------------------------
// The global norm: the same on both devices over every magnitude a float holds.

TEST_CASE("emulated grad norm: finite whenever the true norm is, equal to the CPU's from 1e-30 to 1e30 and subnormals",
          "[emulated][unscale_and_check][norm]") {
  SECTION("65,536 gradients of 1e17: the norm is 2.56e19, not inf") {
    const at::Tensor grad = at::full({65536}, 1e17f, at::kFloat);
    const CpuUnscale expected = unscale_on_cpu({grad}, 1.0f);
    const UnscaleOutcome outcome = unscale_on_device({grad}, 1.0f, true);
    REQUIRE(std::isfinite(outcome.norm));
    REQUIRE(std::fabs(outcome.norm / 2.56e19f - 1.0f) < 1e-6f);
    REQUIRE_NORM_MATCHES(expected.norm, outcome.norm);
  }
  SECTION("magnitudes 1e-30 .. 1e30, fp32 subnormals, and fp16/bf16 lists") {
    std::vector<double> magnitudes;
    for (int exponent = -30; exponent <= 30; exponent += 3) magnitudes.push_back(std::pow(10.0, exponent));
    magnitudes.push_back(1e-40);  // fp32 subnormals
    magnitudes.push_back(3e-45);
    for (const double magnitude : magnitudes) {
      INFO("magnitude " << magnitude);
      // uniform(1, 2) * magnitude keeps every value in one binade region: no overflow to inf.
      at::Generator generator = at::detail::createCPUGenerator(61);
      const at::Tensor grad = (at::rand({3 * kChunk + 17}, generator, at::kDouble) + 1.0) * magnitude;
      const at::Tensor grad32 = grad.to(at::kFloat);
      const CpuUnscale expected = unscale_on_cpu({grad32}, 1.0f);
      const UnscaleOutcome outcome = unscale_on_device({grad32}, 1.0f, true);
      const double exact = std::sqrt(grad32.to(at::kDouble).square().sum().item<double>());
      REQUIRE(std::isfinite(outcome.norm));
      REQUIRE(outcome.norm > 0.0f);
      REQUIRE_NORM_MATCHES(expected.norm, outcome.norm);
      // And both within an ulp of the exact norm of the float values.
      REQUIRE(within_one_ulp(static_cast<float>(exact), outcome.norm));
    }
    for (const at::ScalarType dtype : {at::kHalf, at::kBFloat16}) {
      const std::vector<at::Tensor> grads = make_list({1000, kChunk + 5}, dtype, 71, 1e-3);
      const CpuUnscale expected = unscale_on_cpu(grads, 1.0f);
      REQUIRE_NORM_MATCHES(expected.norm, unscale_on_device(grads, 1.0f, true).norm);
    }
  }
  SECTION("the largest norms: finite up to FLT_MAX, inf beyond it on both devices") {
    const at::Tensor below = at::full({3}, 1.9e38f, at::kFloat);  // norm 3.29e38 < FLT_MAX
    const at::Tensor above = at::full({4}, 1.9e38f, at::kFloat);  // norm 3.8e38 > FLT_MAX
    const float below_norm = unscale_on_device({below}, 1.0f, true).norm;
    REQUIRE(std::isfinite(below_norm));
    REQUIRE_NORM_MATCHES(unscale_on_cpu({below}, 1.0f).norm, below_norm);
    REQUIRE(std::isinf(unscale_on_device({above}, 1.0f, true).norm));
    REQUIRE(std::isinf(unscale_on_cpu({above}, 1.0f).norm));
  }
  require_no_findings();
}

TEST_CASE("emulated finish_norm sums its partials in double: every count around the block size",
          "[emulated][finish_norm]") {
  for (const int64_t count : {0, 1, 31, 33, 511, 512, 513, 5000}) {
    INFO(count << " partials");
    at::Generator generator = at::detail::createCPUGenerator(81);
    const at::Tensor partials = at::rand({count}, generator, at::kDouble) * 1e30;
    DeviceTensor device_partials(partials, 0);
    for_each_thread_order([&] {
      float norm = -1.0f;
      require_ok(kernels::finish_norm(static_cast<const double*>(device_partials.data()), count, &norm, nullptr));
      const float expected = static_cast<float>(std::sqrt(partials.sum().item<double>()));
      REQUIRE(within_one_ulp(expected, norm));
    });
  }
}

TEST_CASE("emulated list entry points refuse bad arguments", "[emulated][bad_input]") {
  const float one = 1.0f;
  float found = 0.0f, norm = 0.0f;
  kernels::TensorLists empty;
  empty.lists = {{}};
  REQUIRE(kernels::unscale_and_check(empty, kernels::DType::Float32, nullptr, &found, nullptr, nullptr).status ==
          kernels::Status::InvalidArgument);
  REQUIRE(kernels::multi_tensor_scale(empty, kernels::DType::Float32, kernels::DType::Float32, &one, nullptr, nullptr)
              .status == kernels::Status::InvalidArgument);
  REQUIRE(kernels::finish_norm(nullptr, 3, &norm, nullptr).status == kernels::Status::InvalidArgument);
  // An empty list launches nothing and succeeds.
  REQUIRE(kernels::unscale_and_check(empty, kernels::DType::Float32, &one, &found, nullptr, nullptr).ok());
  require_no_findings();
}

}  // namespace
