// Compiled like kernels/src (the emulated device's header force-included): see probe_kernels.h.
#include "probe_kernels.h"

#include <cuda_runtime.h>

#include "device_syntax.cuh"

namespace probe {
namespace {

__global__ void block_sum_kernel(const float* in, int n, bool with_barrier, float* out) {
  AMPKIT_SHARED_ARRAY(float, partial, 1024);
  float sum = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) sum += in[i];
  partial[threadIdx.x] = sum;
  if (with_barrier) __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int t = 0; t < static_cast<int>(blockDim.x); ++t) total += partial[t];
    *out = total;
  }
}

__global__ void shared_write_race_kernel(int* out) {
  AMPKIT_SHARED_ARRAY(int, slot, 1);
  slot[0] = static_cast<int>(threadIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) *out = slot[0];
}

__global__ void divergent_barrier_kernel() {
  if (threadIdx.x < 16) __syncthreads();
}

__global__ void uninitialised_shared_read_kernel(float* out) {
  AMPKIT_SHARED_ARRAY(float, values, 32);
  if (threadIdx.x == 0) *out = values[5];
}

__global__ void shared_out_of_bounds_kernel() {
  AMPKIT_SHARED_ARRAY(float, values, 32);
  values[threadIdx.x + 1] = 1.0f;
}

__global__ void partial_warp_shuffle_kernel() {
  (void)__shfl_down_sync(0xffffffffu, 1.0f, 1);
}

__global__ void shuffles_kernel(int* out) {
  const int t = threadIdx.x;
  const int n = blockDim.x;
  const int value = 100 + t;
  out[0 * n + t] = __shfl_down_sync(0xffffffffu, value, 3);
  out[1 * n + t] = __shfl_up_sync(0xffffffffu, value, 5);
  out[2 * n + t] = __shfl_xor_sync(0xffffffffu, value, 6);
  out[3 * n + t] = __shfl_sync(0xffffffffu, value, 7, 16);
  out[4 * n + t] = static_cast<int>(__ballot_sync(0xffffffffu, t % 3 == 0));
  out[5 * n + t] = __any_sync(0xffffffffu, t == 40);
  out[6 * n + t] = __all_sync(0xffffffffu, t < 60);
}

__global__ void indices_kernel(int* hits, int* out) {
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int threads_per_block = blockDim.x * blockDim.y * blockDim.z;
  const int id = block * threads_per_block + thread;
  atomicAdd(&hits[id], 1);
  out[id] = block * 1000 + thread;
}

__global__ void empty_kernel() {}

}  // namespace

int block_sum(const float* in, int n, int threads, bool with_barrier, float* out) {
  AMPKIT_LAUNCH(1, threads, 0, nullptr, block_sum_kernel)(in, n, with_barrier, out);
  return cudaGetLastError();
}
int shared_write_race(int* out) {
  AMPKIT_LAUNCH(1, 64, 0, nullptr, shared_write_race_kernel)(out);
  return cudaGetLastError();
}
int divergent_barrier() {
  AMPKIT_LAUNCH(1, 64, 0, nullptr, divergent_barrier_kernel)();
  return cudaGetLastError();
}
int uninitialised_shared_read(float* out) {
  AMPKIT_LAUNCH(1, 32, 0, nullptr, uninitialised_shared_read_kernel)(out);
  return cudaGetLastError();
}
int shared_out_of_bounds() {
  AMPKIT_LAUNCH(1, 32, 0, nullptr, shared_out_of_bounds_kernel)();
  return cudaGetLastError();
}
int partial_warp_shuffle() {
  AMPKIT_LAUNCH(1, 8, 0, nullptr, partial_warp_shuffle_kernel)();
  return cudaGetLastError();
}
int shuffles(int* out) {
  AMPKIT_LAUNCH(1, 64, 0, nullptr, shuffles_kernel)(out);
  return cudaGetLastError();
}
int indices(int* hits, int* out) {
  AMPKIT_LAUNCH(dim3(3, 2, 2), dim3(4, 3, 2), 0, nullptr, indices_kernel)(hits, out);
  return cudaGetLastError();
}
int invalid_launch() {
  AMPKIT_LAUNCH(1, 2048, 0, nullptr, empty_kernel)();
  return cudaGetLastError();
}

}  // namespace probe
