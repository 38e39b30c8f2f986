// The ops ampkit knows at compile time: every op torch 2.11 routes on AutocastCPU or AutocastCUDA
// (aten/src/ATen/autocast_mode.cpp), with torch's routing per device, and one unboxed wrapper each.
// A wrapper reads which route the current ampkit policy gives its op (torch's own route when no
// ampkit policy is current) and then casts exactly as torch's wrappers do, re-using torch's helpers
// (cached_cast, promote_type, set_opt_dtype), so the cost and the numerics are torch's.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>

#include "autocast/routing.h"
#include "ops/validation.h"

namespace ampkit::autocast::detail {
namespace {

std::string dtype_text(const at::Tensor& tensor) {
  return tensor.defined() ? std::string(ampkit::detail::dtype_name(tensor.scalar_type())) : std::string("undefined");
}

// Dtypes of the tensor arguments / results, for explain().
template <class T>
void note(std::vector<std::string>&, const T&) {}
inline void note(std::vector<std::string>& out, const at::Tensor& tensor) { out.push_back(dtype_text(tensor)); }
inline void note(std::vector<std::string>& out, const std::optional<at::Tensor>& tensor) {
  if (tensor.has_value()) out.push_back(dtype_text(*tensor));
}
inline void note(std::vector<std::string>& out, at::TensorList tensors) {
  for (const auto& tensor : tensors) out.push_back(dtype_text(tensor));
}
inline void note(std::vector<std::string>& out, const std::vector<at::Tensor>& tensors) {
  for (const auto& tensor : tensors) out.push_back(dtype_text(tensor));
}
inline void note(std::vector<std::string>& out, const at::ITensorListRef& tensors) {
  for (const auto& tensor : tensors) out.push_back(dtype_text(tensor));
}
template <class... Ts>
void note(std::vector<std::string>& out, const std::tuple<Ts...>& values) {
  std::apply([&](const auto&... value) { (note(out, value), ...); }, values);
}

// Lower-precision outputs for an OutputWatch.
template <class T>
void watch(std::vector<OutputFlag>&, uint32_t, int, const T&) {}
inline void watch(std::vector<OutputFlag>& out, uint32_t slot, int device, const at::Tensor& tensor) {
  watch_output(out, slot, device, tensor);
}
inline void watch(std::vector<OutputFlag>& out, uint32_t slot, int device, const std::vector<at::Tensor>& tensors) {
  for (const auto& tensor : tensors) watch_output(out, slot, device, tensor);
}
template <class... Ts>
void watch(std::vector<OutputFlag>& out, uint32_t slot, int device, const std::tuple<Ts...>& values) {
  std::apply([&](const auto&... value) { (watch(out, slot, device, value), ...); }, values);
}

// torch's fp32_set_opt_dtype rule: set the dtype only when the first argument is an eligible tensor.
template <class First, class... Rest>
bool first_arg_eligible(c10::DeviceType device_type, const First& first, const Rest&...) {
  if constexpr (std::is_same_v<std::decay_t<First>, at::Tensor>) {
    return at::autocast::is_eligible(first, device_type);
  } else {
    return false;
  }
}

// The first two tensor arguments of a call (nullptr where there are fewer), for machine rules.
template <class... Args>
std::pair<const at::Tensor*, const at::Tensor*> first_two_tensors(const Args&... args) {
  const at::Tensor* found[2] = {nullptr, nullptr};
  int count = 0;
  auto visit = [&](const auto& value) {
    if constexpr (std::is_same_v<std::decay_t<decltype(value)>, at::Tensor>) {
      if (count < 2) found[count++] = &value;
    }
  };
  (visit(args), ...);
  return {found[0], found[1]};
}

// route_for, then the current policy's machine rule when that says kLower.
template <class... Args>
Route call_route(const ThreadState& state, int device, uint32_t slot, const Args&... args) {
  const Route route = route_for(state, device, slot);
  if (route != Route::kLower) return route;
  const auto [query, key] = first_two_tensors(args...);
  return machine_route(state, device, slot, query, key);
}

template <uint32_t Slot, class Signature, Signature* F>
struct Wrap;

template <uint32_t Slot, class Ret, class... Args, Ret (*F)(Args...)>
struct Wrap<Slot, Ret(Args...), F> {
  static Ret run(Route route, int device, Args... args) {
    const c10::DeviceType device_type = device_type_of(device);
    switch (route) {
      case Route::kLower:
        return (*F)(at::autocast::cached_cast(at::autocast::get_autocast_dtype(device_type), args, device_type)...);
      case Route::kFp32:
      case Route::kFp32AppendDtype:  // only norm has a dtype overload to append to (NormWrap)
        return (*F)(at::autocast::cached_cast(at::kFloat, args, device_type)...);
      case Route::kFp32SetOptDtype:
        if (first_arg_eligible(device_type, args...)) return (*F)(at::autocast::set_opt_dtype(at::kFloat, args)...);
        return (*F)(args...);
      case Route::kPromote: {
        const auto to_type =
            at::autocast::promote_type(at::autocast::get_autocast_dtype(device_type), device_type, args...);
        return (*F)(at::autocast::cached_cast(to_type, args, device_type)...);
      }
      case Route::kBanned:
        throw_banned(slot_name(Slot).c_str());
      case Route::kPassthrough:
        break;
    }
    return (*F)(args...);
  }

  static Ret call(c10::DispatchKeySet keys, Args... args) {
    const int device = device_of(keys);
    ThreadState& state = tls_state;
    const Route route = call_route(state, device, Slot, args...);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key(device));
    if (C10_UNLIKELY(state.recorder != nullptr || state.output_watch != nullptr)) {
      Record record;
      if (state.recorder != nullptr) {
        std::string list = routed_by(state, device, Slot);
        if (route == Route::kFp32 && list == "allow") list += " (fp32 on this machine)";
        record = Record{slot_name(Slot), std::move(list), {}, {}};
        (note(record.inputs, args), ...);
      }
      Ret result = run(route, device, args...);
      if (state.recorder != nullptr) {
        note(record.outputs, result);
        state.recorder->push_back(std::move(record));
      }
      if (state.output_watch != nullptr && route == Route::kLower) watch(*state.output_watch, Slot, device, result);
      return result;
    }
    return run(route, device, args...);
  }
};

// norm overloads without a dtype: torch's fp32 route redispatches to the overload that takes one.
template <uint32_t Slot, class Signature, Signature* F, class DtypeSignature, DtypeSignature* FWithDtype>
struct NormWrap;

template <uint32_t Slot, class Ret, class... Args, Ret (*F)(Args...), class DtypeSignature,
          DtypeSignature* FWithDtype>
struct NormWrap<Slot, Ret(Args...), F, DtypeSignature, FWithDtype> {
  using Plain = Wrap<Slot, Ret(Args...), F>;
  static Ret call(c10::DispatchKeySet keys, Args... args) {
    const int device = device_of(keys);
    ThreadState& state = tls_state;
    const Route route = route_for(state, device, Slot);
    if (route != Route::kFp32AppendDtype) return Plain::call(keys, args...);
    c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key(device));
    const c10::DeviceType device_type = device_type_of(device);
    const at::ScalarType out_type = at::autocast::type_from_firstarg(device_type, at::kFloat, args...);
    if (C10_UNLIKELY(state.recorder != nullptr)) {
      Record record{slot_name(Slot), routed_by(state, device, Slot), {}, {}};
      (note(record.inputs, args), ...);
      Ret result = (*FWithDtype)(args..., out_type);
      note(record.outputs, result);
      state.recorder->push_back(std::move(record));
      return result;
    }
    return (*FWithDtype)(args..., out_type);
  }
};

template <class Wrapper>
void register_wrapper(torch::Library& library, const char* qualified_name) {
  library.impl(qualified_name, TORCH_FN(Wrapper::call));
}

constexpr Route kN = Route::kPassthrough;
constexpr Route kL = Route::kLower;
constexpr Route kF = Route::kFp32;
constexpr Route kS = Route::kFp32SetOptDtype;
constexpr Route kA = Route::kFp32AppendDtype;
constexpr Route kP = Route::kPromote;
constexpr Route kB = Route::kBanned;

// Slots are the table order: __COUNTER__ counts the entries (nothing else in this file uses it).
constexpr uint32_t kCounterBase = __COUNTER__;
#define AMPKIT_SLOT (__COUNTER__ - kCounterBase - 1)

// OP(name, cpu route, cuda route); OP2(name, overload, cpu route, cuda route)
#define OP(NAME, CPU, CUDA)                                                               \
  KnownOp{"aten::" #NAME, "", {CPU, CUDA},                                                \
          &register_wrapper<Wrap<AMPKIT_SLOT, decltype(at::_ops::NAME::call), &at::_ops::NAME::call>>},
#define OP2(NAME, OVERLOAD, CPU, CUDA)                                                                     \
  KnownOp{"aten::" #NAME, #OVERLOAD, {CPU, CUDA},                                                          \
          &register_wrapper<Wrap<AMPKIT_SLOT, decltype(at::_ops::NAME##_##OVERLOAD::call),                 \
                                 &at::_ops::NAME##_##OVERLOAD::call>>},
#define NORM(OVERLOAD, DTYPE_OVERLOAD, CPU, CUDA)                                                          \
  KnownOp{"aten::norm", #OVERLOAD, {CPU, CUDA},                                                            \
          &register_wrapper<NormWrap<AMPKIT_SLOT, decltype(at::_ops::norm_##OVERLOAD::call),               \
                                     &at::_ops::norm_##OVERLOAD::call,                                      \
                                     decltype(at::_ops::norm_##DTYPE_OVERLOAD::call),                      \
                                     &at::_ops::norm_##DTYPE_OVERLOAD::call>>},

const KnownOp kKnownOps[] = {
    // ---- lower precision (torch: CPU list | CUDA AT_FORALL_LOWER_PRECISION_FP + cudnn) ----
    OP2(_convolution, deprecated, kL, kL)
    OP(_convolution, kN, kL)
    OP(conv1d, kL, kL)
    OP2(conv1d, padding, kL, kN)
    OP(conv2d, kL, kL)
    OP2(conv2d, padding, kL, kN)
    OP(conv3d, kL, kL)
    OP2(conv3d, padding, kL, kN)
    OP(conv_tbc, kL, kL)
    OP(conv_transpose1d, kL, kL)
    OP2(conv_transpose2d, input, kL, kL)
    OP2(conv_transpose3d, input, kL, kL)
    OP(convolution, kN, kL)
    OP(prelu, kL, kL)
    OP(addmm, kL, kL)
    OP(_addmm_activation, kL, kN)
    OP(addmv, kN, kL)
    OP(addr, kN, kL)
    OP(matmul, kL, kL)
    OP(einsum, kN, kL)
    OP(mm, kL, kL)
    OP(mv, kN, kL)
    OP(linalg_vecdot, kL, kL)
    OP(linear, kL, kL)
    OP(addbmm, kL, kL)
    OP(baddbmm, kL, kL)
    OP(bmm, kL, kL)
    OP(chain_matmul, kN, kL)
    OP(linalg_multi_dot, kN, kL)
    OP(_thnn_fused_lstm_cell, kN, kL)
    OP(_thnn_fused_gru_cell, kN, kL)
    OP(lstm_cell, kN, kL)
    OP(gru_cell, kN, kL)
    OP(rnn_tanh_cell, kN, kL)
    OP(rnn_relu_cell, kN, kL)
    OP(_scaled_dot_product_flash_attention, kN, kL)
    OP(scaled_dot_product_attention, kL, kL)
    OP(cudnn_convolution, kN, kL)
    OP(cudnn_convolution_transpose, kN, kL)
    OP(mkldnn_rnn_layer, kL, kN)
    OP(_native_multi_head_attention, kL, kN)
    // ---- fp32 (torch: CUDA AT_FORALL_FP32 | CPU fp32 list) ----
    OP(acos, kN, kF)
    OP(asin, kN, kF)
    OP(cosh, kN, kF)
    OP(erfinv, kN, kF)
    OP(exp, kN, kF)
    OP(expm1, kN, kF)
    OP(log, kN, kF)
    OP(log10, kN, kF)
    OP(log2, kN, kF)
    OP(log1p, kN, kF)
    OP(reciprocal, kN, kF)
    OP(rsqrt, kN, kF)
    OP(sinh, kN, kF)
    OP(tan, kN, kF)
    OP2(pow, Tensor_Scalar, kN, kF)
    OP2(pow, Tensor_Tensor, kN, kF)
    OP2(pow, Scalar, kN, kF)
    OP(softplus, kN, kF)
    OP(layer_norm, kN, kF)
    OP(native_layer_norm, kN, kF)
    OP(group_norm, kN, kF)
    OP2(frobenius_norm, dim, kN, kF)
    OP(nuclear_norm, kN, kF)
    OP2(nuclear_norm, dim, kN, kF)
    OP(cosine_similarity, kN, kF)
    OP(poisson_nll_loss, kF, kF)
    OP(cosine_embedding_loss, kF, kF)
    OP(nll_loss, kF, kF)
    OP(nll_loss2d, kF, kF)
    OP(hinge_embedding_loss, kF, kF)
    OP(kl_div, kF, kF)
    OP(l1_loss, kF, kF)
    OP(smooth_l1_loss, kF, kF)
    OP(huber_loss, kF, kF)
    OP(mse_loss, kF, kF)
    OP(margin_ranking_loss, kF, kF)
    OP(multilabel_margin_loss, kF, kF)
    OP(soft_margin_loss, kF, kF)
    OP(triplet_margin_loss, kF, kF)
    OP(multi_margin_loss, kF, kF)
    OP(binary_cross_entropy_with_logits, kF, kF)
    OP(dist, kN, kF)
    OP(pdist, kN, kF)
    OP(cdist, kF, kF)
    OP(renorm, kN, kF)
    OP(logsumexp, kN, kF)
    OP(upsample_nearest1d, kN, kF)
    OP(_upsample_nearest_exact1d, kN, kF)
    OP(upsample_nearest2d, kN, kF)
    OP(_upsample_nearest_exact2d, kN, kF)
    OP(upsample_nearest3d, kN, kF)
    OP(_upsample_nearest_exact3d, kN, kF)
    OP(upsample_linear1d, kN, kF)
    OP(upsample_bilinear2d, kN, kF)
    OP(_upsample_bilinear2d_aa, kN, kF)
    OP(upsample_trilinear3d, kN, kF)
    OP(upsample_bicubic2d, kN, kF)
    OP(_upsample_bicubic2d_aa, kN, kF)
    // CPU-only fp32 list (on CUDA torch bans binary_cross_entropy under autocast)
    OP(avg_pool3d, kF, kN)
    OP(binary_cross_entropy, kF, kB)
    OP(polar, kF, kN)
    OP(quantile, kF, kN)
    OP2(quantile, scalar, kF, kN)
    OP(nanquantile, kF, kN)
    OP2(nanquantile, scalar, kF, kN)
    OP(stft, kF, kN)
    OP2(stft, center, kF, kN)
    OP(grid_sampler_2d, kF, kN)
    OP(_grid_sampler_2d_cpu_fallback, kF, kN)
    OP(grid_sampler_3d, kF, kN)
    OP(trace, kF, kN)
    OP(view_as_complex, kF, kN)
    OP(cholesky, kF, kN)
    OP(cholesky_inverse, kF, kN)
    OP(cholesky_solve, kF, kN)
    OP(inverse, kF, kN)
    OP(lu_solve, kF, kN)
    OP(orgqr, kF, kN)
    OP(ormqr, kF, kN)
    OP(pinverse, kF, kN)
    OP(max_pool3d, kF, kN)
    OP(max_unpool2d, kF, kN)
    OP(max_unpool3d, kF, kN)
    OP(adaptive_avg_pool3d, kF, kN)
    OP(reflection_pad1d, kF, kN)
    OP(reflection_pad2d, kF, kN)
    OP(replication_pad1d, kF, kN)
    OP(replication_pad2d, kF, kN)
    OP(replication_pad3d, kF, kN)
    OP(cross_entropy_loss, kF, kN)
    OP2(ctc_loss, IntList, kF, kN)
    OP2(ctc_loss, Tensor, kF, kN)
    OP(fft_fft, kF, kN)
    OP(fft_ifft, kF, kN)
    OP(fft_fft2, kF, kN)
    OP(fft_ifft2, kF, kN)
    OP(fft_fftn, kF, kN)
    OP(fft_ifftn, kF, kN)
    OP(fft_rfft, kF, kN)
    OP(fft_irfft, kF, kN)
    OP(fft_rfft2, kF, kN)
    OP(fft_irfft2, kF, kN)
    OP(fft_rfftn, kF, kN)
    OP(fft_irfftn, kF, kN)
    OP(fft_hfft, kF, kN)
    OP(fft_ihfft, kF, kN)
    OP(linalg_cond, kF, kN)
    OP2(linalg_cond, p_str, kF, kN)
    OP(linalg_matrix_rank, kF, kN)
    OP2(linalg_matrix_rank, tol_tensor, kF, kN)
    OP2(linalg_matrix_rank, atol_rtol_tensor, kF, kN)
    OP2(linalg_matrix_rank, atol_rtol_float, kF, kN)
    OP(linalg_solve, kF, kN)
    OP(linalg_cholesky, kF, kN)
    OP(linalg_svdvals, kF, kN)
    OP(linalg_eigvals, kF, kN)
    OP(linalg_eigvalsh, kF, kN)
    OP(linalg_inv, kF, kN)
    OP(linalg_householder_product, kF, kN)
    OP(linalg_tensorinv, kF, kN)
    OP(linalg_tensorsolve, kF, kN)
    OP(fake_quantize_per_tensor_affine, kF, kN)
    OP(geqrf, kF, kN)
    OP(_lu_with_info, kF, kN)
    OP(qr, kF, kN)
    OP(svd, kF, kN)
    OP(triangular_solve, kF, kN)
    OP(fractional_max_pool2d, kF, kN)
    OP(fractional_max_pool3d, kF, kN)
    OP(adaptive_max_pool3d, kF, kN)
    OP(multilabel_margin_loss_forward, kF, kN)
    OP(linalg_qr, kF, kN)
    OP(linalg_cholesky_ex, kF, kN)
    OP(linalg_svd, kF, kN)
    OP(linalg_eig, kF, kN)
    OP(linalg_eigh, kF, kN)
    OP(linalg_lstsq, kF, kN)
    OP(linalg_inv_ex, kF, kN)
    // ---- fp32 with the optional output dtype set (CUDA AT_FORALL_FP32_SET_OPT_DTYPE); CPU casts prod ----
    OP(prod, kF, kS)
    OP2(prod, dim_int, kF, kS)
    OP2(prod, dim_Dimname, kF, kS)
    OP2(softmax, int, kN, kS)
    OP2(softmax, Dimname, kN, kS)
    OP2(log_softmax, int, kN, kS)
    OP2(log_softmax, Dimname, kN, kS)
    OP(cumprod, kN, kS)
    OP2(cumprod, dimname, kN, kS)
    OP(cumsum, kN, kS)
    OP2(cumsum, dimname, kN, kS)
    OP(linalg_vector_norm, kN, kS)
    OP(linalg_matrix_norm, kN, kS)
    OP2(linalg_matrix_norm, str_ord, kN, kS)
    OP(sum, kN, kS)
    OP2(sum, dim_IntList, kN, kS)
    OP2(sum, dim_DimnameList, kN, kS)
    // ---- fp32 by redispatch to the dtype overload (CUDA AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE) ----
    NORM(Scalar, ScalarOpt_dtype, kN, kA)
    NORM(ScalarOpt_dim, ScalarOpt_dim_dtype, kN, kA)
    NORM(names_ScalarOpt_dim, names_ScalarOpt_dim_dtype, kN, kA)
    // ---- promote (CUDA AT_FORALL_PROMOTE | CPU list) ----
    OP(addcdiv, kN, kP)
    OP(addcmul, kN, kP)
    OP(atan2, kN, kP)
    OP(bilinear, kN, kP)
    OP(cross, kN, kP)
    OP(dot, kN, kP)
    OP(vdot, kN, kP)
    OP(grid_sampler, kF, kP)
    OP(index_put, kN, kP)
    OP(tensordot, kN, kP)
    OP(scatter_add, kN, kP)
    OP(stack, kP, kN)
    OP(cat, kP, kN)
    OP(index_copy, kP, kN)
    OP2(index_copy, dimname, kP, kN)
};

#undef OP
#undef OP2
#undef NORM
#undef AMPKIT_SLOT

constexpr uint32_t kKnownOpCount = sizeof(kKnownOps) / sizeof(kKnownOps[0]);
static_assert(__COUNTER__ - kCounterBase - 1 == kKnownOpCount, "every table entry takes exactly one slot");

}  // namespace

const KnownOp* known_ops() { return kKnownOps; }
uint32_t known_op_count() { return kKnownOpCount; }

}  // namespace ampkit::autocast::detail
