// Master-weight SGD / Adam / AdamW on the multi-tensor launcher.
//
// Each block updates one chunk of one parameter: it reads the (scaled) gradient, unscales and
// clips it, updates the master weight and the state and writes the model copy, element by element
// in registers (one read and one write of every byte the step has to touch). The per-element
// formulas live in optim_math.h, shared with the CPU kernels; they run in float for fp32/fp16/bf16
// parameters and in double for fp64 ones (Element<T>::Compute).
//
// Skipping an overflowed step: every block tests *found_inf first and returns before writing
// anything (after writing the unscaled gradients back, when asked to: torch's GradScaler has
// unscaled them before it skips). The step counters are advanced by a second, tiny launch on the
// same stream, after every block of the update has read them; it tests *found_inf too. No value
// goes to the host.
#include "ampkit_kernels/optim.h"
#include "multi_tensor_apply.cuh"

namespace ampkit_kernels {
namespace {

using detail::kIlp;
using detail::LaunchTable;

// The compute type of an element type and the conversions to and from it: float (rounding to
// nearest even on the way back) for the 32/16-bit types, double unchanged for double.
template <typename T>
struct Element {
  using Compute = float;
  static __device__ __forceinline__ float load(T value) { return detail::to_float(value); }
  static __device__ __forceinline__ T store(float value) { return detail::from_float<T>(value); }
};
template <>
struct Element<double> {
  using Compute = double;
  static __device__ __forceinline__ double load(double value) { return value; }
  static __device__ __forceinline__ double store(double value) { return value; }
};

__device__ __forceinline__ bool step_skipped(const float* found_inf) {
  return found_inf != nullptr && *found_inf != 0.0f;
}

__device__ __forceinline__ double read_lr(const StepScalars& scalars) {
  return scalars.lr_fp64 != nullptr ? *scalars.lr_fp64 : static_cast<double>(*scalars.lr);
}

template <typename T>
__device__ __forceinline__ bool aligned_or_null(const T* pointer) {
  return pointer == nullptr || detail::is_aligned_for_ilp<T>(pointer);
}

// One chunk of one parameter: `master` may be null (the model copy is then the weight itself);
// any state pointer may be null (that state is then unused). grad is written only when
// write_back_grads, and then as grad * grad_factor * clip_coef, the value the update used.
template <typename Param, typename Grad>
struct Chunk {
  using Compute = typename Element<Param>::Compute;
  Param* param;
  Compute* master;
  Grad* grad;
  Compute* state[3];
  int64_t n;
};

template <typename Compute>
__device__ __forceinline__ Compute unscaled(Compute grad, float grad_factor, float clip_coef) {
  return grad * static_cast<Compute>(grad_factor) * static_cast<Compute>(clip_coef);
}

// Runs `update(weight, grad, state0, state1, state2)` over the chunk.
template <typename Param, typename Grad, typename Update>
__device__ __forceinline__ void update_chunk(const Chunk<Param, Grad>& c, float grad_factor, float clip_coef,
                                             bool write_back_grads, const Update& update) {
  using Compute = typename Chunk<Param, Grad>::Compute;
  const bool vectorised = c.n % kIlp == 0 && detail::is_aligned_for_ilp<Param>(c.param) &&
                          detail::is_aligned_for_ilp<Grad>(c.grad) && aligned_or_null(c.master) &&
                          aligned_or_null(c.state[0]) && aligned_or_null(c.state[1]) && aligned_or_null(c.state[2]);
  if (vectorised) {
    for (int64_t pack = threadIdx.x; pack < c.n / kIlp; pack += blockDim.x) {
      Param model[kIlp];
      Grad grads[kIlp];
      Compute weights[kIlp], s[3][kIlp] = {};
      if (c.master != nullptr) {
        detail::load_pack(weights, c.master, pack);
      } else {
        detail::load_pack(model, c.param, pack);
#pragma unroll
        for (int i = 0; i < kIlp; ++i) weights[i] = Element<Param>::load(model[i]);
      }
      detail::load_pack(grads, c.grad, pack);
#pragma unroll
      for (int k = 0; k < 3; ++k) {
        if (c.state[k] != nullptr) detail::load_pack(s[k], c.state[k], pack);
      }
#pragma unroll
      for (int i = 0; i < kIlp; ++i) {
        const Compute g = unscaled(static_cast<Compute>(Element<Grad>::load(grads[i])), grad_factor, clip_coef);
        if (write_back_grads) grads[i] = Element<Grad>::store(g);
        weights[i] = update(weights[i], g, s[0][i], s[1][i], s[2][i]);
        model[i] = Element<Param>::store(weights[i]);
      }
      if (c.master != nullptr) detail::store_pack(c.master, pack, weights);
      detail::store_pack(c.param, pack, model);
      if (write_back_grads) detail::store_pack(c.grad, pack, grads);
#pragma unroll
      for (int k = 0; k < 3; ++k) {
        if (c.state[k] != nullptr) detail::store_pack(c.state[k], pack, s[k]);
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < c.n; i += blockDim.x) {
      Compute weight = c.master != nullptr ? c.master[i] : Element<Param>::load(c.param[i]);
      Compute s[3];
#pragma unroll
      for (int k = 0; k < 3; ++k) s[k] = c.state[k] != nullptr ? c.state[k][i] : Compute(0);
      const Compute g = unscaled(static_cast<Compute>(Element<Grad>::load(c.grad[i])), grad_factor, clip_coef);
      if (write_back_grads) c.grad[i] = Element<Grad>::store(g);
      weight = update(weight, g, s[0], s[1], s[2]);
      if (c.master != nullptr) c.master[i] = weight;
      c.param[i] = Element<Param>::store(weight);
#pragma unroll
      for (int k = 0; k < 3; ++k) {
        if (c.state[k] != nullptr) c.state[k][i] = s[k];
      }
    }
  }
}

// A skipped step that must still leave the gradients unscaled: grad = grad * grad_factor * clip_coef.
template <typename Grad>
__device__ __forceinline__ void unscale_chunk(Grad* grad, int64_t n, float grad_factor, float clip_coef) {
  using Compute = typename Element<Grad>::Compute;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    grad[i] = Element<Grad>::store(unscaled(static_cast<Compute>(Element<Grad>::load(grad[i])), grad_factor, clip_coef));
  }
}

template <typename T>
__device__ __forceinline__ T* list_chunk(const void* base, int64_t start) {
  return base == nullptr ? nullptr : static_cast<T*>(const_cast<void*>(base)) + start;
}

// The chunk of table slot `slot`: lists {params, masters, grads, states..., steps}.
template <typename Param, typename Grad, int Depth>
__device__ __forceinline__ Chunk<Param, Grad> chunk_of(const LaunchTable<Depth>& table, int slot, int64_t chunk,
                                                      int64_t chunk_size) {
  using Compute = typename Element<Param>::Compute;
  const int64_t start = chunk * chunk_size;
  Chunk<Param, Grad> c;
  c.param = list_chunk<Param>(table.addresses[0][slot], start);
  c.master = list_chunk<Compute>(table.addresses[1][slot], start);
  c.grad = list_chunk<Grad>(table.addresses[2][slot], start);
  constexpr int kStates = Depth - 4;  // between grads and steps
  static_assert(kStates >= 1 && kStates <= 3, "one to three state lists");
#pragma unroll
  for (int k = 0; k < 3; ++k) c.state[k] = nullptr;
#pragma unroll
  for (int k = 0; k < kStates; ++k) c.state[k] = list_chunk<Compute>(table.addresses[3 + k][slot], start);
  c.n = min(chunk_size, table.numels[slot] - start);
  return c;
}

// Both optimizers: the skip test and the gradient write-back on a skipped step, then `run`.
template <typename Param, typename Grad, int Depth, typename Run>
__device__ __forceinline__ void step_chunk(const StepScalars& scalars, const LaunchTable<Depth>& table, int slot,
                                           int64_t chunk, int64_t chunk_size, const Run& run) {
  const Chunk<Param, Grad> c = chunk_of<Param, Grad>(table, slot, chunk, chunk_size);
  if (step_skipped(scalars.found_inf)) {
    if (scalars.write_back_grads) unscale_chunk(c.grad, c.n, *scalars.inv_scale, *scalars.clip_coef);
    return;
  }
  const float steps_taken = *static_cast<const float*>(table.addresses[Depth - 1][slot]);
  run(c, steps_taken);
}

template <typename Param, typename Grad>
struct SgdStepOp {
  StepScalars scalars;
  SgdHyper hyper;

  __device__ void operator()(const LaunchTable<5>& table, int slot, int64_t chunk, int64_t chunk_size) const {
    using Compute = typename Element<Param>::Compute;
    step_chunk<Param, Grad>(scalars, table, slot, chunk, chunk_size, [&](const Chunk<Param, Grad>& c, float steps) {
      const optim_math::SgdCoefficients<Compute> k =
          optim_math::sgd_coefficients<Compute>(hyper, read_lr(scalars), steps);
      update_chunk(c, *scalars.inv_scale, *scalars.clip_coef, scalars.write_back_grads,
                   [&](Compute weight, Compute grad, Compute& buffer, Compute&, Compute&) {
                     return optim_math::sgd_update(weight, grad, buffer, k);
                   });
    });
  }
};

template <typename Param, typename Grad>
struct AdamStepOp {
  StepScalars scalars;
  AdamHyper hyper;

  __device__ void operator()(const LaunchTable<7>& table, int slot, int64_t chunk, int64_t chunk_size) const {
    using Compute = typename Element<Param>::Compute;
    step_chunk<Param, Grad>(scalars, table, slot, chunk, chunk_size, [&](const Chunk<Param, Grad>& c, float steps) {
      const optim_math::AdamCoefficients<Compute> k =
          optim_math::adam_coefficients<Compute>(hyper, read_lr(scalars), steps);
      update_chunk(c, *scalars.inv_scale, *scalars.clip_coef, scalars.write_back_grads,
                   [&](Compute weight, Compute grad, Compute& exp_avg, Compute& exp_avg_sq, Compute& max_exp_avg_sq) {
                     return optim_math::adam_update(weight, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, k);
                   });
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
  return (scalars.lr != nullptr) != (scalars.lr_fp64 != nullptr) && scalars.inv_scale != nullptr &&
         scalars.clip_coef != nullptr;
}

Result with_status(Status status) {
  Result result;
  result.status = status;
  return result;
}

Result advance_steps(const std::vector<void*>& steps, const float* found_inf, cudaStream_t stream) {
  TensorLists step_lists;
  step_lists.lists = {steps};
  step_lists.numels.assign(steps.size(), 1);
  return detail::multi_tensor_apply<1>(step_lists, AdvanceStepOp{found_inf}, stream, /*chunk_size=*/1);
}

// Calls fn(Param{}, Grad{}) for the element types of a step: fp64 params with fp64 grads, or any
// of fp32/fp16/bf16 with any of fp32/fp16/bf16 grads.
template <typename Fn>
Result dispatch_step_dtypes(DType param_dtype, DType grad_dtype, Fn&& fn) {
  if (param_dtype == DType::Float64 || grad_dtype == DType::Float64) {
    if (param_dtype != grad_dtype) return with_status(Status::Unsupported);
    return fn(double{}, double{});
  }
  return detail::dispatch_dtype(param_dtype, [&](auto param_tag) {
    return detail::dispatch_dtype(grad_dtype, [&](auto grad_tag) { return fn(param_tag, grad_tag); });
  });
}

}  // namespace

Result master_sgd_step(const TensorLists& tensors, DType param_dtype, DType grad_dtype, const StepScalars& scalars,
                       const SgdHyper& hyper, cudaStream_t stream) {
  if (!scalars_valid(scalars) || tensors.lists.size() != 5) return with_status(Status::InvalidArgument);
  const Result result = dispatch_step_dtypes(param_dtype, grad_dtype, [&](auto param_tag, auto grad_tag) {
    using Param = decltype(param_tag);
    using Grad = decltype(grad_tag);
    return detail::multi_tensor_apply<5>(tensors, SgdStepOp<Param, Grad>{scalars, hyper}, stream);
  });
  if (!result.ok()) return result;
  return advance_steps(tensors.lists[4], scalars.found_inf, stream);
}

Result master_adam_step(const TensorLists& tensors, DType param_dtype, DType grad_dtype, const StepScalars& scalars,
                        const AdamHyper& hyper, cudaStream_t stream) {
  if (!scalars_valid(scalars) || tensors.lists.size() != 7) return with_status(Status::InvalidArgument);
  const Result result = dispatch_step_dtypes(param_dtype, grad_dtype, [&](auto param_tag, auto grad_tag) {
    using Param = decltype(param_tag);
    using Grad = decltype(grad_tag);
    return detail::multi_tensor_apply<7>(tensors, AdamStepOp<Param, Grad>{scalars, hyper}, stream);
  });
  if (!result.ok()) return result;
  return advance_steps(tensors.lists[6], scalars.found_inf, stream);
}

}  // namespace ampkit_kernels
