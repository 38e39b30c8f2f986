// The framework-free cuBLASLt wrapper (kernels/), every epilogue against fp32 torch references.
// Needs a GPU: runs when AMPKIT_TEST_CUDA=1 on a CUDA build (the GPU machine); elsewhere only the
// argument checks that need no device run.
#include "test_helpers.h"

#if defined(AMPKIT_TESTS_LINK_KERNELS)

#include <cmath>

#include "ampkit_kernels/cublaslt_gemm.h"

using ampkit_kernels::GemmArgs;
using ampkit_kernels::GemmEpilogue;
using ampkit_kernels::Status;

namespace {

bool cuda_under_test() {
  const auto devices = ampkit_test::devices_under_test();
  return devices.size() > 1;
}

ampkit_kernels::DType kernel_dtype(torch::ScalarType dtype) {
  return dtype == torch::kHalf ? ampkit_kernels::DType::Float16 : ampkit_kernels::DType::BFloat16;
}

torch::Tensor workspace() {
  const size_t bytes = ampkit_kernels::recommended_workspace_bytes(0);
  return torch::empty({static_cast<int64_t>(bytes)}, torch::dtype(torch::kUInt8).device(torch::kCUDA));
}

// |ours - ref| <= 3 u (|ref| + magnitude) + 1e-4. fp32 accumulation over <= 128 terms is far below
// one rounding to fp16/bf16 (u = 2^-11 / 2^-8); 3 u covers the output rounding plus a rounded
// operand (DGELU's aux) through O(1) derivatives. For reductions (bias gradients) `magnitude` is
// the sum of the absolute terms, in case the library sums already-rounded values.
bool close(const torch::Tensor& ours, const torch::Tensor& ref, torch::ScalarType dtype,
           const torch::Tensor& magnitude = {}) {
  const double u = dtype == torch::kHalf ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
  const auto error = (ours.to(torch::kFloat) - ref).abs();
  auto allowed = 3 * u * ref.abs() + 1e-4;
  if (magnitude.defined()) allowed = allowed + 3 * u * magnitude;
  const double worst = (error - allowed).max().item<double>();
  UNSCOPED_INFO("largest excess over the tolerance: " << worst);
  return worst <= 0;
}

// Row-major y[M, N] = x[M, K] w[N, K]^T as the column-major N x M product (written out here on purpose,
// independently of the builders in ampkit_kernels/linear_gemms.h that the fused_linear glue uses).
GemmArgs forward_args(const torch::Tensor& x, const torch::Tensor& w, torch::Tensor& y) {
  GemmArgs args;
  args.transpose_a = true;
  args.m = w.size(0);
  args.n = x.size(0);
  args.k = x.size(1);
  args.ab_dtype = args.d_dtype = kernel_dtype(x.scalar_type());
  args.a = w.data_ptr();
  args.lda = args.k;
  args.b = x.data_ptr();
  args.ldb = args.k;
  args.d = y.data_ptr();
  args.ldd = args.m;
  return args;
}

}  // namespace

TEST_CASE("cublaslt_gemm rejects inconsistent arguments without touching the device", "[cublaslt]") {
  GemmArgs args;  // m = n = k = 0, null pointers
  REQUIRE(ampkit_kernels::cublaslt_gemm(args, nullptr).status == Status::InvalidArgument);
  int dummy[4] = {};
  args.m = args.n = args.k = 4;
  args.a = args.b = args.d = dummy;
  args.lda = args.ldb = args.ldd = 4;
  args.epilogue = GemmEpilogue::BiasGeluAux;  // no bias, no aux
  REQUIRE(ampkit_kernels::cublaslt_gemm(args, nullptr).status == Status::InvalidArgument);
  args.bias = dummy;
  args.aux = dummy;
  args.ld_aux = 4;  // not a multiple of 8
  REQUIRE(ampkit_kernels::cublaslt_gemm(args, nullptr).status == Status::InvalidArgument);
  REQUIRE(std::string(ampkit_kernels::epilogue_name(GemmEpilogue::DGeluBGrad)) == "dgelu+bgrad");
}

TEST_CASE("cublaslt_gemm sends epilogue vectors that are not 16-byte aligned to the unfused path", "[cublaslt]") {
  // Decided before any device call, so it runs everywhere; the glue then takes the plain GEMM.
  alignas(256) static unsigned char buffer[1024] = {};
  GemmArgs args;
  args.m = args.n = args.k = 8;
  args.a = args.b = args.d = buffer;
  args.lda = args.ldb = args.ldd = 8;
  args.ld_aux = 8;
  args.epilogue = GemmEpilogue::Bias;
  args.bias = buffer + 2;  // a slice one fp16 element into a buffer
  CHECK(ampkit_kernels::cublaslt_gemm(args, nullptr).status == Status::NoAlgorithm);
  args.epilogue = GemmEpilogue::BiasGeluAux;
  args.bias = buffer + 16;
  args.aux = buffer + 8;
  CHECK(ampkit_kernels::cublaslt_gemm(args, nullptr).status == Status::NoAlgorithm);
  args.epilogue = GemmEpilogue::BGradB;
  args.aux = nullptr;
  args.bias_grad = buffer + 4;
  CHECK(ampkit_kernels::cublaslt_gemm(args, nullptr).status == Status::NoAlgorithm);
}

namespace {

// Where a fused algorithm must exist. cublasLt.h documents no shape at which the heuristic must
// return one; what it documents are the conditions an algorithm may assume: operands as aligned as
// the MIN_ALIGNMENT preferences say (default 256 bytes: fresh allocations), an epilogue aux leading
// dimension divisible by 8 (EPILOGUE_AUX_LD), and the heuristic deciding from the bias / aux pointer
// values (BIAS_POINTER, EPILOGUE_AUX_POINTER), which the wrapper sends unfused unless 16-byte
// aligned. So: at a "standard" problem (every dimension a multiple of 16, fresh allocations, ld_aux
// a multiple of 8) the forward epilogues must run fused; at awkward sizes (odd m/n/k, rows that
// are not 16-byte aligned) cuBLASLt may decline, the wrapper must then say NoAlgorithm and write
// nothing, and whenever it does run, the result must be right.
struct Problem {
  int64_t M, K, N;
  bool must_fuse;
};
constexpr Problem kAligned{64, 128, 96, true};
constexpr Problem kAwkward{37, 70, 45, false};

// ok(), or NoAlgorithm where the problem allows it (then D must be untouched: still all NaN).
bool ran_or_declined(const ampkit_kernels::Result& result, const Problem& p, const torch::Tensor& d) {
  if (result.ok()) return true;
  INFO("status " << ampkit_kernels::describe(result));
  REQUIRE(result.status == Status::NoAlgorithm);
  REQUIRE_FALSE(p.must_fuse);
  CHECK(torch::isnan(d.to(torch::kFloat)).all().item<bool>());
  return false;
}

}  // namespace

TEST_CASE("cublaslt_gemm forward epilogues match fp32 torch", "[cublaslt][cuda]") {
  if (!cuda_under_test()) return;
  for (const Problem& p : {kAligned, kAwkward}) {
    for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
      torch::manual_seed(0);
      const int64_t M = p.M, K = p.K, N = p.N, ld_aux = (N + 7) / 8 * 8;
      const auto on_gpu = torch::dtype(dtype).device(torch::kCUDA);
      auto x = torch::randn({M, K}).to(on_gpu);
      auto w = (torch::randn({N, K}) / std::sqrt(static_cast<double>(K))).to(on_gpu);
      auto b = (0.5 * torch::randn({N})).to(on_gpu);
      auto ws = workspace();
      const auto pre_nobias = torch::matmul(x.to(torch::kFloat), w.to(torch::kFloat).t());
      const auto pre = pre_nobias + b.to(torch::kFloat);
      struct Case {
        GemmEpilogue epilogue;
        torch::Tensor expected;
        torch::Tensor expected_aux;
      };
      const Case cases[] = {
          {GemmEpilogue::None, pre_nobias, {}},
          {GemmEpilogue::Bias, pre, {}},
          {GemmEpilogue::BiasRelu, torch::relu(pre), {}},
          {GemmEpilogue::BiasGelu, torch::gelu(pre, "tanh"), {}},
          {GemmEpilogue::Relu, torch::relu(pre_nobias), {}},
          {GemmEpilogue::Gelu, torch::gelu(pre_nobias, "tanh"), {}},
          {GemmEpilogue::BiasGeluAux, torch::gelu(pre, "tanh"), pre},
          {GemmEpilogue::GeluAux, torch::gelu(pre_nobias, "tanh"), pre_nobias},
      };
      for (const auto& c : cases) {
        INFO("epilogue " << ampkit_kernels::epilogue_name(c.epilogue) << ", dtype " << dtype << ", M=" << M
                         << " K=" << K << " N=" << N);
        auto y = torch::full({M, N}, std::nan(""), on_gpu);
        auto aux = torch::zeros({M, ld_aux}, on_gpu);
        GemmArgs args = forward_args(x, w, y);
        args.epilogue = c.epilogue;
        const bool bias = c.epilogue == GemmEpilogue::Bias || c.epilogue == GemmEpilogue::BiasRelu ||
                          c.epilogue == GemmEpilogue::BiasGelu || c.epilogue == GemmEpilogue::BiasGeluAux;
        args.bias = bias ? b.data_ptr() : nullptr;
        if (c.expected_aux.defined()) {
          args.aux = aux.data_ptr();
          args.ld_aux = ld_aux;
        }
        args.workspace = ws.data_ptr();
        args.workspace_bytes = static_cast<size_t>(ws.numel());
        if (!ran_or_declined(ampkit_kernels::cublaslt_gemm(args, nullptr), p, y)) continue;
        CHECK(close(y, c.expected, dtype));
        if (c.expected_aux.defined()) CHECK(close(aux.narrow(1, 0, N), c.expected_aux, dtype));
      }
    }
  }
}

TEST_CASE("cublaslt_gemm backward epilogues (DGELU, DGELU_BGRAD, BGRADB) match fp32 torch", "[cublaslt][cuda]") {
  if (!cuda_under_test()) return;
  // cublasLt.h documents these epilogues but no condition under which the heuristic must offer a
  // fused algorithm for them (the glue then runs them unfused): at both sizes a decline is allowed
  // (and reported), a result is checked.
  for (Problem p : {Problem{64, 32, 48, false}, Problem{53, 24, 40, false}}) {
    for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
      torch::manual_seed(1);
      const int64_t M = p.M, K = p.K, N = p.N;
      const auto on_gpu = torch::dtype(dtype).device(torch::kCUDA);
      auto ws = workspace();
      auto x = torch::randn({M, K}).to(on_gpu);
      auto w = (torch::randn({N, K}) / std::sqrt(static_cast<double>(K))).to(on_gpu);
      auto aux = torch::randn({M, N}).to(on_gpu);  // a GELU input, row-major = column-major N x M, ld N
      const auto product = torch::matmul(x.to(torch::kFloat), w.to(torch::kFloat).t());
      const auto dgelu = torch::gelu_backward(product, aux.to(torch::kFloat), "tanh");
      for (auto epilogue : {GemmEpilogue::DGelu, GemmEpilogue::DGeluBGrad}) {
        INFO("epilogue " << ampkit_kernels::epilogue_name(epilogue) << ", dtype " << dtype);
        auto d = torch::empty({M, N}, on_gpu);
        auto bias_grad = torch::full({N}, std::nan(""), on_gpu);
        GemmArgs args = forward_args(x, w, d);
        args.epilogue = epilogue;
        args.aux = aux.data_ptr();
        args.ld_aux = N;
        args.bias_grad = bias_grad.data_ptr();
        args.workspace = ws.data_ptr();
        args.workspace_bytes = static_cast<size_t>(ws.numel());
        d.fill_(std::nan(""));
        if (!ran_or_declined(ampkit_kernels::cublaslt_gemm(args, nullptr), p, d)) {
          WARN("cuBLASLt offered no fused " << ampkit_kernels::epilogue_name(epilogue) << " at M=" << M << " K=" << K
                                            << " N=" << N);
          continue;
        }
        CHECK(close(d, dgelu, dtype));
        if (epilogue == GemmEpilogue::DGeluBGrad) CHECK(close(bias_grad, dgelu.sum(0), dtype, dgelu.abs().sum(0)));
      }

      // wgrad: dW[N, K] = g^T x, and BGRADB's bias gradient = the column sums of g.
      auto g = torch::randn({M, N}).to(on_gpu);
      auto dw = torch::full({N, K}, std::nan(""), on_gpu);
      auto db = torch::full({N}, std::nan(""), on_gpu);
      GemmArgs args;
      args.transpose_b = true;
      args.m = K;
      args.n = N;
      args.k = M;
      args.ab_dtype = args.d_dtype = kernel_dtype(dtype);
      args.a = x.data_ptr();
      args.lda = K;
      args.b = g.data_ptr();
      args.ldb = N;
      args.d = dw.data_ptr();
      args.ldd = K;
      args.epilogue = GemmEpilogue::BGradB;
      args.bias_grad = db.data_ptr();
      args.workspace = ws.data_ptr();
      args.workspace_bytes = static_cast<size_t>(ws.numel());
      if (!ran_or_declined(ampkit_kernels::cublaslt_gemm(args, nullptr), p, dw)) {
        WARN("cuBLASLt offered no fused bgradb at M=" << M << " K=" << K << " N=" << N);
        continue;
      }
      CHECK(close(dw, torch::matmul(g.to(torch::kFloat).t(), x.to(torch::kFloat)), dtype));
      CHECK(close(db, g.to(torch::kFloat).sum(0), dtype, g.to(torch::kFloat).abs().sum(0)));
    }
  }
}

TEST_CASE("cublaslt_gemm caches one algorithm per problem and handles 2-byte aligned operands", "[cublaslt][cuda]") {
  if (!cuda_under_test()) return;
  const auto on_gpu = torch::dtype(torch::kHalf).device(torch::kCUDA);
  auto ws = workspace();
  auto buffer = torch::randn({1 + 31 * 17}).to(on_gpu);
  auto x = buffer.narrow(0, 1, 31 * 17).view({31, 17});  // starts 2 bytes past an allocation
  auto w = torch::randn({9, 17}).to(on_gpu);
  auto y = torch::empty({31, 9}, on_gpu);
  ampkit_kernels::clear_gemm_algorithm_cache();
  GemmArgs args = forward_args(x, w, y);
  args.workspace = ws.data_ptr();
  args.workspace_bytes = static_cast<size_t>(ws.numel());
  REQUIRE(ampkit_kernels::cublaslt_gemm(args, nullptr).ok());
  REQUIRE(ampkit_kernels::gemm_algorithm_cache_size() == 1);
  REQUIRE(ampkit_kernels::cublaslt_gemm(args, nullptr).ok());
  REQUIRE(ampkit_kernels::gemm_algorithm_cache_size() == 1);
  CHECK(close(y, torch::matmul(x.to(torch::kFloat), w.to(torch::kFloat).t()), torch::kHalf));
  auto x_aligned = x.clone();  // a fresh, 256-byte aligned allocation
  auto y2 = torch::empty({31, 9}, on_gpu);
  GemmArgs aligned = forward_args(x_aligned, w, y2);
  aligned.workspace = ws.data_ptr();
  aligned.workspace_bytes = static_cast<size_t>(ws.numel());
  REQUIRE(ampkit_kernels::cublaslt_gemm(aligned, nullptr).ok());
  REQUIRE(ampkit_kernels::gemm_algorithm_cache_size() == 2);  // another alignment, another entry
  CHECK(close(y2, torch::matmul(x.to(torch::kFloat), w.to(torch::kFloat).t()), torch::kHalf));
}

#endif  // AMPKIT_TESTS_LINK_KERNELS
