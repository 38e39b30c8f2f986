#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#if !defined(__x86_64__)
#error "the emulated device's fiber switch is written for x86-64"
#endif

// ampkit_emulated_switch(void** save_stack_pointer, void* load_stack_pointer)
// Pushes the callee-saved registers and the floating-point control state, stores the stack
// pointer, loads the other one and pops the same frame there. A new fiber's frame (built by
// make_context) "returns" into ampkit_emulated_fiber_start.
asm(R"(
  .text
  .globl ampkit_emulated_switch
  .type ampkit_emulated_switch, @function
ampkit_emulated_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  fldcw (%rsp)
  ldmxcsr 8(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size ampkit_emulated_switch, .-ampkit_emulated_switch

  .globl ampkit_emulated_fiber_start
  .type ampkit_emulated_fiber_start, @function
ampkit_emulated_fiber_start:
  movq %r12, %rdi
  andq $-16, %rsp
  callq *%r13
  ud2
  .size ampkit_emulated_fiber_start, .-ampkit_emulated_fiber_start
  .section .note.GNU-stack,"",@progbits
  .text
)");

extern "C" void ampkit_emulated_switch(void** save_stack_pointer, void* load_stack_pointer);
extern "C" void ampkit_emulated_fiber_start();

namespace ampkit_emulated::detail {

FiberStack::FiberStack(size_t size) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_ = (size + page - 1) / page * page;
  mapping_size_ = size_ + page;
  void* mapping = mmap(nullptr, mapping_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
  if (mapping == MAP_FAILED) {
    std::perror("ampkit emulated device: mmap of a fiber stack");
    std::abort();
  }
  mapping_ = static_cast<char*>(mapping);
  mprotect(mapping_, page, PROT_NONE);  // the guard page
  base_ = mapping_ + page;
}

FiberStack::~FiberStack() { munmap(mapping_, mapping_size_); }

void make_context(Context& context, const FiberStack& stack, void (*entry)(void*), void* argument) {
  // The frame ampkit_emulated_switch pops: control words, r15..r12, rbx, rbp, return address.
  auto* top = reinterpret_cast<uint64_t*>(stack.bottom() + stack.size());
  top = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(top) & ~uintptr_t{15});
  uint64_t* frame = top - 10;
  uint32_t mxcsr = 0;
  uint16_t x87_control = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(x87_control));
  frame[0] = x87_control;
  frame[1] = mxcsr;
  frame[2] = 0;                                      // r15
  frame[3] = 0;                                      // r14
  frame[4] = reinterpret_cast<uint64_t>(entry);      // r13
  frame[5] = reinterpret_cast<uint64_t>(argument);   // r12
  frame[6] = 0;                                      // rbx
  frame[7] = 0;                                      // rbp
  frame[8] = reinterpret_cast<uint64_t>(&ampkit_emulated_fiber_start);
  frame[9] = 0;
  context.stack_pointer = frame;
}

void switch_context(Context& from, const Context& to) { ampkit_emulated_switch(&from.stack_pointer, to.stack_pointer); }

}  // namespace ampkit_emulated::detail
