// The cuBLASLt argument translation of fused_linear / fused_mlp (kernels/include/ampkit_kernels/
// linear_gemms.h: m/n/k, transposes, leading dimensions, epilogues, which buffer is bias / aux /
// bias_grad) checked on the host: each plan runs through the model of cuBLASLt's documented
// semantics (cublaslt_model.h) on row-major host buffers laid out as PyTorch lays out the tensors,
// and the results are compared with a plain row-major reference in double precision. Runs in every
// build (no CUDA needed): the CUDA glue uses exactly these builders, and cublaslt_gemm the heuristic
// preference builder (gemm_preference.h) that run_plan checks each plan under.
//
// Tolerance: |model - reference| <= 1e-5 * L * max(1, |reference|), L the length of the reduction(s)
// behind the value (K for y, N for dx, M for dW and the bias gradients; for the fused_mlp chain
// M + K + H + N). The model accumulates in float32 (unit roundoff 6e-8) over at most 64 terms of
// magnitude <= 1, so its error is below 64 * 6e-8 * (sum of |terms|) ~ 1e-5 * L in the worst case and
// ~100x smaller typically; a wrong plan (a swapped leading dimension or transpose, a missing bias,
// the wrong buffer) is off by O(1), reads poison (NaN), or is refused by the model.
#include "test_helpers.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "ampkit_kernels/gemm_preference.h"
#include "ampkit_kernels/linear_gemms.h"
#include "cublaslt_model.h"

using ampkit_kernels::DType;
using ampkit_kernels::GemmArgs;
using ampkit_kernels::GemmEpilogue;
using ampkit_kernels::LinearActivation;
using ampkit_kernels::LinearDims;
using ampkit_test::lt_model::Memory;
namespace lt_model = ampkit_test::lt_model;

namespace {

constexpr DType kDtype = DType::Float16;  // what the glue passes for fp16 tensors; the model computes in fp32

// A row-major [rows, cols] reference matrix in double.
struct Matrix {
  int64_t rows = 0, cols = 0;
  std::vector<double> v;
  Matrix(int64_t r, int64_t c) : rows(r), cols(c), v(static_cast<size_t>(r * c), 0.0) {}
  double& operator()(int64_t i, int64_t j) { return v[static_cast<size_t>(i * cols + j)]; }
  double operator()(int64_t i, int64_t j) const { return v[static_cast<size_t>(i * cols + j)]; }
};

Matrix random_matrix(int64_t rows, int64_t cols, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  Matrix m(rows, cols);
  for (double& x : m.v) x = dist(rng);  // float values, so the model's inputs are exact
  return m;
}

Matrix transposed(const Matrix& a) {
  Matrix out(a.cols, a.rows);
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < a.cols; ++j) out(j, i) = a(i, j);
  return out;
}
// A[r, c] B[c, c2].
Matrix times(const Matrix& a, const Matrix& b) {
  Matrix out(a.rows, b.cols);
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < b.cols; ++j) {
      double s = 0;
      for (int64_t l = 0; l < a.cols; ++l) s += a(i, l) * b(l, j);
      out(i, j) = s;
    }
  return out;
}
std::vector<double> column_sums(const Matrix& a) {
  std::vector<double> s(static_cast<size_t>(a.cols), 0.0);
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < a.cols; ++j) s[static_cast<size_t>(j)] += a(i, j);
  return s;
}

double activate(double x, LinearActivation act) {
  switch (act) {
    case LinearActivation::Relu: return x > 0 ? x : 0.0;
    case LinearActivation::Gelu: return lt_model::gelu_tanh(x);
    case LinearActivation::None: return x;
  }
  return x;
}
double activation_grad(double x, LinearActivation act) {
  switch (act) {
    case LinearActivation::Relu: return x > 0 ? 1.0 : 0.0;
    case LinearActivation::Gelu: return lt_model::gelu_tanh_grad(x);
    case LinearActivation::None: return 1.0;
  }
  return 1.0;
}

// A row-major [rows, width] host tensor whose first `values.cols` columns hold `values`; the other
// columns (padding) stay unwritten poison.
float* upload(Memory& memory, const std::string& name, const Matrix& values, int64_t width) {
  float* p = memory.alloc(name, static_cast<size_t>(values.rows * width));
  for (int64_t i = 0; i < values.rows; ++i)
    for (int64_t j = 0; j < values.cols; ++j) memory.store(p, i * width + j, static_cast<float>(values(i, j)));
  return p;
}
float* upload(Memory& memory, const std::string& name, const std::vector<double>& values) {
  Matrix m(1, static_cast<int64_t>(values.size()));
  m.v = values;
  return upload(memory, name, m, m.cols);
}

bool close(double got, double ref, int64_t reduction) {
  return std::abs(got - ref) <= 1e-5 * static_cast<double>(reduction) * std::max(1.0, std::abs(ref));
}

// Compares the first ref.cols columns of the row-major [ref.rows, width] host tensor with ref.
void check_tensor(const Memory& memory, const char* name, const float* p, const Matrix& ref, int64_t width,
                  int64_t reduction) {
  int64_t bad = 0;
  for (int64_t i = 0; i < ref.rows; ++i)
    for (int64_t j = 0; j < ref.cols; ++j) {
      const float got = p[i * width + j];
      if (!memory.written(p, i * width + j) || !close(got, ref(i, j), reduction)) {
        if (bad++ < 3)
          UNSCOPED_INFO(name << "(" << i << ", " << j << ") = " << got << (memory.written(p, i * width + j) ? "" : " (unwritten)")
                             << ", reference " << ref(i, j));
      }
    }
  INFO(name << ": " << bad << " of " << ref.rows * ref.cols << " elements off");
  CHECK(bad == 0);
}
void check_vector(const Memory& memory, const char* name, const float* p, const std::vector<double>& ref,
                  int64_t reduction) {
  Matrix m(1, static_cast<int64_t>(ref.size()));
  m.v = ref;
  check_tensor(memory, name, p, m, m.cols, reduction);
}
// Nothing in [p, p + count) was written.
bool untouched(const Memory& memory, const float* p, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    if (memory.written(p, i)) return false;
  return true;
}

void run_plan(const char* what, const GemmArgs& args, Memory& memory) {
  // As the glue runs it: the plan plus a workspace, under the heuristic preference cublaslt_gemm
  // derives from it (gemm_preference.h), which the model checks first (fp16 D here: no split-K
  // reduction in the output type).
  alignas(256) static unsigned char workspace[256];
  GemmArgs with_workspace = args;
  with_workspace.workspace = workspace;
  with_workspace.workspace_bytes = sizeof(workspace);
  const lt_model::Outcome outcome =
      lt_model::run(with_workspace, memory, ampkit_kernels::gemm_preference(with_workspace));
  INFO(what << " (m=" << args.m << " n=" << args.n << " k=" << args.k << " lda=" << args.lda << " ldb=" << args.ldb
            << " ldd=" << args.ldd << " ld_aux=" << args.ld_aux << " epilogue " << static_cast<int>(args.epilogue)
            << "): " << outcome.error);
  REQUIRE(outcome.ok());
  CHECK(args.ab_dtype == kDtype);
  CHECK(args.d_dtype == kDtype);
}

const char* activation_name(LinearActivation act) {
  return act == LinearActivation::Relu ? "relu" : act == LinearActivation::Gelu ? "gelu" : "none";
}

struct Shape {
  int64_t M, K, N;
};
// M = 1, K = 1, N = 1, N not a multiple of 8 (and one that is), odd sizes.
const Shape kShapes[] = {{7, 13, 5}, {33, 17, 9}, {1, 1, 1}, {64, 24, 40}, {1, 9, 6},
                         {10, 1, 7}, {5, 6, 1},   {3, 4, 8},  {2, 3, 17}};

}  // namespace

TEST_CASE("linear GEMM plans: forward, dgrad and wgrad(+BGRADB) match a double reference through the cuBLASLt model",
          "[linear_gemms]") {
  uint32_t seed = 0;
  for (const Shape& s : kShapes) {
    for (const LinearActivation act : {LinearActivation::None, LinearActivation::Relu, LinearActivation::Gelu}) {
      for (const bool has_bias : {false, true}) {
        for (const bool save_aux : {false, true}) {
          INFO("M=" << s.M << " K=" << s.K << " N=" << s.N << " activation " << activation_name(act) << " bias "
                    << has_bias << " save_aux " << save_aux);
          std::mt19937 rng(++seed);
          const LinearDims dims{s.M, s.K, s.N};
          const int64_t aux_width = (s.N + 7) / 8 * 8;  // fused_linear_forward's saved [M, round_up(N, 8)]
          const Matrix x = random_matrix(s.M, s.K, rng), w = random_matrix(s.N, s.K, rng);
          const Matrix b = random_matrix(1, s.N, rng), grad_output = random_matrix(s.M, s.N, rng);

          // Reference: pre = x W^T + b, y = act(pre), grad_pre = g * act'(pre), dx = grad_pre W,
          // dW = grad_pre^T x, db = column sums of grad_pre.
          Matrix pre = times(x, transposed(w));
          if (has_bias)
            for (int64_t i = 0; i < s.M; ++i)
              for (int64_t o = 0; o < s.N; ++o) pre(i, o) += b(0, o);
          Matrix y_ref(s.M, s.N), grad_pre(s.M, s.N);
          for (int64_t i = 0; i < s.M; ++i)
            for (int64_t o = 0; o < s.N; ++o) {
              y_ref(i, o) = activate(pre(i, o), act);
              grad_pre(i, o) = grad_output(i, o) * activation_grad(pre(i, o), act);
            }

          Memory memory;
          float* x_h = upload(memory, "x", x, s.K);
          float* w_h = upload(memory, "weight", w, s.K);
          float* b_h = upload(memory, "bias", b, s.N);  // handed over even without has_bias: the plan must drop it
          float* y_h = memory.alloc("y", static_cast<size_t>(s.M * s.N));
          float* aux_h = memory.alloc("saved", static_cast<size_t>(s.M * aux_width));

          // ---- forward ----
          const GemmArgs fwd =
              ampkit_kernels::linear_forward_gemm(dims, kDtype, act, has_bias, save_aux, x_h, w_h, b_h, y_h, aux_h);
          run_plan("forward", fwd, memory);
          check_tensor(memory, "y", y_h, y_ref, s.N, s.K);
          if (act == LinearActivation::Gelu && save_aux) {
            check_tensor(memory, "saved GELU input", aux_h, pre, aux_width, s.K);
            for (int64_t i = 0; i < s.M; ++i)  // padding columns N..aux_width-1 of every row: never written
              CHECK(untouched(memory, aux_h + i * aux_width + s.N, aux_width - s.N));
          } else {
            CHECK(untouched(memory, aux_h, s.M * aux_width));  // nothing to save for relu/none or without save_aux
          }

          // ---- backward: the pre-activation gradient arrives from the elementwise pass ----
          float* g_h = upload(memory, "grad_pre", grad_pre, s.N);
          float* dx_h = memory.alloc("grad_input", static_cast<size_t>(s.M * s.K));
          float* dw_h = memory.alloc("grad_weight", static_cast<size_t>(s.N * s.K));
          float* db_h = memory.alloc("grad_bias", static_cast<size_t>(s.N));
          run_plan("dgrad", ampkit_kernels::linear_dgrad_gemm(dims, kDtype, g_h, w_h, dx_h), memory);
          check_tensor(memory, "grad_input", dx_h, times(grad_pre, w), s.K, s.N);
          run_plan("wgrad", ampkit_kernels::linear_wgrad_gemm(dims, kDtype, has_bias, g_h, x_h, dw_h, db_h), memory);
          check_tensor(memory, "grad_weight", dw_h, times(transposed(grad_pre), x), s.K, s.M);
          if (has_bias) {
            check_vector(memory, "grad_bias (BGRADB)", db_h, column_sums(grad_pre), s.M);
          } else {
            CHECK(untouched(memory, db_h, s.N));
          }
        }
      }
    }
  }
}

TEST_CASE("linear GEMM plans: the fused_mlp chain (GELU_AUX forward, BGRADB, DGELU_BGRAD) through the cuBLASLt model",
          "[linear_gemms]") {
  struct MlpShape {
    int64_t M, K, H, N;
  };
  const MlpShape shapes[] = {{1, 1, 1, 1}, {7, 13, 5, 3}, {33, 17, 9, 6}, {64, 24, 40, 16}, {1, 3, 10, 2}, {5, 1, 7, 1}};
  uint32_t seed = 100;
  for (const MlpShape& s : shapes) {
    for (const bool has_bias1 : {false, true}) {
      for (const bool has_bias2 : {false, true}) {
        INFO("M=" << s.M << " K=" << s.K << " H=" << s.H << " N=" << s.N << " bias1 " << has_bias1 << " bias2 "
                  << has_bias2);
        std::mt19937 rng(++seed);
        const LinearDims first{s.M, s.K, s.H}, second{s.M, s.H, s.N};
        const int64_t pre_width = (s.H + 7) / 8 * 8;  // fused_mlp_forward's pre [M, round_up(H, 8)]
        const int64_t L = s.M + s.K + s.H + s.N;
        const Matrix x = random_matrix(s.M, s.K, rng), w1 = random_matrix(s.H, s.K, rng);
        const Matrix b1 = random_matrix(1, s.H, rng), w2 = random_matrix(s.N, s.H, rng);
        const Matrix b2 = random_matrix(1, s.N, rng), grad = random_matrix(s.M, s.N, rng);

        // Reference chain in double.
        Matrix pre = times(x, transposed(w1));
        Matrix hidden(s.M, s.H);
        for (int64_t i = 0; i < s.M; ++i)
          for (int64_t h = 0; h < s.H; ++h) {
            if (has_bias1) pre(i, h) += b1(0, h);
            hidden(i, h) = lt_model::gelu_tanh(pre(i, h));
          }
        Matrix out = times(hidden, transposed(w2));
        if (has_bias2)
          for (int64_t i = 0; i < s.M; ++i)
            for (int64_t o = 0; o < s.N; ++o) out(i, o) += b2(0, o);
        const Matrix grad_w2 = times(transposed(grad), hidden);
        const std::vector<double> grad_b2 = column_sums(grad);
        Matrix grad_pre = times(grad, w2);
        for (int64_t i = 0; i < s.M; ++i)
          for (int64_t h = 0; h < s.H; ++h) grad_pre(i, h) *= lt_model::gelu_tanh_grad(pre(i, h));
        const std::vector<double> grad_b1 = column_sums(grad_pre);
        const Matrix grad_x = times(grad_pre, w1), grad_w1 = times(transposed(grad_pre), x);

        Memory memory;
        float* x_h = upload(memory, "x", x, s.K);
        float* w1_h = upload(memory, "weight1", w1, s.K);
        float* b1_h = upload(memory, "bias1", b1, s.H);
        float* w2_h = upload(memory, "weight2", w2, s.H);
        float* b2_h = upload(memory, "bias2", b2, s.N);
        float* hidden_h = memory.alloc("hidden", static_cast<size_t>(s.M * s.H));
        float* pre_h = memory.alloc("pre", static_cast<size_t>(s.M * pre_width));
        float* out_h = memory.alloc("output", static_cast<size_t>(s.M * s.N));

        // Forward: layer 1 with GELU_AUX(_BIAS), layer 2 with BIAS (or none).
        run_plan("layer 1 forward",
                 ampkit_kernels::linear_forward_gemm(first, kDtype, LinearActivation::Gelu, has_bias1, true, x_h, w1_h,
                                                     b1_h, hidden_h, pre_h),
                 memory);
        check_tensor(memory, "hidden", hidden_h, hidden, s.H, L);
        check_tensor(memory, "pre", pre_h, pre, pre_width, L);
        run_plan("layer 2 forward",
                 ampkit_kernels::linear_forward_gemm(second, kDtype, LinearActivation::None, has_bias2, false, hidden_h,
                                                     w2_h, b2_h, out_h, nullptr),
                 memory);
        check_tensor(memory, "output", out_h, out, s.N, L);

        // Backward, as fused_mlp_backward runs it.
        float* grad_h = upload(memory, "grad_output", grad, s.N);
        float* gw2_h = memory.alloc("grad_weight2", static_cast<size_t>(s.N * s.H));
        float* gb2_h = memory.alloc("grad_bias2", static_cast<size_t>(s.N));
        float* gpre_h = memory.alloc("grad_pre", static_cast<size_t>(s.M * s.H));
        float* gb1_h = memory.alloc("grad_bias1", static_cast<size_t>(s.H));
        float* gx_h = memory.alloc("grad_input", static_cast<size_t>(s.M * s.K));
        float* gw1_h = memory.alloc("grad_weight1", static_cast<size_t>(s.H * s.K));
        run_plan("layer 2 wgrad + BGRADB",
                 ampkit_kernels::linear_wgrad_gemm(second, kDtype, true, grad_h, hidden_h, gw2_h, gb2_h), memory);
        check_tensor(memory, "grad_weight2", gw2_h, grad_w2, s.H, L);
        check_vector(memory, "grad_bias2", gb2_h, grad_b2, L);
        // pre's padding columns are poison here (the model never wrote them): DGELU must not read them.
        run_plan("layer 2 dgrad + DGELU_BGRAD",
                 ampkit_kernels::mlp_dgelu_bgrad_gemm(second, kDtype, grad_h, w2_h, pre_h, gpre_h, gb1_h), memory);
        check_tensor(memory, "grad_pre", gpre_h, grad_pre, s.H, L);
        check_vector(memory, "grad_bias1 (DGELU_BGRAD)", gb1_h, grad_b1, L);
        run_plan("layer 1 dgrad", ampkit_kernels::linear_dgrad_gemm(first, kDtype, gpre_h, w1_h, gx_h), memory);
        check_tensor(memory, "grad_input", gx_h, grad_x, s.K, L);
        run_plan("layer 1 wgrad",
                 ampkit_kernels::linear_wgrad_gemm(first, kDtype, false, gpre_h, x_h, gw1_h, nullptr), memory);
        check_tensor(memory, "grad_weight1", gw1_h, grad_w1, s.K, L);
      }
    }
  }
}

TEST_CASE("linear GEMM plans: epilogue choice, and the aux width the ops allocate", "[linear_gemms]") {
  using ampkit_kernels::linear_forward_epilogue;
  CHECK(linear_forward_epilogue(LinearActivation::None, false, true) == GemmEpilogue::None);
  CHECK(linear_forward_epilogue(LinearActivation::None, true, false) == GemmEpilogue::Bias);
  CHECK(linear_forward_epilogue(LinearActivation::Relu, false, false) == GemmEpilogue::Relu);
  CHECK(linear_forward_epilogue(LinearActivation::Relu, true, true) == GemmEpilogue::BiasRelu);
  CHECK(linear_forward_epilogue(LinearActivation::Gelu, false, false) == GemmEpilogue::Gelu);
  CHECK(linear_forward_epilogue(LinearActivation::Gelu, true, false) == GemmEpilogue::BiasGelu);
  CHECK(linear_forward_epilogue(LinearActivation::Gelu, false, true) == GemmEpilogue::GeluAux);
  CHECK(linear_forward_epilogue(LinearActivation::Gelu, true, true) == GemmEpilogue::BiasGeluAux);

  // The plans' ld_aux is the width of the saved GELU input that the ops allocate (CPU kernels here;
  // the CUDA kernels allocate it with the same shape rule and assert it against the plan).
  static const auto linear_forward =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("ampkit::fused_linear_forward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const std::optional<at::Tensor>&, c10::string_view)>();
  static const auto mlp_forward =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("ampkit::fused_mlp_forward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                const std::optional<at::Tensor>&, const at::Tensor&,
                                                                const std::optional<at::Tensor>&)>();
  for (int64_t n : {1, 7, 8, 9, 40, 41}) {
    INFO("out_features " << n);
    const auto x = torch::randn({3, 5});
    const auto saved = std::get<1>(linear_forward.call(x, torch::randn({n, 5}), torch::randn({n}), "gelu"));
    CHECK(saved.size(1) == ampkit_kernels::linear_aux_ld(n));
    const GemmArgs plan = ampkit_kernels::linear_forward_gemm({3, 5, n}, kDtype, LinearActivation::Gelu, true, true,
                                                              x.data_ptr(), x.data_ptr(), x.data_ptr(), nullptr,
                                                              saved.data_ptr());
    CHECK(plan.ld_aux == saved.size(1));
    const auto pre = std::get<2>(mlp_forward.call(x, torch::randn({n, 5}), std::nullopt, torch::randn({2, n}), std::nullopt));
    CHECK(pre.size(1) == ampkit_kernels::linear_aux_ld(n));
  }
}
