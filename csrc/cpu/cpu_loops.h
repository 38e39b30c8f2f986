// Helpers for ampkit's CPU kernels: parallel chunked loops over contiguous tensors.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
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

// Calls fn(item) for every item in [0, count) on at::parallel_for's threads, which take the
// items one at a time from a shared counter rather than a fixed share each: on a shared machine a
// thread that is descheduled holds up one item, not half of the work. Each item's result must not
// depend on the thread that runs it (then the result does not depend on the thread count either).
template <typename Fn>
void parallel_items(int64_t count, const Fn& fn) {
  if (count <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), count);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t item = next.fetch_add(1, std::memory_order_relaxed); item < count;
         item = next.fetch_add(1, std::memory_order_relaxed)) {
      fn(item);
    }
  });
}

template <typename Fn>
void parallel_chunks(int64_t numel, Fn&& fn) {
  if (numel == 0) return;
  at::parallel_for(0, numel, kGrainSize, fn);
}

}  // namespace ampkit::cpu
