// fused_linear / fused_mlp on CUDA: row-major PyTorch tensors through the column-major cuBLASLt
// wrapper. Which GEMMs run, with which transposes, leading dimensions, epilogues and buffers, is
// decided by the CUDA-free builders in kernels/include/ampkit_kernels/linear_gemms.h (the
// transposition trick is explained there, and a host model of cuBLASLt checks those plans in every
// build); this file adds the tensors, the workspace, the stream, and the unfused fallbacks for
// problems cuBLASLt has no fused algorithm for.
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <array>
#include <mutex>

#include "ampkit_kernels/cublaslt_gemm.h"
#include "ampkit_kernels/linear_gemms.h"
#include "cuda/kernel_glue.h"
#include "ops/fused_linear.h"
#include "ops/linear_fp32.h"

namespace ampkit::cuda {
namespace {

using ampkit_kernels::GemmArgs;
using ampkit_kernels::LinearDims;
using detail::Activation;
using detail::LinearShape;

LinearDims dims_of(const LinearShape& shape) { return {shape.rows, shape.in_features, shape.out_features}; }

void check_on_cuda(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.is_cuda(), op, ": input (argument 0) must be a CUDA tensor for the CUDA kernel, got ",
              input.device());
}

size_t workspace_bytes(int device) {
  static std::mutex mutex;
  static std::array<size_t, 64> sizes{};
  std::lock_guard<std::mutex> lock(mutex);
  const size_t slot = static_cast<size_t>(device) % sizes.size();
  if (sizes[slot] == 0) sizes[slot] = ampkit_kernels::recommended_workspace_bytes(device);
  return sizes[slot];
}

// Runs one GEMM. The workspace comes from PyTorch's caching allocator on the current stream, so
// concurrent streams never share one and its reuse is ordered by the allocator's stream semantics.
ampkit_kernels::Result run_gemm(GemmArgs args, const at::Tensor& like) {
  const size_t bytes = workspace_bytes(like.get_device());
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
  args.workspace = bytes > 0 ? workspace.data_ptr() : nullptr;
  args.workspace_bytes = bytes;
  return ampkit_kernels::cublaslt_gemm(args, current_stream());
}

// Runs the GEMM; false when cuBLASLt has no algorithm for it (the caller then takes another path),
// and for any other failure an error that says which problem cuBLASLt could not run.
bool try_gemm(const char* op, const GemmArgs& args, const at::Tensor& like) {
  const ampkit_kernels::Result result = run_gemm(args, like);
  if (result.status == ampkit_kernels::Status::NoAlgorithm) return false;
  TORCH_CHECK(result.ok(), op, ": cuBLASLt failed on the GEMM m=", args.m, " n=", args.n, " k=", args.k, " (",
              ampkit_kernels::dtype_name(args.ab_dtype), ", epilogue ", ampkit_kernels::epilogue_name(args.epilogue),
              "): ", ampkit_kernels::describe(result));
  return true;
}

// try_gemm for a GEMM whose epilogue the caller otherwise runs unfused; records which path ran
// (ampkit::fused_epilogue_counts(), so a fallback on every call is visible to tests).
bool try_fused_gemm(const char* op, const GemmArgs& args, const at::Tensor& like) {
  const bool fused = try_gemm(op, args, like);
  if (args.epilogue != ampkit_kernels::GemmEpilogue::None) detail::count_epilogue_gemm(fused);
  return fused;
}

// A plain product (no epilogue) into `out`. When cuBLASLt has no algorithm at all for it (its
// heuristic refuses some shapes with a dimension of 1), the product is taken in fp32 through ATen
// and rounded once into `out`: the same fp32 accumulation, without the library's fast path.
template <typename Fp32Product>
void run_plain_gemm(const char* op, const GemmArgs& args, const at::Tensor& like, at::Tensor& out,
                    Fp32Product&& fp32_product) {
  TORCH_INTERNAL_ASSERT(args.epilogue == ampkit_kernels::GemmEpilogue::None, op, ": a plain GEMM with an epilogue");
  if (!try_gemm(op, args, like)) out.copy_(fp32_product());
}

// y (and the GELU input into `saved` when given) for a non-empty problem.
void forward_gemm(const char* op, const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                  Activation act, const LinearShape& shape, at::Tensor& y, at::Tensor* saved) {
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  const LinearDims dims = dims_of(shape);
  const ampkit_kernels::DType dtype = kernel_dtype(x.scalar_type());
  const GemmArgs args = ampkit_kernels::linear_forward_gemm(
      dims, dtype, act, has_bias, saved != nullptr, x.data_ptr(), w.data_ptr(),
      has_bias ? b.data_ptr() : nullptr, y.data_ptr(), saved != nullptr ? saved->data_ptr() : nullptr);
  // The plan's aux layout is the saved tensor's (empty_saved: [rows, round_up(out_features, 8)]).
  TORCH_INTERNAL_ASSERT(args.aux == nullptr || (saved->is_contiguous() && saved->size(1) == args.ld_aux), op,
                        ": saved GELU input of width ", saved->size(1), ", the GEMM plan expects ", args.ld_aux);
  if (try_fused_gemm(op, args, x)) return;
  // cuBLASLt could not fuse this epilogue at these sizes/alignments: the plain GEMM, then the
  // bias and activation as separate passes (same result, one extra rounding of the pre-activation).
  const GemmArgs plain = ampkit_kernels::linear_forward_gemm(dims, dtype, Activation::None, false, false,
                                                             x.data_ptr(), w.data_ptr(), nullptr, y.data_ptr(),
                                                             nullptr);
  run_plain_gemm(op, plain, x, y, [&] { return detail::linear_fp32(x, w, std::nullopt); });
  at::Tensor pre = has_bias ? y.add_(b) : y;
  if (saved != nullptr && act == Activation::Gelu) saved->narrow(1, 0, shape.out_features).copy_(pre);
  y.copy_(detail::apply_activation(pre, act));
}

at::Tensor forward_impl(const char* op, const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, Activation act, const LinearShape& shape,
                        at::Tensor* saved) {
  check_on_cuda(op, input);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor y = at::empty({shape.rows, shape.out_features}, input.options());
  if (shape.rows > 0 && shape.out_features > 0) {
    if (shape.in_features == 0) {
      // An empty sum: the output is the activation of the bias (or of zeros).
      at::Tensor pre = (bias.has_value() && bias->defined()) ? bias->to(at::kFloat).expand_as(y)
                                                               : at::zeros_like(y, y.options().dtype(at::kFloat));
      if (saved != nullptr && act == Activation::Gelu) saved->narrow(1, 0, shape.out_features).copy_(pre);
      y.copy_(detail::apply_activation(pre, act));
    } else {
      const at::Tensor x = input.reshape({shape.rows, shape.in_features}).contiguous();
      const at::Tensor w = weight.contiguous();
      forward_gemm(op, x, w, bias, act, shape, y, saved);
    }
  }
  return y.view(shape.output_sizes);
}

at::Tensor fused_linear_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             c10::string_view activation) {
  const Activation act = detail::parse_activation(detail::kFusedLinearOp, activation);
  const LinearShape shape = detail::check_fused_linear_args(detail::kFusedLinearOp, input, weight, bias);
  return forward_impl(detail::kFusedLinearOp, input, weight, bias, act, shape, nullptr);
}

std::tuple<at::Tensor, at::Tensor> fused_linear_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                                                             const std::optional<at::Tensor>& bias,
                                                             c10::string_view activation) {
  const char* op = detail::kFusedLinearForwardOp;
  const Activation act = detail::parse_activation(op, activation);
  const LinearShape shape = detail::check_fused_linear_args(op, input, weight, bias);
  check_on_cuda(op, input);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor saved = detail::empty_saved(act, shape, input.options());
  if (act == Activation::Gelu && saved.size(1) > shape.out_features) {
    // The GEMM writes only the first out_features columns; the padding must not be uninitialised.
    saved.narrow(1, shape.out_features, saved.size(1) - shape.out_features).zero_();
  }
  at::Tensor output = forward_impl(op, input, weight, bias, act, shape, act == Activation::Gelu ? &saved : nullptr);
  return {output, saved};
}

// The weight gradient with the bias gradient (column sums of g) from the BGRADB epilogue, for the
// layer of size `dims` (g: [rows, out_features], x: [rows, in_features]). All tensors contiguous
// and non-empty.
void wgrad_with_bias_grad(const char* op, const LinearDims& dims, const at::Tensor& g, const at::Tensor& x,
                          at::Tensor& dw, at::Tensor& db) {
  const ampkit_kernels::DType dtype = kernel_dtype(g.scalar_type());
  const GemmArgs args =
      ampkit_kernels::linear_wgrad_gemm(dims, dtype, true, g.data_ptr(), x.data_ptr(), dw.data_ptr(), db.data_ptr());
  if (try_fused_gemm(op, args, x)) return;
  // No algorithm fuses the bias gradient here: plain GEMM plus a column sum (accumulated in fp32).
  const GemmArgs plain =
      ampkit_kernels::linear_wgrad_gemm(dims, dtype, false, g.data_ptr(), x.data_ptr(), dw.data_ptr(), nullptr);
  run_plain_gemm(op, plain, x, dw, [&] { return detail::linear_weight_grad_fp32(g, x); });
  db.copy_(at::sum(g, {0}, false, at::kFloat));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_backward_cuda(const at::Tensor& grad_output,
                                                                          const at::Tensor& input,
                                                                          const at::Tensor& weight,
                                                                          const at::Tensor& saved,
                                                                          c10::string_view activation) {
  const char* op = detail::kFusedLinearBackwardOp;
  const Activation act = detail::parse_activation(op, activation);
  const LinearShape shape = detail::check_fused_linear_backward_args(grad_output, input, weight, saved, act);
  check_on_cuda(op, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t M = shape.rows, N = shape.out_features, K = shape.in_features;

  const at::Tensor grad = grad_output.reshape({M, N}).contiguous();
  // An elementwise pass in the input dtype: in a single layer no GEMM of ours produces grad, so no
  // epilogue can take the activation's derivative (ampkit_kernels/linear_gemms.h).
  const at::Tensor grad_pre = detail::activation_backward(grad, saved, act, M, N).contiguous();

  at::Tensor grad_input = at::empty({M, K}, input.options());
  at::Tensor grad_weight = at::empty({N, K}, weight.options());
  at::Tensor grad_bias = at::empty({N}, weight.options());
  if (M == 0 || N == 0 || K == 0) {
    // Some product is over an empty dimension: sums of nothing are zero.
    grad_input.zero_();
    grad_weight.zero_();
    if (M == 0) {
      grad_bias.zero_();
    } else {
      grad_bias.copy_(at::sum(grad_pre, {0}, false, at::kFloat));
    }
    return {grad_input.view(input.sizes()), grad_weight, grad_bias};
  }
  const at::Tensor x = input.reshape({M, K}).contiguous();
  const at::Tensor w = weight.contiguous();
  const GemmArgs dgrad = ampkit_kernels::linear_dgrad_gemm(dims_of(shape), kernel_dtype(grad_pre.scalar_type()),
                                                           grad_pre.data_ptr(), w.data_ptr(), grad_input.data_ptr());
  run_plain_gemm(op, dgrad, x, grad_input, [&] { return detail::linear_input_grad_fp32(grad_pre, w); });
  wgrad_with_bias_grad(op, dims_of(shape), grad_pre, x, grad_weight, grad_bias);
  return {grad_input.view(input.sizes()), grad_weight, grad_bias};
}

// ---- fused_mlp ----
std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_forward(const char* op, const at::Tensor& input,
                                                           const at::Tensor& weight1,
                                                           const std::optional<at::Tensor>& bias1,
                                                           const at::Tensor& weight2,
                                                           const std::optional<at::Tensor>& bias2,
                                                           const detail::MlpShape& shape) {
  check_on_cuda(op, input);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor pre = detail::empty_saved(Activation::Gelu, shape.first, input.options());
  const int64_t hidden_features = shape.first.out_features;
  if (pre.size(1) > hidden_features) pre.narrow(1, hidden_features, pre.size(1) - hidden_features).zero_();
  // Layer 1 with GELU_AUX(_BIAS): hidden and the GELU input from one GEMM; layer 2 with BIAS.
  const at::Tensor rows = input.reshape({shape.first.rows, shape.first.in_features});
  at::Tensor hidden = forward_impl(op, rows, weight1, bias1, Activation::Gelu, shape.first, &pre);
  LinearShape second = shape.second;
  second.output_sizes = {shape.second.rows, shape.second.out_features};
  at::Tensor output = forward_impl(op, hidden, weight2, bias2, Activation::None, second, nullptr);
  return {output.view(shape.second.output_sizes), hidden, pre};
}

at::Tensor fused_mlp_cuda(const at::Tensor& input, const at::Tensor& weight1, const std::optional<at::Tensor>& bias1,
                          const at::Tensor& weight2, const std::optional<at::Tensor>& bias2) {
  const auto shape = detail::check_fused_mlp_args(detail::kFusedMlpOp, input, weight1, bias1, weight2, bias2);
  return std::get<0>(mlp_forward(detail::kFusedMlpOp, input, weight1, bias1, weight2, bias2, shape));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_mlp_forward_cuda(const at::Tensor& input,
                                                                      const at::Tensor& weight1,
                                                                      const std::optional<at::Tensor>& bias1,
                                                                      const at::Tensor& weight2,
                                                                      const std::optional<at::Tensor>& bias2) {
  const auto shape = detail::check_fused_mlp_args(detail::kFusedMlpForwardOp, input, weight1, bias1, weight2, bias2);
  return mlp_forward(detail::kFusedMlpForwardOp, input, weight1, bias1, weight2, bias2, shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_mlp_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight1, const at::Tensor& weight2,
    const at::Tensor& hidden, const at::Tensor& pre) {
  const char* op = detail::kFusedMlpBackwardOp;
  const auto shape = detail::check_fused_mlp_backward_args(grad_output, input, weight1, weight2, hidden, pre);
  check_on_cuda(op, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t M = shape.first.rows, K = shape.first.in_features, H = shape.first.out_features,
                N = shape.second.out_features;
  if (M == 0 || K == 0 || H == 0 || N == 0) {
    // Products over an empty dimension: nothing for a GEMM to do; the fp32 ATen path handles them.
    return detail::fused_mlp_backward_fp32(grad_output, input, weight1, weight2, hidden, pre, shape);
  }
  const at::Tensor grad = grad_output.reshape({M, N}).contiguous();
  const at::Tensor x = input.reshape({M, K}).contiguous();
  const at::Tensor w1 = weight1.contiguous(), w2 = weight2.contiguous();
  // Raw pointers below assume row-major storage (a caller may pass views).
  const at::Tensor hidden_rows = hidden.contiguous(), pre_rows = pre.contiguous();
  at::Tensor grad_weight2 = at::empty({N, H}, input.options());
  at::Tensor grad_bias2 = at::empty({N}, input.options());
  const LinearDims first{M, K, H}, second{M, H, N};
  const ampkit_kernels::DType dtype = kernel_dtype(grad.scalar_type());
  wgrad_with_bias_grad(op, second, grad, hidden_rows, grad_weight2, grad_bias2);

  // Layer 2's data gradient with DGELU_BGRAD: grad_pre = (grad @ W2) * gelu'(pre), and bias1's
  // gradient (the column sums of grad_pre) from the same GEMM.
  at::Tensor grad_pre = at::empty({M, H}, input.options());
  at::Tensor grad_bias1 = at::empty({H}, input.options());
  const GemmArgs dgelu = ampkit_kernels::mlp_dgelu_bgrad_gemm(second, dtype, grad.data_ptr(), w2.data_ptr(),
                                                               pre_rows.data_ptr(), grad_pre.data_ptr(),
                                                               grad_bias1.data_ptr());
  TORCH_INTERNAL_ASSERT(pre_rows.size(1) == dgelu.ld_aux, op, ": pre of width ", pre_rows.size(1),
                        ", the GEMM plan expects ", dgelu.ld_aux);
  if (!try_fused_gemm(op, dgelu, x)) {
    // No algorithm fuses DGELU_BGRAD here: plain GEMM, then the GELU backward and a column sum.
    const GemmArgs plain =
        ampkit_kernels::linear_dgrad_gemm(second, dtype, grad.data_ptr(), w2.data_ptr(), grad_pre.data_ptr());
    run_plain_gemm(op, plain, x, grad_pre, [&] { return detail::linear_input_grad_fp32(grad, w2); });
    grad_pre = detail::activation_backward(grad_pre, pre_rows, Activation::Gelu, M, H).contiguous();
    grad_bias1.copy_(at::sum(grad_pre, {0}, false, at::kFloat));
  }

  at::Tensor grad_input = at::empty({M, K}, input.options());
  const GemmArgs dgrad =
      ampkit_kernels::linear_dgrad_gemm(first, dtype, grad_pre.data_ptr(), w1.data_ptr(), grad_input.data_ptr());
  run_plain_gemm(op, dgrad, x, grad_input, [&] { return detail::linear_input_grad_fp32(grad_pre, w1); });
  at::Tensor grad_weight1 = at::empty({H, K}, input.options());
  const GemmArgs wgrad = ampkit_kernels::linear_wgrad_gemm(first, dtype, false, grad_pre.data_ptr(), x.data_ptr(),
                                                           grad_weight1.data_ptr(), nullptr);
  run_plain_gemm(op, wgrad, x, grad_weight1, [&] { return detail::linear_weight_grad_fp32(grad_pre, x); });
  return {grad_input.view(input.sizes()), grad_weight1, grad_bias1, grad_weight2, grad_bias2};
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, CUDA, m) {
  m.impl("fused_mlp", &fused_mlp_cuda);
  m.impl("fused_mlp_forward", &fused_mlp_forward_cuda);
  m.impl("fused_mlp_backward", &fused_mlp_backward_cuda);
  m.impl("fused_linear", &fused_linear_cuda);
  m.impl("fused_linear_forward", &fused_linear_forward_cuda);
  m.impl("fused_linear_backward", &fused_linear_backward_cuda);
}

}  // namespace ampkit::cuda
