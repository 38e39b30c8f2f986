// The generic multi-tensor launcher: one kernel launch processes many tensors.
//
// How tensors are cut into chunks and tables is planned on the host (ampkit_kernels/
// multi_tensor_plan.h, tested without a GPU); this file adds the kernel and its launches.
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
#include "ampkit_kernels/multi_tensor_plan.h"
#include "device_syntax.cuh"

namespace ampkit_kernels {
namespace detail {

constexpr int kThreadsPerBlock = 512;
// Elements per block-chunk: large enough to amortise the per-block setup, small enough to
// give many blocks for a single large tensor.
constexpr int64_t kDefaultChunkSize = 65536;
// Elements each thread handles per iteration; with 16-byte aligned fp32 this is a 16-byte load.
constexpr int kIlp = 4;

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
  LaunchTable<Depth> table;
  const PlanStatus planned = plan_multi_tensor_launches<Depth>(
      tensors.lists, tensors.numels, chunk_size, table, [&](const LaunchTable<Depth>& full, int num_blocks) {
        AMPKIT_LAUNCH(num_blocks, kThreadsPerBlock, 0, stream, multi_tensor_kernel<Depth, Op>)(full, chunk_size, op);
        const cudaError_t error = cudaGetLastError();
        if (error == cudaSuccess) return true;
        result.status = Status::CudaError;
        result.cuda_error = error;
        return false;
      });
  if (planned == PlanStatus::InvalidArgument) result.status = Status::InvalidArgument;
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
    case DType::Float64: break;  // the list ops that take float64 dispatch it themselves
  }
  Result result;
  result.status = Status::Unsupported;
  return result;
}

}  // namespace detail
}  // namespace ampkit_kernels
