#include "ampkit_kernels/multi_tensor.h"
#include "multi_tensor_apply.cuh"

namespace ampkit_kernels {
namespace {

using detail::kIlp;
using detail::LaunchTable;

template <typename In, typename Out>
struct ScaleOp {
  const float* scale;
  float* found_inf;

  __device__ void operator()(const LaunchTable<2>& table, int slot, int64_t chunk, int64_t chunk_size) const {
    const int64_t start = chunk * chunk_size;
    const int64_t n = min(chunk_size, table.numels[slot] - start);
    const In* in = static_cast<const In*>(table.addresses[0][slot]) + start;
    Out* out = static_cast<Out*>(table.addresses[1][slot]) + start;
    const float factor = *scale;
    bool non_finite = false;

    if (n % kIlp == 0 && detail::is_aligned_for_ilp<In>(in) && detail::is_aligned_for_ilp<Out>(out)) {
      for (int64_t pack = threadIdx.x; pack < n / kIlp; pack += blockDim.x) {
        In loaded[kIlp];
        Out stored[kIlp];
        detail::load_pack(loaded, in, pack);
#pragma unroll
        for (int i = 0; i < kIlp; ++i) {
          const float value = detail::to_float(loaded[i]);
          non_finite |= !isfinite(value);
          stored[i] = detail::from_float<Out>(value * factor);
        }
        detail::store_pack(out, pack, stored);
      }
    } else {
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float value = detail::to_float(in[i]);
        non_finite |= !isfinite(value);
        out[i] = detail::from_float<Out>(value * factor);
      }
    }
    // Every writer stores the same value, so the race between writers is benign.
    if (non_finite) *found_inf = 1.0f;
  }
};

}  // namespace

Result multi_tensor_scale(const TensorLists& tensors, DType in_dtype, DType out_dtype,
                          const float* scale, float* found_inf, cudaStream_t stream) {
  if (scale == nullptr || found_inf == nullptr) {
    Result result;
    result.status = Status::InvalidArgument;
    return result;
  }
  return detail::dispatch_dtype(in_dtype, [&](auto in_tag) {
    return detail::dispatch_dtype(out_dtype, [&](auto out_tag) {
      using In = decltype(in_tag);
      using Out = decltype(out_tag);
      return detail::multi_tensor_apply<2>(tensors, ScaleOp<In, Out>{scale, found_inf}, stream);
    });
  });
}

}  // namespace ampkit_kernels
