// CUDA glue of unscale_and_check_ and update_scale_: groups grads by dtype, stages strided
// slices through contiguous copies, and calls the kernels/ entry points. Nothing here reads a
// value back to the host.
//
// fp64 grads (rare in mixed precision: a double-precision head or test model) take ATen's own ops
// instead of a kernel of ours: torch's _amp_foreach_non_finite_check_and_unscale_ (the grad times
// the float inv_scale in double, the inf/NaN test in double: what torch.amp.GradScaler runs), and
// a cuBLAS dot per tensor for its sum of squares in the norm.
#include <ATen/ops/_amp_foreach_non_finite_check_and_unscale.h>
#include <ATen/ops/dot.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "ampkit_kernels/loss_scaling.h"
#include "cuda/kernel_glue.h"
#include "ops/loss_scaling.h"

namespace ampkit::cuda {
namespace {

void unscale_and_check_cuda(at::TensorList grads, const at::Tensor& found_inf, const at::Tensor& inv_scale,
                            const std::optional<at::Tensor>& norm_out) {
  const char* op = detail::kUnscaleAndCheckOp;
  const c10::Device device = detail::check_unscale_and_check_args(grads, found_inf, inv_scale, norm_out);
  check_cuda_device(op, "grads", device);
  const c10::cuda::CUDAGuard guard(device);

  // One launch sequence per dtype; a strided slice is processed as a contiguous copy that is
  // copied back afterwards (stream-ordered, so no synchronisation).
  const std::array<at::ScalarType, 3> dtypes = {at::kFloat, at::kHalf, at::kBFloat16};
  std::array<std::vector<at::Tensor>, 3> groups;
  std::vector<at::Tensor> float64_grads;
  std::vector<std::pair<at::Tensor, at::Tensor>> staged;  // (grad, contiguous copy)
  for (const at::Tensor& grad : grads) {
    if (grad.numel() == 0) continue;
    at::Tensor work = grad;
    if (!detail::is_flat_in_memory(grad)) {
      work = grad.contiguous();
      staged.emplace_back(grad, work);
    }
    if (work.scalar_type() == at::kDouble) float64_grads.push_back(work);
    for (size_t d = 0; d < dtypes.size(); ++d) {
      if (work.scalar_type() == dtypes[d]) groups[d].push_back(work);
    }
  }

  at::Tensor partials;
  if (norm_out.has_value()) {
    // One partial per fp64 grad, after the kernels' per-chunk partials.
    int64_t count = static_cast<int64_t>(float64_grads.size());
    for (const auto& group : groups) {
      std::vector<int64_t> numels;
      for (const auto& tensor : group) numels.push_back(tensor.numel());
      count += ampkit_kernels::unscale_norm_partial_count(numels);
    }
    // Double partials: the kernel sums squares in double (kernels/src/loss_scaling.cu says why).
    partials = at::empty({std::max<int64_t>(count, 1)}, found_inf.options().dtype(at::kDouble));
  }
  int64_t partial_offset = 0;
  for (size_t d = 0; d < dtypes.size(); ++d) {
    if (groups[d].empty()) continue;
    const ampkit_kernels::TensorLists lists = make_tensor_lists({groups[d]});
    double* group_partials = partials.defined() ? partials.data_ptr<double>() + partial_offset : nullptr;
    check_result(op, ampkit_kernels::unscale_and_check(lists, kernel_dtype(dtypes[d]), inv_scale.const_data_ptr<float>(),
                                                       found_inf.mutable_data_ptr<float>(), group_partials,
                                                       current_stream()));
    partial_offset += ampkit_kernels::unscale_norm_partial_count(lists.numels);
  }
  if (!float64_grads.empty()) {
    at::Tensor found_inf_out = found_inf;  // ATen's signature takes a non-const reference
    // With inv_scale 1 (the check-only pass) torch's op stores every value back unchanged.
    at::_amp_foreach_non_finite_check_and_unscale_(float64_grads, found_inf_out, inv_scale);
    if (partials.defined()) {
      for (const at::Tensor& grad : float64_grads) {
        // A flat run of numel elements from data_ptr() (is_flat_in_memory): as a 1-D view, its
        // sum of squares is one dot product, in double.
        const at::Tensor flat = grad.as_strided({grad.numel()}, {1}, grad.storage_offset());
        partials.select(0, partial_offset).copy_(at::dot(flat, flat));
        ++partial_offset;
      }
    }
  }
  if (norm_out.has_value()) {
    check_result(op, ampkit_kernels::finish_norm(partials.const_data_ptr<double>(), partial_offset,
                                                 norm_out->mutable_data_ptr<float>(), current_stream()));
  }
  for (auto& [grad, work] : staged) grad.copy_(work);
}

void update_scale_cuda(const at::Tensor& scale, const at::Tensor& growth_tracker, const at::Tensor& hysteresis_tracker,
                       const at::Tensor& found_inf, double growth_factor, double backoff_factor,
                       int64_t growth_interval, int64_t hysteresis, double min_scale, double max_scale) {
  const char* op = detail::kUpdateScaleOp;
  const detail::UpdateScaleConfig options{growth_factor, backoff_factor, growth_interval,
                                          hysteresis, min_scale, max_scale};
  const c10::Device device =
      detail::check_update_scale_args(scale, growth_tracker, hysteresis_tracker, found_inf, options);
  check_cuda_device(op, "scale", device);
  const c10::cuda::CUDAGuard guard(device);
  const ampkit_kernels::ScaleUpdateConfig config = detail::scale_update_config(options);
  check_result(op, ampkit_kernels::update_scale(scale.mutable_data_ptr<float>(), growth_tracker.mutable_data_ptr<int>(),
                                                hysteresis_tracker.mutable_data_ptr<int>(),
                                                found_inf.const_data_ptr<float>(), config, current_stream()));
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, CUDA, m) {
  m.impl("unscale_and_check_", &unscale_and_check_cuda);
  m.impl("update_scale_", &update_scale_cuda);
}

}  // namespace ampkit::cuda
