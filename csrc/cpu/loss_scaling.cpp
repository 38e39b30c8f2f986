// CPU kernels of unscale_and_check_ and update_scale_.
//
// The norm is accumulated in double: each fixed block of kGrainSize elements produces a double
// partial, and the partials are summed in block order. Double keeps the result within an ulp of
// the exact norm of the fp32 values for any realistic size (fp32 running sums lose ~log2(n)
// bits), and fixed blocks summed in order make it independent of the number of threads, so a
// run is reproducible on any machine.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/cpu_loops.h"
#include "ops/loss_scaling.h"

namespace ampkit::cpu {
namespace {

struct FlatResult {
  bool non_finite = false;
  double sum_of_squares = 0.0;
};

// One pass over `numel` elements stored flat at `data`. Write: store value * factor (one rounding
// to T). Norm: accumulate the squares of the stored (unscaled) values.
template <typename T, bool Write, bool Norm>
FlatResult unscale_flat(T* data, int64_t numel, float factor) {
  FlatResult result;
  if (numel == 0) return result;
  const int64_t num_blocks = (numel + kGrainSize - 1) / kGrainSize;
  std::vector<double> partials(Norm ? num_blocks : 0, 0.0);
  std::atomic<bool> found{false};
  at::parallel_for(0, num_blocks, 1, [&](int64_t first_block, int64_t last_block) {
    bool non_finite = false;
    for (int64_t block = first_block; block < last_block; ++block) {
      const int64_t begin = block * kGrainSize;
      const int64_t end = std::min(numel, begin + kGrainSize);
      // Several independent accumulators so the additions do not form one serial chain.
      constexpr int kLanes = 8;
      double lanes[kLanes] = {};
      int64_t i = begin;
      for (; i + kLanes <= end; i += kLanes) {
        for (int lane = 0; lane < kLanes; ++lane) {
          const float value = static_cast<float>(data[i + lane]);
          non_finite |= is_non_finite(value);
          const T stored = Write ? static_cast<T>(value * factor) : data[i + lane];
          if (Write) data[i + lane] = stored;
          if (Norm) {
            const double unscaled = static_cast<float>(stored);
            lanes[lane] += unscaled * unscaled;
          }
        }
      }
      for (; i < end; ++i) {
        const float value = static_cast<float>(data[i]);
        non_finite |= is_non_finite(value);
        const T stored = Write ? static_cast<T>(value * factor) : data[i];
        if (Write) data[i] = stored;
        if (Norm) {
          const double unscaled = static_cast<float>(stored);
          lanes[0] += unscaled * unscaled;
        }
      }
      if (Norm) {
        double block_sum = 0.0;
        for (double lane : lanes) block_sum += lane;
        partials[block] = block_sum;
      }
    }
    if (non_finite) found.store(true, std::memory_order_relaxed);
  });
  result.non_finite = found.load();
  for (double partial : partials) result.sum_of_squares += partial;
  return result;
}

template <typename T>
FlatResult unscale_flat_dispatch(T* data, int64_t numel, float factor, bool write, bool norm) {
  if (write) {
    return norm ? unscale_flat<T, true, true>(data, numel, factor) : unscale_flat<T, true, false>(data, numel, factor);
  }
  return norm ? unscale_flat<T, false, true>(data, numel, factor) : unscale_flat<T, false, false>(data, numel, factor);
}

void unscale_and_check_cpu(at::TensorList grads, const at::Tensor& found_inf, const at::Tensor& inv_scale,
                           const std::optional<at::Tensor>& norm_out) {
  detail::check_unscale_and_check_args(grads, found_inf, inv_scale, norm_out);
  const float factor = *inv_scale.const_data_ptr<float>();
  // Multiplying by exactly 1 changes no value: the pass then only reads (a check-only pass, as
  // GradScaler needs for optimizers that unscale inside their own step).
  const bool write = factor != 1.0f;
  const bool norm = norm_out.has_value();
  bool any_non_finite = false;
  double sum_of_squares = 0.0;
  for (const at::Tensor& grad : grads) {
    if (grad.numel() == 0) continue;
    // A strided slice is not one flat run: work on a contiguous copy and copy the result back.
    const bool flat = detail::is_flat_in_memory(grad);
    at::Tensor work = flat ? grad : grad.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work.scalar_type(), "unscale_and_check_cpu", [&] {
      const FlatResult result =
          unscale_flat_dispatch<scalar_t>(work.mutable_data_ptr<scalar_t>(), work.numel(), factor, write, norm);
      any_non_finite |= result.non_finite;
      sum_of_squares += result.sum_of_squares;
    });
    if (!flat && write) const_cast<at::Tensor&>(grad).copy_(work);
  }
  if (any_non_finite) *found_inf.mutable_data_ptr<float>() = 1.0f;
  if (norm) *norm_out->mutable_data_ptr<float>() = static_cast<float>(std::sqrt(sum_of_squares));
}

// The update rule; the CUDA kernel (kernels/src/update_scale.cu) implements the same steps.
void update_scale_cpu(const at::Tensor& scale, const at::Tensor& growth_tracker, const at::Tensor& hysteresis_tracker,
                      const at::Tensor& found_inf, double growth_factor, double backoff_factor, int64_t growth_interval,
                      int64_t hysteresis, double min_scale, double max_scale) {
  detail::check_update_scale_args(scale, growth_tracker, hysteresis_tracker, found_inf,
                                  {growth_factor, backoff_factor, growth_interval, hysteresis, min_scale, max_scale});
  float* scale_ptr = scale.mutable_data_ptr<float>();
  int32_t* growth_ptr = growth_tracker.mutable_data_ptr<int32_t>();
  int32_t* hysteresis_ptr = hysteresis_tracker.mutable_data_ptr<int32_t>();
  const float found = *found_inf.const_data_ptr<float>();
  const float current = *scale_ptr;
  // Bounds at or beyond float32's range are no bounds: that keeps the default (max_scale =
  // FLT_MAX, min_scale = 0) identical to torch._amp_update_scale_, which never clamps.
  const bool has_max = max_scale < static_cast<double>(std::numeric_limits<float>::max());
  const bool has_min = min_scale > 0.0;
  if (found != 0.0f) {
    *growth_ptr = 0;
    // Consecutive overflow steps so far, saturating at `hysteresis`.
    const int32_t overflows = std::min<int32_t>(*hysteresis_ptr, static_cast<int32_t>(hysteresis) - 1) + 1;
    *hysteresis_ptr = overflows;
    if (overflows >= hysteresis) {
      // The product in double, rounded once to float: what torch does.
      double backed_off = static_cast<double>(current) * backoff_factor;
      if (has_min && backed_off < min_scale) backed_off = min_scale;
      const float next = static_cast<float>(backed_off);
      // After ~150 back-offs in a row the product underflows to 0: keep the last positive scale.
      if (next > 0.0f) *scale_ptr = next;
    }
  } else {
    *hysteresis_ptr = 0;
    const int32_t successful = *growth_ptr + 1;
    // >= rather than ==: a tracker loaded from a run with a longer interval still grows.
    if (successful >= growth_interval) {
      double grown = static_cast<double>(current) * growth_factor;
      if (has_max && grown > max_scale) grown = max_scale;
      const float next = static_cast<float>(grown);
      // Never grow past float32's range to inf.
      if (std::isfinite(next)) *scale_ptr = next;
      *growth_ptr = 0;
    } else {
      *growth_ptr = successful;
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, CPU, m) {
  m.impl("unscale_and_check_", &unscale_and_check_cpu);
  m.impl("update_scale_", &update_scale_cpu);
}

}  // namespace ampkit::cpu
