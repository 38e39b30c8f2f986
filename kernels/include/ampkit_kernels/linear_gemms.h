// The GEMMs of a linear layer (and of the Linear -> GELU -> Linear block) as cuBLASLt arguments:
// pure functions from sizes, flags and raw pointers to GemmArgs. No CUDA and no ATen here, so the
// translation is unit-tested on the host in every build (tests/cpp/test_linear_gemm_plans.cpp runs
// these plans through a model of cuBLASLt's documented semantics); csrc/cuda/fused_linear.cpp adds
// only the tensors, the workspace and the stream.
//
// The transposition trick: a row-major [r, c] tensor is, byte for byte, the column-major c x r
// matrix with leading dimension c. So every product below is written for the transposes, and no
// tensor is ever copied or transposed in memory (M rows, K in_features, N out_features):
//   forward  y[M,N] = x[M,K] W[N,K]^T + b   <=>  Y (N x M) = op_T(W: K x N) * X (K x M) + b per row
//            -> gemm(m=N, n=M, k=K, A=W transposed, lda=K; B=x, ldb=K; D=y, ldd=N), so the bias is a
//               per-row vector of D (what cuBLASLt's BIAS epilogues add) and the GELU_AUX buffer is
//               N x M with leading dimension round_up(N, 8) = the row-major saved [M, round_up(N, 8)].
//   dgrad    dx[M,K] = g[M,N] W[N,K]         <=>  dX (K x M) = W (K x N) * G (N x M)
//            -> gemm(m=K, n=M, k=N, A=W, lda=K; B=g, ldb=N; D=dx, ldd=K)
//   wgrad    dW[N,K] = g^T[N,M] x[M,K]       <=>  dW (K x N) = X (K x M) * op_T(G: N x M)
//            -> gemm(m=K, n=N, k=M, A=x, lda=K; B=g transposed, ldb=N; D=dW, ldd=K) with the BGRADB
//               epilogue: db[n] = sum over k (= the M rows) of op(B)[:, n] = the column sums of g.
// Here g is the gradient at the pre-activation: grad_output times the activation's derivative
// (one elementwise pass reading the saved GELU input or the ReLU output): in a single layer the
// gradient arrives from outside, so no GEMM of ours produces it.
// fused_mlp (Linear -> GELU -> Linear) is where the DGELU epilogue applies: layer 2's dgrad GEMM
// computes grad_hidden = grad_output W2 and, in its epilogue, grad_pre = grad_hidden * gelu'(pre)
// (pre = layer 1's saved GELU_AUX buffer) and bias1's gradient (DGELU_BGRAD's bias output: the
// row sums of the column-major result = the column sums of the row-major grad_pre).
#pragma once

#include <cstdint>

#include "ampkit_kernels/gemm_types.h"

namespace ampkit_kernels {

enum class LinearActivation : int { None = 0, Relu = 1, Gelu = 2 };

// One linear layer's sizes, y[M, N] = act(x[M, K] W[N, K]^T + b), in PyTorch's row-major terms.
struct LinearDims {
  int64_t rows = 0;          // M: the product of the input's leading dimensions
  int64_t in_features = 0;   // K
  int64_t out_features = 0;  // N
};

// Width of the saved GELU input [M, linear_aux_ld(N)]: cuBLASLt wants the aux leading dimension
// divisible by 8; only the first N columns are data.
constexpr int64_t linear_aux_ld(int64_t out_features) { return (out_features + 7) / 8 * 8; }

// The forward's epilogue. save_aux applies to GELU only (the GELU input is what its backward
// needs; the ReLU backward reads the output, and no activation needs nothing).
inline GemmEpilogue linear_forward_epilogue(LinearActivation activation, bool has_bias, bool save_aux) {
  switch (activation) {
    case LinearActivation::None: return has_bias ? GemmEpilogue::Bias : GemmEpilogue::None;
    case LinearActivation::Relu: return has_bias ? GemmEpilogue::BiasRelu : GemmEpilogue::Relu;
    case LinearActivation::Gelu:
      if (save_aux) return has_bias ? GemmEpilogue::BiasGeluAux : GemmEpilogue::GeluAux;
      return has_bias ? GemmEpilogue::BiasGelu : GemmEpilogue::Gelu;
  }
  return GemmEpilogue::None;
}

// y[M, N] = act(x[M, K] W[N, K]^T + b); with save_aux (GELU) also aux [M, linear_aux_ld(N)] = the
// GELU input. bias is read when has_bias, aux written when the epilogue saves it; otherwise the
// plan carries null for them whatever was passed. All tensors contiguous, row-major, dtype `dtype`.
inline GemmArgs linear_forward_gemm(const LinearDims& dims, DType dtype, LinearActivation activation, bool has_bias,
                                    bool save_aux, const void* x, const void* weight, const void* bias, void* y,
                                    void* aux) {
  GemmArgs args;
  args.transpose_a = true;
  args.m = dims.out_features;
  args.n = dims.rows;
  args.k = dims.in_features;
  args.ab_dtype = args.d_dtype = dtype;
  args.a = weight;
  args.lda = dims.in_features;
  args.b = x;
  args.ldb = dims.in_features;
  args.d = y;
  args.ldd = dims.out_features;
  args.epilogue = linear_forward_epilogue(activation, has_bias, save_aux);
  if (has_bias) args.bias = bias;
  if (args.epilogue == GemmEpilogue::BiasGeluAux || args.epilogue == GemmEpilogue::GeluAux) {
    args.aux = aux;
    args.ld_aux = linear_aux_ld(dims.out_features);
  }
  return args;
}

// dx[M, K] = g[M, N] W[N, K], g the gradient at the pre-activation.
inline GemmArgs linear_dgrad_gemm(const LinearDims& dims, DType dtype, const void* grad_pre, const void* weight,
                                  void* grad_input) {
  GemmArgs args;
  args.m = dims.in_features;
  args.n = dims.rows;
  args.k = dims.out_features;
  args.ab_dtype = args.d_dtype = dtype;
  args.a = weight;
  args.lda = dims.in_features;
  args.b = grad_pre;
  args.ldb = dims.out_features;
  args.d = grad_input;
  args.ldd = dims.in_features;
  return args;
}

// dW[N, K] = g[M, N]^T x[M, K]; with with_bias_grad also db[N] = the column sums of g (BGRADB).
inline GemmArgs linear_wgrad_gemm(const LinearDims& dims, DType dtype, bool with_bias_grad, const void* grad_pre,
                                  const void* x, void* grad_weight, void* grad_bias) {
  GemmArgs args;
  args.transpose_b = true;
  args.m = dims.in_features;
  args.n = dims.out_features;
  args.k = dims.rows;
  args.ab_dtype = args.d_dtype = dtype;
  args.a = x;
  args.lda = dims.in_features;
  args.b = grad_pre;
  args.ldb = dims.out_features;
  args.d = grad_weight;
  args.ldd = dims.in_features;
  if (with_bias_grad) {
    args.epilogue = GemmEpilogue::BGradB;
    args.bias_grad = grad_bias;
  }
  return args;
}

// fused_mlp backward, layer 2's data gradient with DGELU_BGRAD. `second` is layer 2's sizes (rows M,
// in_features H = layer 1's out_features, out_features N): grad_pre[M, H] = (grad_output[M, N] W2[N, H])
// * gelu'(pre) with pre = layer 1's saved GELU input [M, linear_aux_ld(H)], and grad_bias1[H] = the
// column sums of grad_pre.
inline GemmArgs mlp_dgelu_bgrad_gemm(const LinearDims& second, DType dtype, const void* grad_output,
                                     const void* weight2, const void* pre, void* grad_pre, void* grad_bias1) {
  GemmArgs args = linear_dgrad_gemm(second, dtype, grad_output, weight2, grad_pre);
  args.epilogue = GemmEpilogue::DGeluBGrad;
  args.aux = const_cast<void*>(pre);  // read by DGELU (GemmArgs has one aux pointer for both directions)
  args.ld_aux = linear_aux_ld(second.in_features);
  args.bias_grad = grad_bias1;
  return args;
}

}  // namespace ampkit_kernels
