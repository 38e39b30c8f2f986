// ampkit::cpu_kernel_threads(): the CPU kernels' parallel loops, observed.
#include <ATen/Parallel.h>

#include <mutex>
#include <set>

#include "ampkit/build_info.h"
#include "cpu/cpu_loops.h"

namespace ampkit {

int64_t cpu_kernel_threads() {
  // parallel_items' entry (cpu_loops.h): one index per worker, each run by the thread that owns
  // it, so the set of thread numbers is the number of threads a kernel's loop gets.
  const int64_t workers = at::get_num_threads();
  std::mutex mutex;
  std::set<int> threads;
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    const std::lock_guard<std::mutex> lock(mutex);
    threads.insert(at::get_thread_num());
  });
  return static_cast<int64_t>(threads.size());
}

}  // namespace ampkit
