// Helpers for ampkit's CPU kernels: parallel chunked loops over contiguous tensors.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

// at::parallel_for is a header template. Under torch's OpenMP backend, a file compiled without
// -fopenmp gets its serial fallback: every "parallel" loop then runs on the calling thread, whatever
// torch.set_num_threads says (ampkit's CPU kernels did, until this check).
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "ampkit's CPU kernels must be compiled with -fopenmp: torch's intra-op backend is OpenMP"
#endif

namespace ampkit::cpu {

// Elements per parallel task: big enough that thread hand-off is noise.
constexpr int64_t kGrainSize = 32768;

// The non-finite test written so that the compiler vectorises it: x - x is 0 for every
// finite x and NaN for inf/NaN.
inline bool is_non_finite(float value) {
  const float difference = value - value;
  return difference != difference;
}

// Calls fn(item) for every item in [0, count) on at::parallel_for's threads. Each thread first
// walks its own contiguous share of the items in order (a streaming loop keeps one run of memory
// per thread, which the hardware prefetchers and DRAM pages reward: handing out items round-robin
// cost ~10 % of the bandwidth at 2 threads), then helps with the other shares, taking their items
// one at a time from the same cursors: on a shared machine a thread that is descheduled holds up
// one item, not its whole share. Each item's result must not depend on the thread that runs it
// (then the result does not depend on the thread count either).
template <typename Fn>
void parallel_items(int64_t count, const Fn& fn) {
  if (count <= 0) return;
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), count);
  if (workers == 1) {
    for (int64_t item = 0; item < count; ++item) fn(item);
    return;
  }
  struct alignas(64) Share {
    std::atomic<int64_t> next;
    int64_t end;
  };
  std::unique_ptr<Share[]> shares(new Share[workers]);
  for (int64_t w = 0; w < workers; ++w) {
    shares[w].next.store(w * count / workers, std::memory_order_relaxed);
    shares[w].end = (w + 1) * count / workers;
  }
  at::parallel_for(0, workers, 1, [&](int64_t first, int64_t last) {
    for (int64_t w = first; w < last; ++w) {
      for (int64_t k = 0; k < workers; ++k) {
        Share& share = shares[(w + k) % workers];
        for (int64_t item = share.next.fetch_add(1, std::memory_order_relaxed); item < share.end;
             item = share.next.fetch_add(1, std::memory_order_relaxed)) {
          fn(item);
        }
      }
    }
  });
}

template <typename Fn>
void parallel_chunks(int64_t numel, Fn&& fn) {
  if (numel == 0) return;
  at::parallel_for(0, numel, kGrainSize, fn);
}

}  // namespace ampkit::cpu
