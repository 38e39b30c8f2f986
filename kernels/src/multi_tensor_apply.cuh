// The generic multi-tensor launcher: one kernel launch processes many tensors.
//
// Every tensor is cut into chunks of `chunk_size` elements; each CUDA block processes one
// chunk. The (tensor, chunk) map and the tensors' addresses travel in the kernel's argument
// space (a LaunchTable passed by value as a __grid_constant__), so no host->device copy and
// no device allocation is needed per launch. The table is kept under the classic 4 KiB
// kernel-parameter limit; when it fills up (too many tensors or too many blocks) the launcher
// issues the launch and starts a new table, carrying a partially processed tensor over.
//
// A list operation is a small functor `Op` with
//   __device__ void operator()(const LaunchTable<Depth>& table, int slot, int64_t chunk,
//                              int64_t chunk_size);
// and everything else (tables, launches, error checks) lives here.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "ampkit_kernels/common.h"

namespace ampkit_kernels {
namespace detail {

constexpr int kThreadsPerBlock = 512;
// Elements per block-chunk: large enough to amortise the per-block setup, small enough to
// give many blocks for a single large tensor.
constexpr int64_t kDefaultChunkSize = 65536;
// Elements each thread handles per iteration; with 16-byte aligned fp32 this is a 16-byte load.
constexpr int kIlp = 4;

// Capacities chosen so sizeof(LaunchTable<Depth>) stays below 4 KiB for every depth <= 6.
template <int Depth>
struct TableCapacity {
  static constexpr int kMaxTensors =
      Depth == 1 ? 110 : Depth == 2 ? 64 : Depth == 3 ? 48 : Depth == 4 ? 36 : Depth == 5 ? 30 : 32;
  static constexpr int kMaxBlocks = 320;
};

template <int Depth>
struct LaunchTable {
  static constexpr int kMaxTensors = TableCapacity<Depth>::kMaxTensors;
  static constexpr int kMaxBlocks = TableCapacity<Depth>::kMaxBlocks;
  void* addresses[Depth][kMaxTensors];
  int64_t numels[kMaxTensors];
  unsigned char block_to_slot[kMaxBlocks];
  int block_to_chunk[kMaxBlocks];
};

static_assert(sizeof(LaunchTable<1>) <= 4096, "launch table exceeds kernel parameter space");
static_assert(sizeof(LaunchTable<2>) <= 4096, "launch table exceeds kernel parameter space");
static_assert(sizeof(LaunchTable<3>) <= 4096, "launch table exceeds kernel parameter space");
static_assert(sizeof(LaunchTable<4>) <= 4096, "launch table exceeds kernel parameter space");
static_assert(sizeof(LaunchTable<5>) <= 4096, "launch table exceeds kernel parameter space");
static_assert(sizeof(LaunchTable<6>) <= 4096, "launch table exceeds kernel parameter space");

template <int Depth, typename Op>
__global__ void __launch_bounds__(kThreadsPerBlock)
    multi_tensor_kernel(const __grid_constant__ LaunchTable<Depth> table, int64_t chunk_size, Op op) {
  const int slot = table.block_to_slot[blockIdx.x];
  const int64_t chunk = table.block_to_chunk[blockIdx.x];
  op(table, slot, chunk, chunk_size);
}

// Launches `op` over every chunk of every tensor in `tensors` (which must have Depth lists).
// Tensors with zero elements are skipped. Returns the first launch error, if any.
template <int Depth, typename Op>
Result multi_tensor_apply(const TensorLists& tensors, Op op, cudaStream_t stream,
                          int64_t chunk_size = kDefaultChunkSize) {
  Result result;
  if (static_cast<int>(tensors.lists.size()) != Depth || chunk_size <= 0) {
    result.status = Status::InvalidArgument;
    return result;
  }
  const size_t num_tensors = tensors.numels.size();
  for (const auto& list : tensors.lists) {
    if (list.size() != num_tensors) {
      result.status = Status::InvalidArgument;
      return result;
    }
  }
  using Table = LaunchTable<Depth>;
  Table table;
  int slots_used = 0;
  int blocks_used = 0;

  auto launch = [&]() -> bool {
    multi_tensor_kernel<Depth, Op><<<blocks_used, kThreadsPerBlock, 0, stream>>>(table, chunk_size, op);
    const cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess) {
      result.status = Status::CudaError;
      result.cuda_error = error;
      return false;
    }
    return true;
  };

  for (size_t t = 0; t < num_tensors; ++t) {
    const int64_t numel = tensors.numels[t];
    if (numel == 0) continue;
    const int slot = slots_used++;
    for (int l = 0; l < Depth; ++l) table.addresses[l][slot] = tensors.lists[l][t];
    table.numels[slot] = numel;
    const int64_t num_chunks = (numel + chunk_size - 1) / chunk_size;
    for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
      table.block_to_slot[blocks_used] = static_cast<unsigned char>(slot);
      table.block_to_chunk[blocks_used] = static_cast<int>(chunk);
      ++blocks_used;
      const bool last_chunk = chunk == num_chunks - 1;
      const bool blocks_full = blocks_used == Table::kMaxBlocks;
      const bool slots_full = slots_used == Table::kMaxTensors && last_chunk;
      if (blocks_full || slots_full) {
        if (!launch()) return result;
        blocks_used = 0;
        if (last_chunk) {
          slots_used = 0;
        } else {
          // The current tensor has chunks left: it becomes slot 0 of the next table.
          for (int l = 0; l < Depth; ++l) table.addresses[l][0] = table.addresses[l][slot];
          table.numels[0] = numel;
          slots_used = 1;
        }
      }
    }
  }
  if (blocks_used > 0) launch();
  return result;
}

// ---- element helpers shared by the list ops ----

template <typename T>
__device__ __forceinline__ float to_float(T value);
template <>
__device__ __forceinline__ float to_float<float>(float value) { return value; }
template <>
__device__ __forceinline__ float to_float<__half>(__half value) { return __half2float(value); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 value) { return __bfloat162float(value); }

template <typename T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ float from_float<float>(float value) { return value; }
template <>
__device__ __forceinline__ __half from_float<__half>(float value) { return __float2half_rn(value); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float value) { return __float2bfloat16_rn(value); }

template <typename T>
__device__ __forceinline__ bool is_aligned_for_ilp(const void* pointer) {
  return reinterpret_cast<uintptr_t>(pointer) % (sizeof(T) * kIlp) == 0;
}

// kIlp elements moved as one load/store when the address allows it.
template <typename T>
struct alignas(sizeof(T) * kIlp) Pack {
  T values[kIlp];
};

template <typename T>
__device__ __forceinline__ void load_pack(T (&dst)[kIlp], const T* src, int64_t index) {
  const Pack<T> pack = reinterpret_cast<const Pack<T>*>(src)[index];
#pragma unroll
  for (int i = 0; i < kIlp; ++i) dst[i] = pack.values[i];
}

template <typename T>
__device__ __forceinline__ void store_pack(T* dst, int64_t index, const T (&src)[kIlp]) {
  Pack<T> pack;
#pragma unroll
  for (int i = 0; i < kIlp; ++i) pack.values[i] = src[i];
  reinterpret_cast<Pack<T>*>(dst)[index] = pack;
}

// Calls `fn` with the CUDA element type for a DType.
template <typename Fn>
Result dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: return fn(float{});
    case DType::Float16: return fn(__half{});
    case DType::BFloat16: return fn(__nv_bfloat16{});
  }
  Result result;
  result.status = Status::Unsupported;
  return result;
}

}  // namespace detail
}  // namespace ampkit_kernels
