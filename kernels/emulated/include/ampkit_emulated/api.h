// The test-facing side of the emulated device (ampkit_emulated/device.h): the thread order,
// the findings of its checks and launch statistics. Free of kernel syntax, so test code that
// includes torch can include it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ampkit_emulated {

enum class ThreadOrder { InOrder, Reversed, Random };

const char* thread_order_name(ThreadOrder order);

// The order in which the threads of a block run between barriers, and the blocks of a grid run.
void set_thread_order(ThreadOrder order, uint64_t seed = 1);
ThreadOrder thread_order();

// What the checks found since the last call (races, uninitialised shared reads, out-of-bounds
// shared indices, divergent barriers, invalid launches), one readable line each; clears them.
std::vector<std::string> take_findings();

// Launch statistics since the last reset: launches, blocks and threads run, barriers released.
struct LaunchStats {
  int64_t launches = 0;
  int64_t blocks = 0;
  int64_t threads = 0;
  int64_t block_barriers = 0;
  int64_t warp_barriers = 0;
};
LaunchStats launch_stats();
void reset_launch_stats();

// The kernels launched since the last reset, by name (for the coverage test).
std::vector<std::string> launched_kernels();
// The same launches by the kernel's demangled type, e.g. "void (*)(LaunchTable<1>, long, AdvanceStepOp)":
// which instantiation of a kernel template ran.
std::vector<std::string> launched_kernel_signatures();

}  // namespace ampkit_emulated
