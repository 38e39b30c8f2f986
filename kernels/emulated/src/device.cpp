// The emulated device's launcher and checks (see ampkit_emulated/device.h for what it models).
#include "ampkit_emulated/device.h"

#include <algorithm>
#include <cinttypes>
#include <cstdlib>
#include <cxxabi.h>
#include <cstdio>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <set>

#include "fiber.h"

#if defined(__SANITIZE_ADDRESS__)
#define AMPKIT_EMULATED_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AMPKIT_EMULATED_ASAN 1
#endif
#endif
#if defined(AMPKIT_EMULATED_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace ampkit_emulated {
namespace detail {

namespace {

// Deep enough for the kernels' register arrays with sanitizer redzones around every frame.
constexpr size_t kFiberStackBytes = 256 * 1024;
// Findings recorded per launch; the rest are counted.
constexpr int kMaxFindingsPerLaunch = 12;

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Exited };

// Thrown inside a fiber to end its block after a finding that makes going on meaningless (an
// out-of-bounds shared index, mismatched warp masks); caught in the fiber's entry.
struct BlockAborted {};

}  // namespace

struct ThreadState {
  uint3 index{};
  int linear = 0;
  int warp = 0;
  int lane = 0;
  State state = State::Runnable;
  uint64_t block_epoch = 0;      // block barriers passed
  uint64_t warp_epoch = 0;       // full-warp barriers passed
  Context context;
#if defined(AMPKIT_EMULATED_ASAN)
  void* fake_stack = nullptr;
#endif
};

struct Access {
  int thread = -1;
  uint64_t block_epoch = 0;
  uint64_t warp_epoch = 0;
};

struct ElementShadow {
  bool written = false;
  Access last_write;
  std::vector<Access> reads;  // since the last write
};

struct SharedShadow {
  const char* name;
  int64_t count;
  size_t element_size;
  void* data;
  uint64_t block_serial = 0;  // the block the elements below describe
  std::vector<ElementShadow> elements;
  uint64_t uninitialised_reported_launch = 0;  // one uninitialised-read finding per array and launch
};

namespace {

struct Warp {
  uint64_t generation = 0;
  bool forming = false;
  unsigned mask = 0;
  const char* what = "";
  uint64_t slots[2][kWarpSize] = {};
  uint64_t sync_epoch = 0;
};

struct Device {
  std::mutex launch_mutex;  // one launch at a time: shared arrays are static storage
  ThreadOrder order = ThreadOrder::InOrder;
  uint64_t seed = 1;
  std::vector<std::string> findings;
  LaunchStats stats;
  std::set<std::string> launched;
  std::set<std::string> launched_signatures;
  cudaError_t last_error = cudaSuccess;
  std::vector<std::unique_ptr<SharedShadow>> shadows;

  // The launch in progress.
  const char* kernel_name = "";
  dim3 grid, block;
  uint3 block_index{};
  BlockBody body{};
  std::vector<std::unique_ptr<FiberStack>> stacks;
  std::vector<ThreadState> threads;
  std::vector<Warp> warps;
  ThreadState* current = nullptr;
  Context scheduler;
  uint64_t launch_serial = 0;  // counts every launch (launch_stats() can be reset)
  uint64_t block_serial = 0;
  int findings_this_launch = 0;
  bool in_block = false;  // findings name the block only while one runs
  bool abort_block = false;
  std::mt19937_64 rng;
#if defined(AMPKIT_EMULATED_ASAN)
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
#endif
};

Device& device() {
  static Device instance;
  return instance;
}

std::string hex(uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%" PRIx64, value);
  return text;
}

std::string format_index(const uint3& index) {
  return "(" + std::to_string(index.x) + "," + std::to_string(index.y) + "," + std::to_string(index.z) + ")";
}

void add_finding(const std::string& text) {
  Device& d = device();
  ++d.findings_this_launch;
  if (d.findings_this_launch <= kMaxFindingsPerLaunch) {
    d.findings.push_back(std::string(d.kernel_name) + (d.in_block ? ", block " + format_index(d.block_index) : "") +
                         ": " + text);
  } else if (d.findings_this_launch == kMaxFindingsPerLaunch + 1) {
    d.findings.push_back(std::string(d.kernel_name) + ": further findings of this launch not listed");
  }
}

std::string thread_name(int linear) {
  return "thread " + format_index(device().threads[static_cast<size_t>(linear)].index);
}

void switch_to_scheduler(ThreadState& thread, bool exiting) {
  Device& d = device();
#if defined(AMPKIT_EMULATED_ASAN)
  __sanitizer_start_switch_fiber(exiting ? nullptr : &thread.fake_stack, d.scheduler_stack_bottom,
                                 d.scheduler_stack_size);
#endif
  switch_context(thread.context, d.scheduler);
#if defined(AMPKIT_EMULATED_ASAN)
  __sanitizer_finish_switch_fiber(thread.fake_stack, nullptr, nullptr);
#endif
}

void resume(ThreadState& thread) {
  Device& d = device();
  d.current = &thread;
#if defined(AMPKIT_EMULATED_ASAN)
  const FiberStack& stack = *d.stacks[static_cast<size_t>(thread.linear)];
  __sanitizer_start_switch_fiber(&d.scheduler_fake_stack, stack.bottom(), stack.size());
#endif
  switch_context(d.scheduler, thread.context);
#if defined(AMPKIT_EMULATED_ASAN)
  __sanitizer_finish_switch_fiber(d.scheduler_fake_stack, nullptr, nullptr);
#endif
  d.current = nullptr;
}

void fiber_main(void* argument) {
  auto* thread = static_cast<ThreadState*>(argument);
  Device& d = device();
#if defined(AMPKIT_EMULATED_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &d.scheduler_stack_bottom, &d.scheduler_stack_size);
#endif
  try {
    d.body.run(d.body.context);
  } catch (const BlockAborted&) {
    d.abort_block = true;
  } catch (const std::exception& error) {
    add_finding(thread_name(thread->linear) + " threw: " + error.what());
    d.abort_block = true;
  }
  thread->state = State::Exited;
  switch_to_scheduler(*thread, /*exiting=*/true);
  __builtin_unreachable();
}

void order_ids(std::vector<int>& ids) {
  Device& d = device();
  switch (d.order) {
    case ThreadOrder::InOrder: break;
    case ThreadOrder::Reversed: std::reverse(ids.begin(), ids.end()); break;
    case ThreadOrder::Random: std::shuffle(ids.begin(), ids.end(), d.rng); break;
  }
}

unsigned existing_lanes(int warp) {
  const int total = static_cast<int>(device().threads.size());
  const int lanes = std::min(kWarpSize, total - warp * kWarpSize);
  return lanes == kWarpSize ? 0xffffffffu : ((1u << lanes) - 1u);
}

// Releases every warp barrier whose lanes have all arrived. Returns whether one was released;
// sets abort_block (with a finding) when a lane a barrier waits for has exited.
bool release_warp_barriers() {
  Device& d = device();
  bool released = false;
  for (size_t w = 0; w < d.warps.size(); ++w) {
    Warp& warp = d.warps[w];
    if (!warp.forming) continue;
    const unsigned present = existing_lanes(static_cast<int>(w));
    bool complete = true;
    for (int lane = 0; lane < kWarpSize; ++lane) {
      if (!(warp.mask >> lane & 1u)) continue;
      const ThreadState& thread = d.threads[w * kWarpSize + static_cast<size_t>(lane)];
      if (thread.state == State::Exited) {
        add_finding(std::string(warp.what) + " with mask " + hex(warp.mask) + " in warp " + std::to_string(w) +
                    ": lane " + std::to_string(lane) + " has exited (the warp would hang)");
        d.abort_block = true;
        return false;
      }
      if (thread.state != State::AtWarpBarrier) complete = false;
    }
    if (!complete) continue;
    const bool full_warp = warp.mask == present;
    if (full_warp) ++warp.sync_epoch;
    for (int lane = 0; lane < kWarpSize; ++lane) {
      if (!(warp.mask >> lane & 1u)) continue;
      ThreadState& thread = d.threads[w * kWarpSize + static_cast<size_t>(lane)];
      thread.state = State::Runnable;
      if (full_warp) thread.warp_epoch = warp.sync_epoch;
    }
    warp.forming = false;
    ++warp.generation;
    ++d.stats.warp_barriers;
    released = true;
  }
  return released;
}

std::string describe_waits() {
  Device& d = device();
  int at_block = 0, at_warp = 0, exited = 0;
  std::string first_warp_wait;
  for (const ThreadState& thread : d.threads) {
    if (thread.state == State::AtBlockBarrier) ++at_block;
    if (thread.state == State::Exited) ++exited;
    if (thread.state == State::AtWarpBarrier) {
      if (at_warp++ == 0) first_warp_wait = " (first: " + thread_name(thread.linear) + " in " + d.warps[thread.warp].what + ")";
    }
  }
  return std::to_string(at_block) + " threads wait at __syncthreads, " + std::to_string(at_warp) +
         " at a warp barrier" + first_warp_wait + ", " + std::to_string(exited) + " have exited";
}

void run_block() {
  Device& d = device();
  const int count = static_cast<int>(d.threads.size());
  for (int t = 0; t < count; ++t) {
    ThreadState& thread = d.threads[static_cast<size_t>(t)];
    const int x = t % static_cast<int>(d.block.x);
    const int y = t / static_cast<int>(d.block.x) % static_cast<int>(d.block.y);
    const int z = t / static_cast<int>(d.block.x * d.block.y);
    thread = ThreadState{};
    thread.index = uint3{static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z)};
    thread.linear = t;
    thread.warp = t / kWarpSize;
    thread.lane = t % kWarpSize;
    const FiberStack& stack = *d.stacks[static_cast<size_t>(t)];
#if defined(AMPKIT_EMULATED_ASAN)
    // An abandoned or finished fiber may have left poisoned redzones on its stack.
    __asan_unpoison_memory_region(stack.bottom(), stack.size());
#endif
    make_context(thread.context, stack, &fiber_main, &thread);
  }
  for (Warp& warp : d.warps) warp = Warp{};
  ++d.block_serial;
  d.abort_block = false;
  ++d.stats.blocks;
  d.stats.threads += count;

  std::vector<int> ids;
  ids.reserve(static_cast<size_t>(count));
  while (!d.abort_block) {
    ids.clear();
    for (int t = 0; t < count; ++t) {
      if (d.threads[static_cast<size_t>(t)].state == State::Runnable) ids.push_back(t);
    }
    if (!ids.empty()) {
      order_ids(ids);
      for (int t : ids) {
        resume(d.threads[static_cast<size_t>(t)]);
        if (d.abort_block) break;
      }
      continue;
    }
    if (release_warp_barriers()) continue;
    if (d.abort_block) break;
    int live = 0, at_block = 0;
    for (const ThreadState& thread : d.threads) {
      if (thread.state != State::Exited) ++live;
      if (thread.state == State::AtBlockBarrier) ++at_block;
    }
    if (live == 0) break;
    if (at_block == live && live == count) {
      for (ThreadState& thread : d.threads) {
        thread.state = State::Runnable;
        ++thread.block_epoch;
      }
      ++d.stats.block_barriers;
      continue;
    }
    if (at_block == live) {
      add_finding("__syncthreads reached by " + std::to_string(live) + " of " + std::to_string(count) +
                  " threads; the others have exited (a barrier in divergent code)");
    } else {
      add_finding("no barrier can complete: " + describe_waits());
    }
    d.abort_block = true;
  }
}

bool valid_configuration(const dim3& grid, const dim3& block, size_t shared_bytes) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  return grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 2147483647u && grid.y <= 65535u && grid.z <= 65535u &&
         block.x >= 1 && block.y >= 1 && block.z >= 1 && block.z <= 64 && threads <= kMaxThreadsPerBlock &&
         shared_bytes <= 48 * 1024;
}

ThreadState& running_thread(const char* what) {
  ThreadState* thread = device().current;
  if (thread == nullptr) {
    std::fprintf(stderr, "ampkit emulated device: %s called outside a kernel\n", what);
    std::abort();
  }
  return *thread;
}

}  // namespace

ThreadState& current_thread() { return running_thread("threadIdx"); }
const uint3& thread_index(const ThreadState& thread) { return thread.index; }
const uint3& block_index() { return device().block_index; }
const dim3& block_dim() { return device().block; }
const dim3& grid_dim() { return device().grid; }
int lane_id() { return running_thread("a warp intrinsic").lane; }

void sync_threads() {
  ThreadState& thread = running_thread("__syncthreads");
  thread.state = State::AtBlockBarrier;
  switch_to_scheduler(thread, false);
}

namespace {

// Joins the warp barrier of `what` with `mask`; returns the generation whose slots hold the
// deposits once every lane of the mask has arrived.
uint64_t join_warp_barrier(ThreadState& thread, unsigned mask, uint64_t deposit, const char* what) {
  Device& d = device();
  Warp& warp = d.warps[static_cast<size_t>(thread.warp)];
  if (!(mask >> thread.lane & 1u)) {
    add_finding(thread_name(thread.linear) + " calls " + what + " with a mask that leaves out its own lane");
    throw BlockAborted{};
  }
  const unsigned present = existing_lanes(thread.warp);
  if ((mask & ~present) != 0) {
    add_finding(std::string(what) + " mask names lanes that do not exist in warp " + std::to_string(thread.warp) +
                " (block of " + std::to_string(d.threads.size()) + " threads)");
    throw BlockAborted{};
  }
  if (!warp.forming) {
    warp.forming = true;
    warp.mask = mask;
    warp.what = what;
  } else if (warp.mask != mask || std::string(warp.what) != what) {
    add_finding(thread_name(thread.linear) + " joins " + what + " while its warp waits in " + warp.what +
                " with another mask: the lanes diverge");
    throw BlockAborted{};
  }
  const uint64_t generation = warp.generation;
  warp.slots[generation % 2][thread.lane] = deposit;
  thread.state = State::AtWarpBarrier;
  switch_to_scheduler(thread, false);
  return generation;
}

}  // namespace

uint64_t warp_exchange(unsigned mask, uint64_t value, int source_lane, const char* what) {
  ThreadState& thread = running_thread(what);
  const uint64_t generation = join_warp_barrier(thread, mask, value, what);
  if (source_lane < 0) return value;
  if (!(mask >> source_lane & 1u)) {
    add_finding(thread_name(thread.linear) + " reads lane " + std::to_string(source_lane) + " in " + what +
                ", which is not in the mask (undefined value)");
    return value;
  }
  return device().warps[static_cast<size_t>(thread.warp)].slots[generation % 2][source_lane];
}

unsigned warp_vote(unsigned mask, bool predicate, const char* what) {
  ThreadState& thread = running_thread(what);
  const uint64_t generation = join_warp_barrier(thread, mask, predicate ? 1 : 0, what);
  const Warp& warp = device().warps[static_cast<size_t>(thread.warp)];
  unsigned ballot = 0;
  for (int lane = 0; lane < kWarpSize; ++lane) {
    if ((mask >> lane & 1u) && warp.slots[generation % 2][lane] != 0) ballot |= 1u << lane;
  }
  return ballot;
}

void launch(const char* kernel_name, const char* signature, dim3 grid, dim3 block, size_t dynamic_shared_bytes,
            cudaStream_t stream, BlockBody body) {
  (void)stream;  // one stream of work: every launch runs to completion before it returns
  Device& d = device();
  std::lock_guard<std::mutex> lock(d.launch_mutex);
  std::string base_name(kernel_name);
  base_name = base_name.substr(0, base_name.find('<'));
  d.launched.insert(base_name);
  int demangle_status = 0;
  char* demangled = abi::__cxa_demangle(signature, nullptr, nullptr, &demangle_status);
  d.launched_signatures.insert(demangle_status == 0 && demangled != nullptr ? demangled : signature);
  std::free(demangled);
  d.kernel_name = kernel_name;
  d.findings_this_launch = 0;
  ++d.launch_serial;
  if (!valid_configuration(grid, block, dynamic_shared_bytes)) {
    add_finding("invalid launch configuration: grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," +
                std::to_string(grid.z) + "), block (" + std::to_string(block.x) + "," + std::to_string(block.y) +
                "," + std::to_string(block.z) + "), " + std::to_string(dynamic_shared_bytes) + " shared bytes");
    d.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  ++d.stats.launches;
  d.grid = grid;
  d.block = block;
  d.body = body;
  const size_t threads = size_t{block.x} * block.y * block.z;
  while (d.stacks.size() < threads) d.stacks.push_back(std::make_unique<FiberStack>(kFiberStackBytes));
  d.threads.resize(threads);  // run_block initialises every thread and warp
  d.warps.resize((threads + kWarpSize - 1) / kWarpSize);
  d.rng.seed(d.seed ^ (d.stats.launches * 0x9E3779B97F4A7C15ull));

  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  std::vector<uint64_t> block_order(blocks);
  std::iota(block_order.begin(), block_order.end(), uint64_t{0});
  if (d.order == ThreadOrder::Reversed) std::reverse(block_order.begin(), block_order.end());
  if (d.order == ThreadOrder::Random) std::shuffle(block_order.begin(), block_order.end(), d.rng);
  for (const uint64_t b : block_order) {
    d.block_index = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                          static_cast<unsigned>(b / (uint64_t{grid.x} * grid.y))};
    d.in_block = true;
    run_block();
    d.in_block = false;
    if (d.abort_block) break;
  }
  if (d.findings_this_launch > 0) d.last_error = cudaErrorLaunchFailure;
  d.kernel_name = "";
}

SharedShadow* new_shared_shadow(const char* name, int64_t count, size_t element_size, void* data) {
  Device& d = device();
  d.shadows.push_back(std::unique_ptr<SharedShadow>(new SharedShadow{name, count, element_size, data}));
  return d.shadows.back().get();
}

namespace {

bool ordered_before(const Access& earlier, const ThreadState& now) {
  if (earlier.thread == now.linear) return true;
  if (now.block_epoch > earlier.block_epoch) return true;
  const ThreadState& other = device().threads[static_cast<size_t>(earlier.thread)];
  return other.warp == now.warp && now.warp_epoch > earlier.warp_epoch;
}

}  // namespace

void shared_access(SharedShadow* shadow, int64_t index, bool write) {
  Device& d = device();
  ThreadState& thread = running_thread("shared memory");
  if (index < 0 || index >= shadow->count) {
    add_finding(thread_name(thread.linear) + " indexes shared " + shadow->name + "[" + std::to_string(index) +
                "], past its " + std::to_string(shadow->count) + " elements");
    throw BlockAborted{};
  }
  if (shadow->block_serial != d.block_serial) {
    // A new block: its shared memory holds no value any thread of it wrote. Garbage, as on the device.
    shadow->block_serial = d.block_serial;
    shadow->elements.assign(static_cast<size_t>(shadow->count), ElementShadow{});
    std::memset(shadow->data, 0xFF, static_cast<size_t>(shadow->count) * shadow->element_size);
  }
  ElementShadow& element = shadow->elements[static_cast<size_t>(index)];
  const auto address = reinterpret_cast<uintptr_t>(static_cast<char*>(shadow->data) + index * shadow->element_size);
  auto race = [&](const Access& earlier, const char* earlier_kind) {
    add_finding(std::string("shared-memory race on ") + shadow->name + "[" + std::to_string(index) + "] (address " +
                hex(address) + ")" +
                ": " + earlier_kind + " by " + thread_name(earlier.thread) + ", " + (write ? "written" : "read") +
                " by " + thread_name(thread.linear) + " with no barrier between");
  };
  const Access access{thread.linear, thread.block_epoch, thread.warp_epoch};
  if (write) {
    if (element.written && !ordered_before(element.last_write, thread)) race(element.last_write, "written");
    for (const Access& read : element.reads) {
      if (!ordered_before(read, thread)) {
        race(read, "read");
        break;
      }
    }
    element.written = true;
    element.last_write = access;
    element.reads.clear();
    return;
  }
  if (!element.written) {
    if (shadow->uninitialised_reported_launch != d.launch_serial) {
      add_finding(thread_name(thread.linear) + " reads shared " + shadow->name + "[" + std::to_string(index) +
                  "] before any thread of the block wrote it");
      shadow->uninitialised_reported_launch = d.launch_serial;
    }
  } else if (!ordered_before(element.last_write, thread)) {
    race(element.last_write, "written");
  }
  if (element.reads.size() < 64) element.reads.push_back(access);
}

}  // namespace detail

const char* thread_order_name(ThreadOrder order) {
  switch (order) {
    case ThreadOrder::InOrder: return "in order";
    case ThreadOrder::Reversed: return "reversed";
    case ThreadOrder::Random: return "seeded random";
  }
  return "?";
}

void set_thread_order(ThreadOrder order, uint64_t seed) {
  detail::Device& d = detail::device();
  d.order = order;
  d.seed = seed;
}

ThreadOrder thread_order() { return detail::device().order; }

std::vector<std::string> take_findings() {
  std::vector<std::string> findings;
  findings.swap(detail::device().findings);
  return findings;
}

LaunchStats launch_stats() { return detail::device().stats; }
void reset_launch_stats() {
  detail::device().stats = LaunchStats{};
  detail::device().launched.clear();
  detail::device().launched_signatures.clear();
}

std::vector<std::string> launched_kernels() {
  const auto& launched = detail::device().launched;
  return std::vector<std::string>(launched.begin(), launched.end());
}

std::vector<std::string> launched_kernel_signatures() {
  const auto& launched = detail::device().launched_signatures;
  return std::vector<std::string>(launched.begin(), launched.end());
}

}  // namespace ampkit_emulated

// ---- the CUDA runtime calls kernels/ makes, answered by the emulated device ----

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t error = ampkit_emulated::detail::device().last_error;
  ampkit_emulated::detail::device().last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError(void) { return ampkit_emulated::detail::device().last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure (the emulated device reported findings)";
    default: return "unknown error";
  }
}

}  // extern "C"
