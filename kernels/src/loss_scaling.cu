// Dynamic loss scaling kernels: fused unscale + non-finite check (+ per-chunk sums of squares for
// the global L2 norm), the norm's finishing kernel, and the one-thread scale update.
#include "ampkit_kernels/loss_scaling.h"
#include "multi_tensor_apply.cuh"

namespace ampkit_kernels {
namespace {

using detail::LaunchTable;

// Chunk of one block. The norm partials are indexed by chunk, so the same constant sizes them.
constexpr int64_t kChunkSize = detail::kDefaultChunkSize;
constexpr int kWarpSize = 32;

// 16 bytes per load/store whatever the dtype (8 halfs, 4 floats).
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kSize = 16 / sizeof(T);
  T values[kSize];
};

// Sum of `value` over the block, valid in thread 0. Every thread of the block must call it.
__device__ __forceinline__ double block_sum(double value) {
  AMPKIT_SHARED_ARRAY(double, warp_sums, detail::kThreadsPerBlock / kWarpSize);
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  value = 0.0;
  if (warp == 0) {
    const int num_warps = blockDim.x / kWarpSize;
    value = lane < num_warps ? static_cast<double>(warp_sums[lane]) : 0.0;
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  return value;
}

// Lists: {grads} or, with the norm, {grads, partials}, where partials[t] points at tensor t's
// first chunk partial (a real double array of num_chunks(t) elements).
//
// The squares are summed in double: the square of any float, subnormals included, is exact in
// double and far from its range limits, so the norm is finite whenever the true norm is below
// FLT_MAX and tiny gradients keep their bits (an fp32 sum overflows at 65,536 values of 1e17 and
// loses precision to subnormal squares below 1e-19). The pass is memory-bound; the double adds
// cost no time on a GPU that streams the gradients.
template <typename T, bool Norm>
struct UnscaleOp {
  static constexpr int kDepth = Norm ? 2 : 1;
  const float* inv_scale;
  float* found_inf;

  __device__ __forceinline__ void visit(T& element, float factor, bool write, bool& non_finite,
                                        double& sum_of_squares) const {
    const float value = detail::to_float(element);
    non_finite |= !isfinite(value);
    if (write) element = detail::from_float<T>(value * factor);
    if (Norm) {
      const double unscaled = detail::to_float(element);
      sum_of_squares += unscaled * unscaled;
    }
  }

  __device__ void operator()(const LaunchTable<kDepth>& table, int slot, int64_t chunk, int64_t chunk_size) const {
    const int64_t start = chunk * chunk_size;
    const int64_t n = min(chunk_size, table.numels[slot] - start);
    T* data = static_cast<T*>(table.addresses[0][slot]) + start;
    const float factor = *inv_scale;
    // Multiplying by exactly 1 changes nothing: a check-only pass reads and never writes.
    const bool write = factor != 1.0f;
    bool non_finite = false;
    double sum_of_squares = 0.0;

    constexpr int kVec = Vec16<T>::kSize;
    int64_t scalar_begin = 0;
    if (reinterpret_cast<uintptr_t>(data) % 16 == 0) {
      const int64_t num_vectors = n / kVec;
      Vec16<T>* vectors = reinterpret_cast<Vec16<T>*>(data);
      const int64_t stride = blockDim.x;
      // 16 elements per thread and iteration whatever the dtype; more would push the 16-bit
      // variants past 42 registers, and 512-thread blocks then no longer fit three to an SM.
      constexpr int kUnroll = 16 / kVec;
      int64_t v = threadIdx.x;
      // kUnroll independent 16-byte loads in flight per thread before any store: a memory-bound
      // pass needs the outstanding requests more than it needs more threads.
      for (; v + (kUnroll - 1) * stride < num_vectors; v += kUnroll * stride) {
        Vec16<T> packs[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) packs[u] = vectors[v + u * stride];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
          for (int i = 0; i < kVec; ++i) visit(packs[u].values[i], factor, write, non_finite, sum_of_squares);
          if (write) vectors[v + u * stride] = packs[u];
        }
      }
      for (; v < num_vectors; v += stride) {
        Vec16<T> pack = vectors[v];
#pragma unroll
        for (int i = 0; i < kVec; ++i) visit(pack.values[i], factor, write, non_finite, sum_of_squares);
        if (write) vectors[v] = pack;
      }
      scalar_begin = num_vectors * kVec;
    }
    for (int64_t i = scalar_begin + threadIdx.x; i < n; i += blockDim.x) {
      T element = data[i];
      visit(element, factor, write, non_finite, sum_of_squares);
      if (write) data[i] = element;
    }
    // Every writer stores the same value, so the race between writers is benign.
    if (non_finite) *found_inf = 1.0f;
    if constexpr (Norm) {
      const double total = block_sum(sum_of_squares);
      if (threadIdx.x == 0) static_cast<double*>(table.addresses[1][slot])[chunk] = total;
    }
  }
};

__global__ void finish_norm_kernel(const double* partials, int64_t count, float* norm_out) {
  AMPKIT_SHARED_ARRAY(double, sums, detail::kThreadsPerBlock);
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
  sums[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) sums[threadIdx.x] += sums[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) *norm_out = static_cast<float>(sqrt(sums[0]));
}

// One thread runs the rule the CPU kernel runs (ampkit_kernels/scale_math.h) on the device, so the
// host never reads found_inf.
__global__ void update_scale_kernel(float* scale, int* growth_tracker, int* hysteresis_tracker, const float* found_inf,
                                    ScaleUpdateConfig config) {
  scale_math::update_scale_state(*scale, *growth_tracker, *hysteresis_tracker, *found_inf != 0.0f, config);
}

Result launch_status() {
  Result result;
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) {
    result.status = Status::CudaError;
    result.cuda_error = error;
  }
  return result;
}

Result invalid_argument() {
  Result result;
  result.status = Status::InvalidArgument;
  return result;
}

}  // namespace

int64_t unscale_norm_partial_count(const std::vector<int64_t>& numels) {
  int64_t count = 0;
  for (const int64_t numel : numels) count += (numel + kChunkSize - 1) / kChunkSize;
  return count;
}

Result unscale_and_check(const TensorLists& tensors, DType dtype, const float* inv_scale, float* found_inf,
                         double* norm_partials, cudaStream_t stream) {
  if (inv_scale == nullptr || found_inf == nullptr || tensors.lists.size() != 1) return invalid_argument();
  return detail::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (norm_partials == nullptr) {
      return detail::multi_tensor_apply<1>(tensors, UnscaleOp<T, false>{inv_scale, found_inf}, stream, kChunkSize);
    }
    // Second list: where each tensor's chunk partials start (chunks counted as the launcher does).
    TensorLists with_partials = tensors;
    std::vector<void*> partial_starts;
    partial_starts.reserve(tensors.numels.size());
    int64_t offset = 0;
    for (const int64_t numel : tensors.numels) {
      partial_starts.push_back(norm_partials + offset);
      offset += (numel + kChunkSize - 1) / kChunkSize;
    }
    with_partials.lists.push_back(std::move(partial_starts));
    return detail::multi_tensor_apply<2>(with_partials, UnscaleOp<T, true>{inv_scale, found_inf}, stream, kChunkSize);
  });
}

Result finish_norm(const double* partials, int64_t count, float* norm_out, cudaStream_t stream) {
  if (norm_out == nullptr || count < 0 || (count > 0 && partials == nullptr)) return invalid_argument();
  AMPKIT_LAUNCH(1, detail::kThreadsPerBlock, 0, stream, finish_norm_kernel)(partials, count, norm_out);
  return launch_status();
}

Result update_scale(float* scale, int* growth_tracker, int* hysteresis_tracker, const float* found_inf,
                    const ScaleUpdateConfig& config, cudaStream_t stream) {
  if (scale == nullptr || growth_tracker == nullptr || hysteresis_tracker == nullptr || found_inf == nullptr ||
      config.growth_interval <= 0 || config.hysteresis <= 0) {
    return invalid_argument();
  }
  AMPKIT_LAUNCH(1, 1, 0, stream, update_scale_kernel)(scale, growth_tracker, hysteresis_tracker, found_inf, config);
  return launch_status();
}

}  // namespace ampkit_kernels
