// The emulated kernels convert through CUDA's own cuda_fp16.h / cuda_bf16.h compiled for the host;
// the CPU kernels through c10::Half / c10::BFloat16. Bit-for-bit comparisons between the two
// devices rest on these conversions agreeing: checked here on every 16-bit pattern (widening) and
// on a dense sweep of float bit patterns (narrowing, round to nearest even, overflow, subnormals).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstring>

#include "emulated_test_helpers.h"

namespace {

uint32_t float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

float bits_to_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

template <typename T>
uint16_t raw16(const T& value) {
  uint16_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

template <typename T>
T from_raw16(uint16_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof bits);
  return value;
}

TEST_CASE("CUDA's host half/bfloat16 conversions widen every 16-bit pattern as c10 does", "[emulated][conversions]") {
  for (uint32_t pattern = 0; pattern <= 0xFFFF; ++pattern) {
    const auto bits = static_cast<uint16_t>(pattern);
    const float cuda_half = __half2float(from_raw16<__half>(bits));
    const float c10_half = static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
    const float cuda_bf16 = __bfloat162float(from_raw16<__nv_bfloat16>(bits));
    const float c10_bf16 = static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()));
    INFO("pattern 0x" << std::hex << pattern);
    if (std::isnan(c10_half)) {
      REQUIRE(std::isnan(cuda_half));
    } else {
      REQUIRE(float_bits(cuda_half) == float_bits(c10_half));
    }
    if (std::isnan(c10_bf16)) {
      REQUIRE(std::isnan(cuda_bf16));
    } else {
      REQUIRE(float_bits(cuda_bf16) == float_bits(c10_bf16));
    }
  }
}

TEST_CASE("CUDA's host half/bfloat16 conversions narrow floats as c10 does (round to nearest even)",
          "[emulated][conversions]") {
  // Every float whose bit pattern is a multiple of 61 (70 million values over every binade, both
  // signs, subnormals, infinities and NaNs), plus the halfway cases of both formats near 1.
  int64_t checked = 0;
  auto check = [&](uint32_t bits) {
    const float value = bits_to_float(bits);
    const uint16_t cuda_half = raw16(__float2half_rn(value));
    const uint16_t c10_half = c10::Half(value).x;
    const uint16_t cuda_bf16 = raw16(__float2bfloat16_rn(value));
    const uint16_t c10_bf16 = c10::BFloat16(value).x;
    if (std::isnan(value)) {
      const bool half_nan = (cuda_half & 0x7C00) == 0x7C00 && (cuda_half & 0x03FF) != 0;
      const bool bf16_nan = (cuda_bf16 & 0x7F80) == 0x7F80 && (cuda_bf16 & 0x007F) != 0;
      if (!half_nan || !bf16_nan) FAIL("NaN 0x" << std::hex << bits << " did not stay NaN");
    } else if (cuda_half != c10_half || cuda_bf16 != c10_bf16) {
      FAIL("float 0x" << std::hex << bits << " (" << value << "): half cuda 0x" << cuda_half << " c10 0x" << c10_half
                      << ", bf16 cuda 0x" << cuda_bf16 << " c10 0x" << c10_bf16);
    }
    ++checked;
  };
  for (uint64_t bits = 0; bits <= 0xFFFFFFFFull; bits += 61) check(static_cast<uint32_t>(bits));
  for (uint32_t low = 0; low < 0x10000; ++low) check(0x3F800000u | low);  // [1, 1.0078): every bf16 tie
  REQUIRE(checked > 70000000);
}

}  // namespace
