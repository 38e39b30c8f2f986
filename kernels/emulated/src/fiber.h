// Cooperative fibers for the emulated device: a hand-written x86-64 context switch (callee-saved
// registers, MXCSR and the x87 control word), about 4x cheaper than swapcontext, which also
// saves and restores the signal mask through a system call on every switch.
#pragma once

#include <cstddef>

namespace ampkit_emulated::detail {

// A fiber's own stack, with an inaccessible guard page below it (an overflow faults at once).
class FiberStack {
 public:
  explicit FiberStack(size_t size);
  ~FiberStack();
  FiberStack(const FiberStack&) = delete;
  FiberStack& operator=(const FiberStack&) = delete;
  char* bottom() const { return base_; }
  size_t size() const { return size_; }

 private:
  char* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  char* base_ = nullptr;
  size_t size_ = 0;
};

// A saved execution context: the stack pointer of a suspended fiber (or of the scheduler).
struct Context {
  void* stack_pointer = nullptr;
};

// Prepares `context` so that the first switch to it calls entry(argument) on `stack`.
// `entry` must never return: a fiber ends by switching away for good.
void make_context(Context& context, const FiberStack& stack, void (*entry)(void*), void* argument);

// Saves the running context into `from` and resumes `to`.
void switch_context(Context& from, const Context& to);

}  // namespace ampkit_emulated::detail
