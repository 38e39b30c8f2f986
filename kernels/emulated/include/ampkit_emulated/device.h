// An emulated CUDA device: lets g++ compile kernels/src/*.cu as host C++ and run the kernels on
// the CPU, so every CI run executes the same kernel bodies nvcc compiles.
//
// Force-included (-include) before a kernel source in the emulated build (AMPKIT_EMULATED_DEVICE).
// It provides what the kernels use: threadIdx/blockIdx/blockDim/gridDim, the CUDA qualifiers,
// per-block shared memory (AMPKIT_SHARED_ARRAY), __syncthreads, warp shuffles and votes, atomics,
// min/isfinite, and __half/__nv_bfloat16 through CUDA's own conversion headers (their host paths
// round to nearest even, bit for bit as the device does).
//
// How a launch runs (kernels/emulated/src/device.cpp): every block of the grid in turn; the
// threads of a block are cooperative fibers that each run until they reach a barrier (a block
// barrier, or a warp barrier inside a shuffle or vote) or exit. When every live thread waits, the
// barriers that can complete are released. Between barriers the threads run in a chosen order
// (in order, reversed, seeded random), so code that only works in one order fails in another.
// Shared memory is checked: two threads touching one element between two barriers, at least one
// writing, is a race; reading an element no thread of the block wrote is an uninitialised read;
// an index past the array is out of bounds. Barriers reached by only part of a block or warp are
// divergence errors. Each is reported as a finding naming the kernel, the array and the threads,
// and fails the launch (cudaGetLastError returns cudaErrorLaunchFailure).
//
// Device memory is plain host memory: tests allocate each buffer on its own (see DeviceBuffer in
// tests/emulated), so AddressSanitizer sees reads past a tensor's end and UBSan misaligned vector
// loads; buffers start filled with a NaN pattern, as cudaMalloc'd memory holds garbage.
#pragma once

#if !defined(AMPKIT_EMULATED_DEVICE)
#error "ampkit_emulated/device.h is for the emulated build only (AMPKIT_EMULATED_DEVICE)"
#endif

// CUDA's host headers first: types (dim3, cudaError_t, cudaStream_t) and the qualifiers' host
// definitions, which the lines below then adjust.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "ampkit_emulated/api.h"

#undef __global__
#undef __device__
#undef __host__
#undef __grid_constant__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __grid_constant__
#define __launch_bounds__(...)
// Plain __shared__ cannot be checked: kernels declare shared memory with AMPKIT_SHARED_ARRAY.
#define __shared__ AMPKIT_EMULATED_DEVICE_declare_shared_memory_with_AMPKIT_SHARED_ARRAY

namespace ampkit_emulated {

namespace detail {

constexpr int kWarpSize = 32;
constexpr int kMaxThreadsPerBlock = 1024;

struct ThreadState;  // one fiber (device thread)

// The running device thread. Only valid inside a kernel.
ThreadState& current_thread();
const uint3& thread_index(const ThreadState& thread);
const uint3& block_index();
const dim3& block_dim();
const dim3& grid_dim();

void sync_threads();
// The warp barrier of a shuffle or vote: deposits `value`, waits for every lane of `mask`, and
// returns the value deposited by `source_lane` (or the caller's own when source_lane < 0).
uint64_t warp_exchange(unsigned mask, uint64_t value, int source_lane, const char* what);
// A vote: every lane of `mask` deposits a predicate; returns the mask of lanes whose was true.
unsigned warp_vote(unsigned mask, bool predicate, const char* what);
int lane_id();

// Runs `body` once per thread of every block of `grid` (see the file comment). Returns false and
// records a finding when the configuration is invalid.
struct BlockBody {
  void (*run)(void* context);
  void* context;
};
// `signature`: typeid(kernel).name(), which tells the instantiations of a kernel template apart.
void launch(const char* kernel_name, const char* signature, dim3 grid, dim3 block, size_t dynamic_shared_bytes,
            cudaStream_t stream, BlockBody body);

// Shared-memory access bookkeeping (race, uninitialised and bounds checks).
struct SharedShadow;
SharedShadow* new_shared_shadow(const char* name, int64_t count, size_t element_size, void* data);
void shared_access(SharedShadow* shadow, int64_t index, bool write);

}  // namespace detail

// One __shared__ array: statically allocated (blocks run one at a time), every element access
// checked. Element access goes through Ref, so reads and writes are told apart.
template <typename T, int64_t N>
class SharedArray {
 public:
  class Ref {
   public:
    Ref(SharedArray* array, int64_t index) : array_(array), index_(index) {}
    operator T() const {
      detail::shared_access(array_->shadow(), index_, /*write=*/false);
      return array_->values_[index_];
    }
    Ref& operator=(const T& value) {
      detail::shared_access(array_->shadow(), index_, /*write=*/true);
      array_->values_[index_] = value;
      return *this;
    }
    Ref& operator=(const Ref& other) { return *this = static_cast<T>(other); }
    Ref& operator+=(const T& value) { return *this = static_cast<T>(*this) + value; }
    Ref& operator-=(const T& value) { return *this = static_cast<T>(*this) - value; }
    Ref& operator*=(const T& value) { return *this = static_cast<T>(*this) * value; }
    Ref& operator|=(const T& value) { return *this = static_cast<T>(*this) | value; }
    Ref& operator&=(const T& value) { return *this = static_cast<T>(*this) & value; }

   private:
    SharedArray* array_;
    int64_t index_;
  };

  explicit SharedArray(const char* name) : name_(name) {}
  Ref operator[](int64_t index) { return Ref(this, index); }

 private:
  detail::SharedShadow* shadow() {
    if (shadow_ == nullptr) shadow_ = detail::new_shared_shadow(name_, N, sizeof(T), values_);
    return shadow_;
  }
  T values_[N];
  const char* name_;
  detail::SharedShadow* shadow_ = nullptr;
};

// The launch of one kernel: arguments are copied once, as into the kernel's parameter space, and
// every thread calls the kernel with them (by value, as on the device).
template <typename... Params>
class Launch {
 public:
  using Kernel = void (*)(Params...);
  Launch(Kernel kernel, const char* name, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream)
      : kernel_(kernel), name_(name), grid_(grid), block_(block), shared_bytes_(shared_bytes), stream_(stream) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    struct Context {
      Kernel kernel;
      std::tuple<std::decay_t<Params>...> arguments;
    } context{kernel_, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
    detail::launch(name_, typeid(Kernel).name(), grid_, block_, shared_bytes_, stream_,
                   detail::BlockBody{[](void* raw) {
                                       auto* c = static_cast<Context*>(raw);
                                       std::apply(c->kernel, c->arguments);
                                     },
                                     &context});
  }

 private:
  Kernel kernel_;
  const char* name_;
  dim3 grid_, block_;
  size_t shared_bytes_;
  cudaStream_t stream_;
};

template <typename... Params>
Launch<Params...> make_launch(void (*kernel)(Params...), const char* name, dim3 grid, dim3 block, size_t shared_bytes,
                              cudaStream_t stream) {
  return Launch<Params...>(kernel, name, grid, block, shared_bytes, stream);
}

}  // namespace ampkit_emulated

// ---- the names kernel code uses ----

#define threadIdx (::ampkit_emulated::detail::thread_index(::ampkit_emulated::detail::current_thread()))
#define blockIdx (::ampkit_emulated::detail::block_index())
#define blockDim (::ampkit_emulated::detail::block_dim())
#define gridDim (::ampkit_emulated::detail::grid_dim())
#define warpSize 32

// AMPKIT_SHARED_ARRAY(T, name, N): `__shared__ T name[N]` on the device.
#define AMPKIT_SHARED_ARRAY(T, name, N) static ::ampkit_emulated::SharedArray<T, (N)> name(#name)

// AMPKIT_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...): kernel<<<...>>>(args...).
#define AMPKIT_LAUNCH(grid, block, shared_bytes, stream, ...) \
  ::ampkit_emulated::make_launch(__VA_ARGS__, #__VA_ARGS__, dim3(grid), dim3(block), (shared_bytes), (stream))

inline void __syncthreads() { ::ampkit_emulated::detail::sync_threads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::ampkit_emulated::detail::warp_exchange(mask, 0, -1, "__syncwarp");
}
inline void __threadfence() {}
inline void __threadfence_block() {}

namespace ampkit_emulated::detail {
template <typename T>
T shuffle(unsigned mask, T value, int source_lane, const char* what) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(uint64_t), "shuffles move up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_exchange(mask, bits, source_lane, what);
  T result;
  std::memcpy(&result, &bits, sizeof(T));
  return result;
}
// Source lane of lane `lane` for a shuffle inside segments of `width` lanes.
inline int segment_base(int lane, int width) { return lane - lane % width; }
}  // namespace ampkit_emulated::detail

template <typename T>
T __shfl_sync(unsigned mask, T value, int source, int width = warpSize) {
  const int lane = ::ampkit_emulated::detail::lane_id();
  const int base = ::ampkit_emulated::detail::segment_base(lane, width);
  return ::ampkit_emulated::detail::shuffle(mask, value, base + ((source % width) + width) % width, "__shfl_sync");
}
template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
  const int lane = ::ampkit_emulated::detail::lane_id();
  const int in_segment = lane % width;
  const int source = in_segment + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  return ::ampkit_emulated::detail::shuffle(mask, value, source, "__shfl_down_sync");
}
template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
  const int lane = ::ampkit_emulated::detail::lane_id();
  const int in_segment = lane % width;
  const int source = in_segment >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  return ::ampkit_emulated::detail::shuffle(mask, value, source, "__shfl_up_sync");
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize) {
  const int lane = ::ampkit_emulated::detail::lane_id();
  const int base = ::ampkit_emulated::detail::segment_base(lane, width);
  const int source = base + ((lane % width) ^ lane_mask) % width;
  return ::ampkit_emulated::detail::shuffle(mask, value, source, "__shfl_xor_sync");
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return ::ampkit_emulated::detail::warp_vote(mask, predicate != 0, "__ballot_sync");
}
inline int __any_sync(unsigned mask, int predicate) {
  return ::ampkit_emulated::detail::warp_vote(mask, predicate != 0, "__any_sync") != 0;
}
inline int __all_sync(unsigned mask, int predicate) {
  return ::ampkit_emulated::detail::warp_vote(mask, predicate != 0, "__all_sync") == mask;
}

// Atomics: the threads of a launch are fibers of one host thread, so a read-modify-write is
// atomic as written. Each returns the old value, as CUDA's do.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
template <typename T>
T atomicMax(T* address, T value) {
  const T old = *address;
  if (value > old) *address = value;
  return old;
}
template <typename T>
T atomicMin(T* address, T value) {
  const T old = *address;
  if (value < old) *address = value;
  return old;
}
template <typename T>
T atomicExch(T* address, T value) {
  const T old = *address;
  *address = value;
  return old;
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  const T old = *address;
  if (old == compare) *address = value;
  return old;
}

// CUDA's integer min/max overloads and the float classification the kernels call unqualified.
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
using std::isfinite;
using std::isinf;
using std::isnan;
