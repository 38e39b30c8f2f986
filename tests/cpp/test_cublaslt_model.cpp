// The host model of cuBLASLt (cublaslt_model.h) against hand-computed 2x3 examples, one per
// epilogue, and its refusals: so the plan tests (test_linear_gemm_plans.cpp) do not rest on a model
// that only agrees with itself.
//
// The example: D is m = 2 x n = 3, k = 2, every matrix written out row by row:
//   A = [ 1 2 ; -1 1 ],  B = [ 1 0 -1 ; 0 1 1 ],  P = A B = [ 1 2 1 ; -1 1 2 ],  bias = [ -1 ; 0.5 ]
//   P + bias = [ 0 1 0 ; -0.5 1.5 2.5 ]
// GELU values (tanh form, computed once in double precision and written down here):
//   gelu(1) = 0.8411919906, gelu(2) = 1.9545976941, gelu(-1) = -0.1588080094, gelu(-0.5) = -0.1542859902,
//   gelu(1.5) = 1.3995715770, gelu(2.5) = 2.4849157339;  gelu'(0) = 0.5, gelu'(1) = 1.0829640838,
//   gelu'(-1) = -0.0829640838, gelu'(2) = 1.0860992566, gelu'(-2) = -0.0860992566, gelu'(0.5) = 0.8673699035.
#include "test_helpers.h"

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "cublaslt_model.h"

using ampkit_kernels::DType;
using ampkit_kernels::GemmArgs;
using ampkit_kernels::GemmEpilogue;
using ampkit_test::lt_model::Memory;
namespace lt_model = ampkit_test::lt_model;

namespace {

using Rows = std::vector<std::vector<float>>;

// A column-major rows x cols matrix with leading dimension ld, from its rows; padding stays unwritten.
float* col_major(Memory& memory, const std::string& name, const Rows& rows, int64_t ld) {
  const int64_t r = static_cast<int64_t>(rows.size()), c = static_cast<int64_t>(rows[0].size());
  float* p = memory.alloc(name, static_cast<size_t>(ld * c));
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) memory.store(p, i + j * ld, rows[i][j]);
  return p;
}

// Element (i, j) of a column-major matrix, as written by the model (REQUIREs it was written).
float at(const Memory& memory, const float* p, int64_t i, int64_t j, int64_t ld) {
  REQUIRE(memory.written(p, i + j * ld));
  return p[i + j * ld];
}

void check_matrix(const Memory& memory, const float* p, int64_t ld, const Rows& expected) {
  for (size_t i = 0; i < expected.size(); ++i)
    for (size_t j = 0; j < expected[i].size(); ++j) {
      INFO("element (" << i << ", " << j << ")");
      CHECK(at(memory, p, static_cast<int64_t>(i), static_cast<int64_t>(j), ld) ==
            Approx(expected[i][j]).margin(1e-6).epsilon(1e-6));
    }
}

void check_vector(const Memory& memory, const float* p, const std::vector<float>& expected) {
  for (size_t i = 0; i < expected.size(); ++i) {
    INFO("element " << i);
    REQUIRE(memory.written(p, static_cast<int64_t>(i)));
    CHECK(p[i] == Approx(expected[i]).margin(1e-6).epsilon(1e-6));
  }
}

const Rows kA = {{1, 2}, {-1, 1}};
const Rows kB = {{1, 0, -1}, {0, 1, 1}};
const Rows kP = {{1, 2, 1}, {-1, 1, 2}};
const std::vector<float> kBias = {-1.0f, 0.5f};

// The example's plan with A, B, D (ldd = 3: one padding row), fp32 everywhere.
struct Example {
  Memory memory;
  GemmArgs args;
  float* d = nullptr;
  Example() {
    args.m = 2;
    args.n = 3;
    args.k = 2;
    args.ab_dtype = args.d_dtype = DType::Float32;
    args.a = col_major(memory, "A", kA, 2);
    args.lda = 2;
    args.b = col_major(memory, "B", kB, 2);
    args.ldb = 2;
    d = memory.alloc("D", 9);
    args.d = d;
    args.ldd = 3;
  }
  float* bias() {
    float* p = memory.alloc("bias", 2);
    memory.fill(p, kBias);
    return p;
  }
};

}  // namespace

TEST_CASE("cuBLASLt model: plain and activation epilogues on the 2x3 example", "[lt_model]") {
  const float g1 = 0.8411919906f, g2 = 1.9545976941f, gm1 = -0.1588080094f;
  struct Case {
    GemmEpilogue epilogue;
    bool bias;
    Rows expected;
  };
  const Case cases[] = {
      {GemmEpilogue::None, false, kP},
      {GemmEpilogue::Relu, false, {{1, 2, 1}, {0, 1, 2}}},
      {GemmEpilogue::Gelu, false, {{g1, g2, g1}, {gm1, g1, g2}}},
      {GemmEpilogue::Bias, true, {{0, 1, 0}, {-0.5f, 1.5f, 2.5f}}},
      {GemmEpilogue::BiasRelu, true, {{0, 1, 0}, {0, 1.5f, 2.5f}}},
      {GemmEpilogue::BiasGelu, true, {{0, g1, 0}, {-0.1542859902f, 1.3995715770f, 2.4849157339f}}},
  };
  for (const Case& c : cases) {
    INFO("epilogue " << static_cast<int>(c.epilogue));
    Example ex;
    ex.args.epilogue = c.epilogue;
    if (c.bias) ex.args.bias = ex.bias();
    const lt_model::Outcome outcome = lt_model::run(ex.args, ex.memory);
    INFO(outcome.error);
    REQUIRE(outcome.ok());
    check_matrix(ex.memory, ex.d, 3, c.expected);
    for (int64_t j = 0; j < 3; ++j) {  // D's padding row: untouched, NaN
      CHECK_FALSE(ex.memory.written(ex.d, 2 + j * 3));
      CHECK(std::isnan(ex.d[2 + j * 3]));
    }
  }
}

TEST_CASE("cuBLASLt model: GELU_AUX(_BIAS) save the GELU input in aux (ld_aux 8), padding unwritten", "[lt_model]") {
  for (const bool with_bias : {false, true}) {
    Example ex;
    ex.args.epilogue = with_bias ? GemmEpilogue::BiasGeluAux : GemmEpilogue::GeluAux;
    if (with_bias) ex.args.bias = ex.bias();
    float* aux = ex.memory.alloc("aux", 24);
    ex.args.aux = aux;
    ex.args.ld_aux = 8;
    const lt_model::Outcome outcome = lt_model::run(ex.args, ex.memory);
    INFO(outcome.error);
    REQUIRE(outcome.ok());
    const Rows pre = with_bias ? Rows{{0, 1, 0}, {-0.5f, 1.5f, 2.5f}} : kP;
    check_matrix(ex.memory, aux, 8, pre);
    const Rows out = with_bias ? Rows{{0, 0.8411919906f, 0}, {-0.1542859902f, 1.3995715770f, 2.4849157339f}}
                               : Rows{{0.8411919906f, 1.9545976941f, 0.8411919906f},
                                      {-0.1588080094f, 0.8411919906f, 1.9545976941f}};
    check_matrix(ex.memory, ex.d, 3, out);
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t i = 2; i < 8; ++i) CHECK(std::isnan(aux[i + j * 8]));
  }
}

TEST_CASE("cuBLASLt model: DGELU and DGELU_BGRAD", "[lt_model]") {
  const Rows aux_rows = {{0, 1, -1}, {2, -2, 0.5f}};
  const Rows expected = {{1 * 0.5f, 2 * 1.0829640838f, 1 * -0.0829640838f},
                         {-1 * 1.0860992566f, 1 * -0.0860992566f, 2 * 0.8673699035f}};
  for (const bool bgrad : {false, true}) {
    Example ex;
    ex.args.epilogue = bgrad ? GemmEpilogue::DGeluBGrad : GemmEpilogue::DGelu;
    ex.args.aux = col_major(ex.memory, "aux", aux_rows, 8);  // rows 2..7 of each column: never written
    ex.args.ld_aux = 8;
    float* bias_grad = nullptr;
    if (bgrad) {
      bias_grad = ex.memory.alloc("bias_grad", 2);
      ex.args.bias_grad = bias_grad;
    }
    const lt_model::Outcome outcome = lt_model::run(ex.args, ex.memory);
    INFO(outcome.error);
    REQUIRE(outcome.ok());
    check_matrix(ex.memory, ex.d, 3, expected);
    // Row sums of D: 0.5 + 2.1659281677 - 0.0829640838, -1.0860992566 - 0.0860992566 + 1.7347398071.
    if (bgrad) check_vector(ex.memory, bias_grad, {2.5829640838f, 0.5625412938f});
  }
}

TEST_CASE("cuBLASLt model: BGRADB sums op(B) over k, with and without transpose_b", "[lt_model]") {
  for (const bool transposed : {false, true}) {
    Example ex;
    if (transposed) {  // B stored n x k = 3 x 2 (= B^T), ldb 4: one padding row
      ex.args.transpose_b = true;
      ex.args.b = col_major(ex.memory, "Bt", {{1, 0}, {0, 1}, {-1, 1}}, 4);
      ex.args.ldb = 4;
    }
    ex.args.epilogue = GemmEpilogue::BGradB;
    float* bias_grad = ex.memory.alloc("bias_grad", 3);
    ex.args.bias_grad = bias_grad;
    const lt_model::Outcome outcome = lt_model::run(ex.args, ex.memory);
    INFO(outcome.error);
    REQUIRE(outcome.ok());
    check_matrix(ex.memory, ex.d, 3, kP);
    check_vector(ex.memory, bias_grad, {1, 1, 0});  // column sums of B = [1 0 -1 ; 0 1 1]
  }
}

TEST_CASE("cuBLASLt model: transpose_a with a padded lda, and alpha before the bias", "[lt_model]") {
  {
    Example ex;
    ex.args.transpose_a = true;  // A stored k x m = 2 x 2 (= A^T), lda 3
    ex.args.a = col_major(ex.memory, "At", {{1, -1}, {2, 1}}, 3);
    ex.args.lda = 3;
    const lt_model::Outcome outcome = lt_model::run(ex.args, ex.memory);
    INFO(outcome.error);
    REQUIRE(outcome.ok());
    check_matrix(ex.memory, ex.d, 3, kP);
  }
  {
    Example ex;
    ex.args.alpha = 0.5f;
    ex.args.epilogue = GemmEpilogue::Bias;
    ex.args.bias = ex.bias();
    const lt_model::Outcome outcome = lt_model::run(ex.args, ex.memory);
    INFO(outcome.error);
    REQUIRE(outcome.ok());
    check_matrix(ex.memory, ex.d, 3, {{-0.5f, 0, -0.5f}, {0, 1, 1.5f}});  // 0.5 P + bias
  }
}

TEST_CASE("cuBLASLt model: refuses what cuBLASLt (or a sound plan) would not do", "[lt_model]") {
  auto refuses = [](const std::function<void(Example&)>& change, const std::string& needle) {
    Example ex;
    change(ex);
    const lt_model::Outcome outcome = lt_model::run(ex.args, ex.memory);
    INFO("error: '" << outcome.error << "', expected to contain '" << needle << "'");
    return !outcome.ok() && outcome.error.find(needle) != std::string::npos;
  };
  {
    Example ex;  // the example itself runs
    CHECK(lt_model::run(ex.args, ex.memory).ok());
  }
  CHECK(refuses([](Example& ex) { ex.args.lda = 1; }, "lda"));
  CHECK(refuses([](Example& ex) { ex.args.transpose_b = true; }, "ldb"));  // stored 3 x 2 needs ldb >= 3
  CHECK(refuses([](Example& ex) { ex.args.ldd = 1; }, "ldd"));
  CHECK(refuses([](Example& ex) { ex.args.k = 0; }, "must be >= 1"));
  CHECK(refuses([](Example& ex) { ex.args.d = nullptr; }, "must not be null"));
  CHECK(refuses([](Example& ex) { ex.args.epilogue = GemmEpilogue::Bias; }, "bias is null"));
  CHECK(refuses([](Example& ex) { ex.args.bias = ex.bias(); }, "bias is set"));
  CHECK(refuses([](Example& ex) { ex.args.epilogue = GemmEpilogue::BGradB; }, "bias_grad is null"));
  CHECK(refuses([](Example& ex) { ex.args.epilogue = GemmEpilogue::GeluAux; }, "aux is null"));
  CHECK(refuses(
      [](Example& ex) {
        ex.args.epilogue = GemmEpilogue::GeluAux;
        ex.args.aux = ex.memory.alloc("aux", 24);
        ex.args.ld_aux = 4;  // >= m but not a multiple of 8
      },
      "multiple of 8"));
  CHECK(refuses(
      [](Example& ex) {
        ex.args.epilogue = GemmEpilogue::GeluAux;
        ex.args.aux = ex.memory.alloc("aux", 8);
        ex.args.ld_aux = 8;  // the 2 x 3 aux needs 18 elements
      },
      "runs past its buffer"));
  CHECK(refuses([](Example& ex) { ex.args.ldd = 4; }, "runs past its buffer"));  // D is 9 elements
  CHECK(refuses(
      [](Example& ex) {  // D written over B (2 x 3, ld 2: fits B's buffer exactly)
        ex.args.d = const_cast<void*>(ex.args.b);
        ex.args.ldd = 2;
      },
      "D overlaps B"));
  CHECK(refuses(
      [](Example& ex) {
        ex.args.a = ex.memory.alloc("A unwritten", 4);  // allocated, never filled: poison
      },
      "never written"));
  CHECK(refuses(
      [](Example& ex) {  // DGELU reading an aux padding row: ld_aux 8 but the aux data is 2 rows of an 8-row
        ex.args.m = 3;   // column; with m = 3 the third row is padding (and D/A grow accordingly)
        ex.args.a = col_major(ex.memory, "A3", {{1, 2}, {-1, 1}, {0, 0}}, 3);
        ex.args.lda = 3;
        ex.args.epilogue = GemmEpilogue::DGelu;
        ex.args.aux = col_major(ex.memory, "aux", {{0, 1, -1}, {2, -2, 0.5f}}, 8);
        ex.args.ld_aux = 8;
      },
      "never written"));
}

// ---- the heuristic preference (gemm_preference.h), which cublaslt_gemm sets as given ----

TEST_CASE("GEMM preference: split-K partial sums stay in fp32 for every output dtype", "[lt_model][lt_preference]") {
  using ampkit_kernels::kReductionComputeType;
  using ampkit_kernels::kReductionInPlace;
  using ampkit_kernels::kReductionNone;
  using ampkit_kernels::kReductionOutputType;
  alignas(256) static unsigned char buffer[4096] = {};
  for (const DType dtype : {DType::Float16, DType::BFloat16, DType::Float32}) {
    INFO("dtype " << static_cast<int>(dtype));
    GemmArgs args;
    args.m = args.n = args.k = 8;
    args.ab_dtype = args.d_dtype = dtype;
    args.a = buffer;
    args.b = buffer + 1024;
    args.d = buffer + 2048;
    args.lda = args.ldb = args.ldd = 8;
    args.workspace = buffer + 3072;
    args.workspace_bytes = 1024;
    const ampkit_kernels::GemmPreference pref = ampkit_kernels::gemm_preference(args);
    // cublasLt.h: INPLACE reduces in the output buffer and type, OUTPUT_TYPE keeps intermediate
    // results in the output type; with an fp16/bf16 D both round partial sums to 16 bits.
    if (dtype != DType::Float32) {
      CHECK((pref.reduction_scheme_mask & kReductionInPlace) == 0);
      CHECK((pref.reduction_scheme_mask & kReductionOutputType) == 0);
      CHECK(pref.reduction_scheme_mask == kReductionComputeType);
      CHECK_FALSE(ampkit_kernels::reduction_scheme_allowed(pref, kReductionInPlace));
      CHECK_FALSE(ampkit_kernels::reduction_scheme_allowed(pref, kReductionOutputType));
    } else {
      CHECK(pref.reduction_scheme_mask == ampkit_kernels::kReductionAll);  // output type = compute type = fp32
    }
    CHECK(ampkit_kernels::reduction_scheme_allowed(pref, kReductionNone));  // no split-K: one sequence
    CHECK(ampkit_kernels::reduction_scheme_allowed(pref, kReductionComputeType));
    CHECK_FALSE(ampkit_kernels::reduction_scheme_allowed(pref, 8));  // not a cublasLtReductionScheme_t
    CHECK(pref.max_workspace_bytes == 1024);
    const lt_model::Outcome outcome = lt_model::check_preference(args, pref);
    INFO(outcome.error);
    CHECK(outcome.ok());
  }
}

TEST_CASE("GEMM preference: alignments are the operands' own, and the model refuses unsound preferences",
          "[lt_model][lt_preference]") {
  alignas(256) static unsigned char buffer[4096] = {};
  GemmArgs args;
  args.m = args.n = args.k = 8;
  args.a = buffer + 2;     // a view one fp16 element into an allocation
  args.b = buffer + 1040;  // 16-byte aligned
  args.d = buffer + 2048;  // 256-byte aligned
  args.lda = args.ldb = args.ldd = 8;
  const ampkit_kernels::GemmPreference built = ampkit_kernels::gemm_preference(args);
  CHECK(built.min_alignment_a == 2);
  CHECK(built.min_alignment_b == 16);
  CHECK(built.min_alignment_c == 256);
  CHECK(built.min_alignment_d == 256);
  CHECK(built.max_workspace_bytes == 0);
  REQUIRE(lt_model::check_preference(args, built).ok());

  auto refused = [&](const std::function<void(ampkit_kernels::GemmPreference&)>& change, const std::string& needle) {
    ampkit_kernels::GemmPreference pref = built;
    change(pref);
    const lt_model::Outcome outcome = lt_model::check_preference(args, pref);
    INFO("error: '" << outcome.error << "', expected to contain '" << needle << "'");
    return !outcome.ok() && outcome.error.find(needle) != std::string::npos;
  };
  // cuBLASLt's default mask (all schemes) and each 16-bit-accumulating scheme alone, for fp16 and bf16 D.
  for (const DType dtype : {DType::Float16, DType::BFloat16}) {
    args.ab_dtype = args.d_dtype = dtype;
    CHECK(refused([](auto& p) { p.reduction_scheme_mask = ampkit_kernels::kReductionAll; }, "INPLACE or OUTPUT_TYPE"));
    CHECK(refused([](auto& p) { p.reduction_scheme_mask = ampkit_kernels::kReductionInPlace; }, "16-bit"));
    CHECK(refused([](auto& p) { p.reduction_scheme_mask = ampkit_kernels::kReductionOutputType; }, "16-bit"));
    CHECK(lt_model::check_preference(args, built).ok());
  }
  args.ab_dtype = args.d_dtype = DType::Float32;  // fp32 D: every scheme accumulates in fp32
  CHECK_FALSE(refused([](auto& p) { p.reduction_scheme_mask = ampkit_kernels::kReductionAll; }, "16-bit"));
  CHECK(refused([](auto& p) { p.reduction_scheme_mask = 0x9; }, "outside cublasLtReductionScheme_t"));
  CHECK(refused([](auto& p) { p.max_workspace_bytes = 32; }, "max_workspace_bytes 32 > the workspace passed"));
  CHECK(refused([](auto& p) { p.min_alignment_a = 256; }, "min_alignment_A 256 claims more"));  // cuBLASLt's default
  CHECK(refused([](auto& p) { p.min_alignment_b = 32; }, "min_alignment_B 32 claims more"));
  CHECK(refused([](auto& p) { p.min_alignment_d = 24; }, "not a power of two"));
  // And through run(): the 2x3 example with a 16-bit-reducing preference does not run.
  Example ex;
  ampkit_kernels::GemmPreference pref = ampkit_kernels::gemm_preference(ex.args);
  REQUIRE(lt_model::run(ex.args, ex.memory, pref).ok());
  ex.args.ab_dtype = ex.args.d_dtype = DType::BFloat16;
  pref.reduction_scheme_mask = ampkit_kernels::kReductionAll;
  const lt_model::Outcome outcome = lt_model::run(ex.args, ex.memory, pref);
  CHECK(outcome.error.rfind("preference: ", 0) == 0);
}
