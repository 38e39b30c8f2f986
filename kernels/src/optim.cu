// FP32-master-weight SGD / Adam / AdamW on the multi-tensor launcher.
//
// Each block updates one chunk of one parameter: it reads the (scaled) gradient, unscales and
// clips it, updates the FP32 master and FP32 state and writes the model copy, element by
// element in registers (one read and one write of every byte the step has to touch). The
// per-element formulas live in optim_math.h, shared with the CPU kernels.
//
// Skipping an overflowed step: every block tests *found_inf first and returns before writing
// anything. The step counters are advanced by a second, tiny launch on the same stream, after
// every block of the update has read them; it tests *found_inf too. No value goes to the host.
#include "ampkit_kernels/optim.h"
#include "multi_tensor_apply.cuh"

namespace ampkit_kernels {
namespace {

using detail::kIlp;
using detail::LaunchTable;

__device__ __forceinline__ bool step_skipped(const float* found_inf) {
  return found_inf != nullptr && *found_inf != 0.0f;
}

template <typename T>
__device__ __forceinline__ bool aligned_or_null(const T* pointer) {
  return pointer == nullptr || detail::is_aligned_for_ilp<T>(pointer);
}

// Runs `update(weight, grad, state0, state1)` over n elements. `master` may be null (the model
// copy is then the weight itself); state0/state1 may be null (the state is then unused).
template <typename Param, typename Grad, typename Update>
__device__ __forceinline__ void update_chunk(Param* param, float* master, const Grad* grad, float* state0,
                                             float* state1, int64_t n, float grad_factor, float clip_coef,
                                             const Update& update) {
  const bool vectorised = n % kIlp == 0 && detail::is_aligned_for_ilp<Param>(param) &&
                          detail::is_aligned_for_ilp<Grad>(grad) && aligned_or_null(master) &&
                          aligned_or_null(state0) && aligned_or_null(state1);
  if (vectorised) {
    for (int64_t pack = threadIdx.x; pack < n / kIlp; pack += blockDim.x) {
      Param model[kIlp];
      Grad grads[kIlp];
      float weights[kIlp], s0[kIlp] = {}, s1[kIlp] = {};
      if (master != nullptr) {
        detail::load_pack(weights, master, pack);
      } else {
        detail::load_pack(model, param, pack);
#pragma unroll
        for (int i = 0; i < kIlp; ++i) weights[i] = detail::to_float(model[i]);
      }
      detail::load_pack(grads, grad, pack);
      if (state0 != nullptr) detail::load_pack(s0, state0, pack);
      if (state1 != nullptr) detail::load_pack(s1, state1, pack);
#pragma unroll
      for (int i = 0; i < kIlp; ++i) {
        const float g = detail::to_float(grads[i]) * grad_factor * clip_coef;
        weights[i] = update(weights[i], g, s0[i], s1[i]);
        model[i] = detail::from_float<Param>(weights[i]);
      }
      if (master != nullptr) detail::store_pack(master, pack, weights);
      detail::store_pack(param, pack, model);
      if (state0 != nullptr) detail::store_pack(state0, pack, s0);
      if (state1 != nullptr) detail::store_pack(state1, pack, s1);
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      float weight = master != nullptr ? master[i] : detail::to_float(param[i]);
      float s0 = state0 != nullptr ? state0[i] : 0.0f;
      float s1 = state1 != nullptr ? state1[i] : 0.0f;
      const float g = detail::to_float(grad[i]) * grad_factor * clip_coef;
      weight = update(weight, g, s0, s1);
      if (master != nullptr) master[i] = weight;
      param[i] = detail::from_float<Param>(weight);
      if (state0 != nullptr) state0[i] = s0;
      if (state1 != nullptr) state1[i] = s1;
    }
  }
}

template <typename T>
__device__ __forceinline__ T* list_chunk(const void* base, int64_t start) {
  return base == nullptr ? nullptr : static_cast<T*>(const_cast<void*>(base)) + start;
}

template <typename Param, typename Grad>
struct SgdStepOp {
  StepScalars scalars;
  SgdHyper hyper;

  __device__ void operator()(const LaunchTable<5>& table, int slot, int64_t chunk, int64_t chunk_size) const {
    if (step_skipped(scalars.found_inf)) return;
    const int64_t start = chunk * chunk_size;
    const int64_t n = min(chunk_size, table.numels[slot] - start);
    const float steps_taken = *static_cast<const float*>(table.addresses[4][slot]);
    const optim_math::SgdCoefficients c = optim_math::sgd_coefficients(hyper, *scalars.lr, steps_taken);
    update_chunk(list_chunk<Param>(table.addresses[0][slot], start), list_chunk<float>(table.addresses[1][slot], start),
                 list_chunk<const Grad>(table.addresses[2][slot], start),
                 list_chunk<float>(table.addresses[3][slot], start), static_cast<float*>(nullptr), n,
                 *scalars.inv_scale, *scalars.clip_coef, [&](float weight, float grad, float& buffer, float&) {
                   return optim_math::sgd_update(weight, grad, buffer, c);
                 });
  }
};

template <typename Param, typename Grad>
struct AdamStepOp {
  StepScalars scalars;
  AdamHyper hyper;

  __device__ void operator()(const LaunchTable<6>& table, int slot, int64_t chunk, int64_t chunk_size) const {
    if (step_skipped(scalars.found_inf)) return;
    const int64_t start = chunk * chunk_size;
    const int64_t n = min(chunk_size, table.numels[slot] - start);
    const float steps_taken = *static_cast<const float*>(table.addresses[5][slot]);
    const optim_math::AdamCoefficients c = optim_math::adam_coefficients(hyper, *scalars.lr, steps_taken);
    update_chunk(list_chunk<Param>(table.addresses[0][slot], start), list_chunk<float>(table.addresses[1][slot], start),
                 list_chunk<const Grad>(table.addresses[2][slot], start),
                 list_chunk<float>(table.addresses[3][slot], start), list_chunk<float>(table.addresses[4][slot], start),
                 n, *scalars.inv_scale, *scalars.clip_coef,
                 [&](float weight, float grad, float& exp_avg, float& exp_avg_sq) {
                   return optim_math::adam_update(weight, grad, exp_avg, exp_avg_sq, c);
                 });
  }
};

// One block per step counter; thread 0 advances it unless the step was skipped.
struct AdvanceStepOp {
  const float* found_inf;

  __device__ void operator()(const LaunchTable<1>& table, int slot, int64_t, int64_t) const {
    if (threadIdx.x != 0 || step_skipped(found_inf)) return;
    *static_cast<float*>(table.addresses[0][slot]) += 1.0f;
  }
};

bool scalars_valid(const StepScalars& scalars) {
  return scalars.lr != nullptr && scalars.inv_scale != nullptr && scalars.clip_coef != nullptr;
}

Result invalid_argument() {
  Result result;
  result.status = Status::InvalidArgument;
  return result;
}

Result advance_steps(const std::vector<void*>& steps, const float* found_inf, cudaStream_t stream) {
  TensorLists step_lists;
  step_lists.lists = {steps};
  step_lists.numels.assign(steps.size(), 1);
  return detail::multi_tensor_apply<1>(step_lists, AdvanceStepOp{found_inf}, stream, /*chunk_size=*/1);
}

}  // namespace

Result master_sgd_step(const TensorLists& tensors, DType param_dtype, DType grad_dtype, const StepScalars& scalars,
                       const SgdHyper& hyper, cudaStream_t stream) {
  if (!scalars_valid(scalars) || tensors.lists.size() != 5) return invalid_argument();
  const Result result = detail::dispatch_dtype(param_dtype, [&](auto param_tag) {
    return detail::dispatch_dtype(grad_dtype, [&](auto grad_tag) {
      using Param = decltype(param_tag);
      using Grad = decltype(grad_tag);
      return detail::multi_tensor_apply<5>(tensors, SgdStepOp<Param, Grad>{scalars, hyper}, stream);
    });
  });
  if (!result.ok()) return result;
  return advance_steps(tensors.lists[4], scalars.found_inf, stream);
}

Result master_adam_step(const TensorLists& tensors, DType param_dtype, DType grad_dtype, const StepScalars& scalars,
                        const AdamHyper& hyper, cudaStream_t stream) {
  if (!scalars_valid(scalars) || tensors.lists.size() != 6) return invalid_argument();
  const Result result = detail::dispatch_dtype(param_dtype, [&](auto param_tag) {
    return detail::dispatch_dtype(grad_dtype, [&](auto grad_tag) {
      using Param = decltype(param_tag);
      using Grad = decltype(grad_tag);
      return detail::multi_tensor_apply<6>(tensors, AdamStepOp<Param, Grad>{scalars, hyper}, stream);
    });
  });
  if (!result.ok()) return result;
  return advance_steps(tensors.lists[5], scalars.found_inf, stream);
}

}  // namespace ampkit_kernels
