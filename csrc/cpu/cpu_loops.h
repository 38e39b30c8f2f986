// Helpers for ampkit's CPU kernels: parallel chunked loops over contiguous tensors.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace ampkit::cpu {

// Elements per parallel task: big enough that thread hand-off is noise.
constexpr int64_t kGrainSize = 32768;

// The non-finite test written so that the compiler vectorises it: x - x is 0 for every
// finite x and NaN for inf/NaN.
inline bool is_non_finite(float value) {
  const float difference = value - value;
  return difference != difference;
}

template <typename Fn>
void parallel_chunks(int64_t numel, Fn&& fn) {
  if (numel == 0) return;
  at::parallel_for(0, numel, kGrainSize, fn);
}

}  // namespace ampkit::cpu
