// A host model of cuBLASLt's documented matmul semantics, for tests only: it executes a GemmArgs
// (kernels/include/ampkit_kernels/gemm_types.h) on host float buffers, so the GEMM plans the
// fused_linear glue builds can be checked on the CPU, in builds without CUDA.
//
// Every dtype is modelled as float32 (products accumulated in float, like CUBLAS_COMPUTE_32F). The
// model is strict on purpose: it refuses what cuBLASLt documents as invalid and, beyond that, what
// would only be a silent bug in a plan (a pointer the epilogue ignores, a read of memory nobody
// wrote, a matrix that runs past its buffer). check_preference does the same for the heuristic
// preference (kernels/include/ampkit_kernels/gemm_preference.h): workspace, split-K reduction
// scheme mask (partial sums must stay in fp32), minimum alignments.
//
// Source (paraphrased below, per rule): the cuBLAS library documentation, cuBLASLt API reference
// (https://docs.nvidia.com/cuda/cublas/ : cublasLtMatmul, cublasLtMatrixLayoutAttribute_t,
// cublasLtMatmulDescAttributes_t, cublasLtEpilogue_t, cublasLtMatmulPreferenceAttributes_t,
// cublasLtReductionScheme_t), whose text is also the doc comments of
// cublasLt.h in the CUDA 13.0 toolkit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "ampkit_kernels/gemm_preference.h"
#include "ampkit_kernels/gemm_types.h"

namespace ampkit_test::lt_model {

using ampkit_kernels::DType;
using ampkit_kernels::GemmArgs;
using ampkit_kernels::GemmEpilogue;
using ampkit_kernels::GemmPreference;

// GELU, tanh approximation (the form cuBLASLt's GELU epilogues and torch's gelu(approximate="tanh")
// use): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), and its derivative. The model runs them in
// float; the plan tests' reference runs them in double.
template <typename Real>
Real gelu_tanh(Real x) {
  const Real c = static_cast<Real>(0.7978845608028654);  // sqrt(2 / pi)
  const Real k = static_cast<Real>(0.044715);
  return Real(0.5) * x * (Real(1) + std::tanh(c * (x + k * x * x * x)));
}
template <typename Real>
Real gelu_tanh_grad(Real x) {
  const Real c = static_cast<Real>(0.7978845608028654);
  const Real k = static_cast<Real>(0.044715);
  const Real t = std::tanh(c * (x + k * x * x * x));
  return Real(0.5) * (Real(1) + t) + Real(0.5) * x * (Real(1) - t * t) * c * (Real(1) + Real(3) * k * x * x);
}

// The model's "device memory": named host buffers of floats, each element with a written flag.
// A fresh buffer is all NaN and unwritten (poison); `fill` and the model's stores write elements.
class Memory {
 public:
  float* alloc(const std::string& name, size_t count) {
    auto buffer = std::make_unique<Buffer>();
    buffer->name = name;
    buffer->data.assign(count, std::numeric_limits<float>::quiet_NaN());
    buffer->written.assign(count, false);
    buffers_.push_back(std::move(buffer));
    return buffers_.back()->data.data();
  }

  // Writes values[i] to p[i] (p inside a buffer), marking them written.
  void fill(float* p, const std::vector<float>& values) {
    for (size_t i = 0; i < values.size(); ++i) store(p, static_cast<int64_t>(i), values[i]);
  }

  // Element p[i] as the model reads it: an error if nobody wrote it (poison) or it is out of bounds.
  float load(const void* p, int64_t i, const char* what) const {
    const Buffer& buffer = owner(p, i, what);
    const size_t index = static_cast<size_t>(static_cast<const float*>(p) + i - buffer.data.data());
    if (!buffer.written[index]) {
      std::ostringstream message;
      message << what << " reads element " << index << " of buffer '" << buffer.name
              << "', which was never written (padding or poison)";
      throw Error(message.str());
    }
    return buffer.data[index];
  }

  void store(const void* p, int64_t i, float value) {
    Buffer& buffer = owner(p, i, "store");
    const size_t index = static_cast<size_t>(static_cast<const float*>(p) + i - buffer.data.data());
    buffer.data[index] = value;
    buffer.written[index] = true;
  }

  // Back to NaN and unwritten.
  void poison(const void* p, int64_t i) {
    Buffer& buffer = owner(p, i, "poison");
    const size_t index = static_cast<size_t>(static_cast<const float*>(p) + i - buffer.data.data());
    buffer.data[index] = std::numeric_limits<float>::quiet_NaN();
    buffer.written[index] = false;
  }

  bool written(const void* p, int64_t i) const {
    const Buffer& buffer = owner(p, i, "written");
    return buffer.written[static_cast<size_t>(static_cast<const float*>(p) + i - buffer.data.data())];
  }

  // Elements [p, p + count) lie in one buffer.
  bool contains(const void* p, int64_t count) const {
    if (count <= 0) return true;
    const Buffer* first = find(p);
    return first != nullptr && first == find(static_cast<const float*>(p) + count - 1);
  }

  std::string name_of(const void* p) const {
    const Buffer* buffer = find(p);
    return buffer != nullptr ? buffer->name : std::string("(no buffer)");
  }

  struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
  };

 private:
  struct Buffer {
    std::string name;
    std::vector<float> data;
    std::vector<bool> written;
  };

  // (Buffers are owned through unique_ptr, so a const Memory can still hand out a mutable Buffer;
  // only the non-const members write through it.)
  Buffer* find(const void* p) const {
    const auto* address = static_cast<const float*>(p);
    for (const auto& buffer : buffers_) {
      const float* begin = buffer->data.data();
      if (address >= begin && address < begin + buffer->data.size()) return buffer.get();
    }
    return nullptr;
  }

  Buffer& owner(const void* p, int64_t i, const char* what) const {
    Buffer* buffer = find(static_cast<const float*>(p) + i);
    if (buffer == nullptr || buffer != find(p)) {
      std::ostringstream message;
      message << what << ": element " << i << " from " << p << " is outside every buffer (from '" << name_of(p)
              << "')";
      throw Error(message.str());
    }
    return *buffer;
  }

  std::vector<std::unique_ptr<Buffer>> buffers_;
};

struct Outcome {
  std::string error;  // empty: the GEMM ran
  bool ok() const { return error.empty(); }
};

namespace detail {

inline bool reads_bias(GemmEpilogue e) {
  return e == GemmEpilogue::Bias || e == GemmEpilogue::BiasRelu || e == GemmEpilogue::BiasGelu ||
         e == GemmEpilogue::BiasGeluAux;
}
inline bool writes_bias_grad(GemmEpilogue e) { return e == GemmEpilogue::DGeluBGrad || e == GemmEpilogue::BGradB; }
inline bool writes_aux(GemmEpilogue e) { return e == GemmEpilogue::BiasGeluAux || e == GemmEpilogue::GeluAux; }
inline bool reads_aux(GemmEpilogue e) { return e == GemmEpilogue::DGelu || e == GemmEpilogue::DGeluBGrad; }

// Elements a column-major rows x cols matrix with leading dimension ld spans from its first element.
inline int64_t footprint(int64_t rows, int64_t cols, int64_t ld) { return (cols - 1) * ld + rows; }

struct Range {
  const float* begin;
  const float* end;
  const char* name;
};
inline bool overlap(const Range& x, const Range& y) { return x.begin < y.end && y.begin < x.end; }

[[noreturn]] inline void fail(const std::string& message) { throw Memory::Error(message); }

}  // namespace detail

// The heuristic preference (cublasLtMatmulPreferenceAttributes_t) that would be used for `args`,
// against what cublasLt.h documents for each attribute; the first violated rule, or ok.
inline Outcome check_preference(const GemmArgs& args, const GemmPreference& pref) {
  using ampkit_kernels::kMaxAlignmentBytes;
  using ampkit_kernels::kReductionAll;
  using ampkit_kernels::kReductionInPlace;
  using ampkit_kernels::kReductionOutputType;
  // MAX_WORKSPACE_BYTES: the "maximum allowed workspace size in bytes" the chosen algorithm may
  // use; cublasLtMatmul gets the workspace it may use (workspace, workspaceSizeInBytes), so a larger
  // preference lets the heuristic pick an algorithm that needs more than the call provides.
  if (pref.max_workspace_bytes > args.workspace_bytes)
    return {"max_workspace_bytes " + std::to_string(pref.max_workspace_bytes) + " > the workspace passed, " +
            std::to_string(args.workspace_bytes) + " bytes"};
  // REDUCTION_SCHEME_MASK: bits of cublasLtReductionScheme_t. INPLACE reduces "using the output
  // buffer (and output data type)", OUTPUT_TYPE stores intermediate results "in output type";
  // only COMPUTE_TYPE keeps them in the compute type (fp32 here). With a 16-bit D, a mask that admits
  // INPLACE or OUTPUT_TYPE lets split-K partial sums be rounded to 16 bits: not fp32 accumulation.
  if ((pref.reduction_scheme_mask & ~kReductionAll) != 0)
    return {"reduction_scheme_mask " + std::to_string(pref.reduction_scheme_mask) +
            " has bits outside cublasLtReductionScheme_t (0x7)"};
  if (args.d_dtype != DType::Float32 && (pref.reduction_scheme_mask & (kReductionInPlace | kReductionOutputType)) != 0)
    return {"reduction_scheme_mask " + std::to_string(pref.reduction_scheme_mask) +
            " admits INPLACE or OUTPUT_TYPE split-K reduction, which adds partial sums in D's 16-bit type"};
  // MIN_ALIGNMENT_{A,B,C,D}_BYTES (default 256): "Selecting a smaller value will exclude algorithms
  // that can not work with matrix A that is not as strictly aligned as they need", so the value
  // must not exceed the buffer's real alignment (C is D: beta = 0 and the wrapper passes D as C).
  const struct {
    const char* name;
    uint32_t preference;
    const void* pointer;
  } alignments[] = {{"A", pref.min_alignment_a, args.a},
                    {"B", pref.min_alignment_b, args.b},
                    {"C", pref.min_alignment_c, args.d},
                    {"D", pref.min_alignment_d, args.d}};
  for (const auto& a : alignments) {
    const uint32_t value = a.preference;
    if (value == 0 || (value & (value - 1)) != 0 || value > kMaxAlignmentBytes)
      return {std::string("min_alignment_") + a.name + " " + std::to_string(value) +
              " is not a power of two <= 256"};
    if (reinterpret_cast<uintptr_t>(a.pointer) % value != 0)
      return {std::string("min_alignment_") + a.name + " " + std::to_string(value) +
              " claims more than the buffer's alignment"};
  }
  return {};
}

// Executes `args` on `memory` as cuBLASLt documents it; returns the first violated rule instead.
inline Outcome run(const GemmArgs& args, Memory& memory) {
  using namespace detail;
  try {
    const GemmEpilogue e = args.epilogue;
    // --- argument checks ---
    // The wrapper's contract (kernels/src/cublaslt_gemm.cpp): empty problems are the caller's.
    if (args.m < 1 || args.n < 1 || args.k < 1) fail("m, n and k must be >= 1");
    if (args.a == nullptr || args.b == nullptr || args.d == nullptr) fail("A, B and D must not be null");
    // The wrapper's dtype rules: fp32 A/B need an fp32 D; otherwise D is A/B's type or fp32.
    if (args.ab_dtype == DType::Float32 && args.d_dtype != DType::Float32) fail("fp32 A/B need an fp32 D");
    if (args.d_dtype != DType::Float32 && args.d_dtype != args.ab_dtype) fail("D must be fp32 or A/B's type");
    // cublasLtMatrixLayoutAttribute_t, LD: for column order the column stride must keep columns from
    // overlapping, i.e. ld >= the stored matrix's rows. A and B are described as stored (before op()):
    // op(A) = m x k, so A is stored k x m when transposed; op(B) = k x n, so B is stored n x k then.
    const int64_t a_rows = args.transpose_a ? args.k : args.m, a_cols = args.transpose_a ? args.m : args.k;
    const int64_t b_rows = args.transpose_b ? args.n : args.k, b_cols = args.transpose_b ? args.k : args.n;
    if (args.lda < a_rows) fail("lda " + std::to_string(args.lda) + " < rows of A as stored " + std::to_string(a_rows));
    if (args.ldb < b_rows) fail("ldb " + std::to_string(args.ldb) + " < rows of B as stored " + std::to_string(b_rows));
    if (args.ldd < args.m) fail("ldd " + std::to_string(args.ldd) + " < m " + std::to_string(args.m));
    // Epilogue inputs/outputs: each epilogue that takes a buffer needs it; the model also refuses a
    // buffer the epilogue would ignore (cuBLASLt would ignore it silently: a plan bug).
    if (reads_bias(e) != (args.bias != nullptr))
      fail(reads_bias(e) ? "the epilogue adds a bias but bias is null" : "bias is set but the epilogue adds none");
    if (writes_bias_grad(e) != (args.bias_grad != nullptr))
      fail(writes_bias_grad(e) ? "the epilogue writes a bias gradient but bias_grad is null"
                               : "bias_grad is set but the epilogue writes none");
    const bool uses_aux = writes_aux(e) || reads_aux(e);
    if (uses_aux != (args.aux != nullptr))
      fail(uses_aux ? "the epilogue uses aux but aux is null" : "aux is set but the epilogue uses none");
    // cublasLtMatmulDescAttributes_t, EPILOGUE_AUX_LD: the GELU-input matrix's leading dimension must
    // be divisible by 8 and at least the number of rows of the output matrix.
    if (uses_aux && (args.ld_aux < args.m || args.ld_aux % 8 != 0))
      fail("ld_aux " + std::to_string(args.ld_aux) + " must be >= m " + std::to_string(args.m) +
           " and a multiple of 8");
    if (!uses_aux && args.ld_aux != 0) fail("ld_aux is set but the epilogue uses no aux");
    // The bias-gradient epilogues do not document whether alpha scales the gradient: refuse to guess.
    if (writes_bias_grad(e) && args.alpha != 1.0f) fail("the model runs bias-gradient epilogues with alpha = 1 only");
    if (args.workspace_bytes > 0 && args.workspace == nullptr) fail("workspace_bytes > 0 with a null workspace");

    // --- extents: every operand within one buffer; outputs overlap nothing else ---
    const auto* a = static_cast<const float*>(args.a);
    const auto* b = static_cast<const float*>(args.b);
    auto* d = static_cast<float*>(args.d);
    const auto* bias = static_cast<const float*>(args.bias);
    auto* bias_grad = static_cast<float*>(args.bias_grad);
    auto* aux = static_cast<float*>(args.aux);
    // BGRADB's gradient has one element per column of D; the others one per row (BIAS_POINTER: the bias
    // vector length matches D's rows; BGRADB: "the bias size corresponds to the number of columns of D").
    const int64_t bias_grad_count = e == GemmEpilogue::BGradB ? args.n : args.m;
    std::vector<Range> inputs = {{a, a + footprint(a_rows, a_cols, args.lda), "A"},
                                 {b, b + footprint(b_rows, b_cols, args.ldb), "B"}};
    std::vector<Range> outputs = {{d, d + footprint(args.m, args.n, args.ldd), "D"}};
    if (bias) inputs.push_back({bias, bias + args.m, "bias"});
    if (aux && reads_aux(e)) inputs.push_back({aux, aux + footprint(args.m, args.n, args.ld_aux), "aux"});
    if (aux && writes_aux(e)) outputs.push_back({aux, aux + footprint(args.m, args.n, args.ld_aux), "aux"});
    if (bias_grad) outputs.push_back({bias_grad, bias_grad + bias_grad_count, "bias_grad"});
    for (const auto* list : {&inputs, &outputs}) {
      for (const Range& r : *list) {
        if (!memory.contains(r.begin, r.end - r.begin))
          fail(std::string(r.name) + " (" + std::to_string(r.end - r.begin) + " elements) runs past its buffer '" +
               memory.name_of(r.begin) + "'");
      }
    }
    for (size_t i = 0; i < outputs.size(); ++i) {
      for (const Range& r : inputs)
        if (overlap(outputs[i], r)) fail(std::string(outputs[i].name) + " overlaps " + r.name);
      for (size_t j = i + 1; j < outputs.size(); ++j)
        if (overlap(outputs[i], outputs[j])) fail(std::string(outputs[i].name) + " overlaps " + outputs[j].name);
    }

    // --- poison what this GEMM writes, so padding it skips stays NaN and unwritten ---
    for (const Range& r : outputs)
      for (const float* p = r.begin; p < r.end; ++p) memory.poison(p, 0);

    // --- D = epilogue(alpha * op(A) * op(B)) (cublasLtMatmul with beta = 0: C is not read) ---
    auto op_a = [&](int64_t i, int64_t l) {
      return args.transpose_a ? memory.load(a, l + i * args.lda, "A") : memory.load(a, i + l * args.lda, "A");
    };
    auto op_b = [&](int64_t l, int64_t j) {
      return args.transpose_b ? memory.load(b, j + l * args.ldb, "B") : memory.load(b, l + j * args.ldb, "B");
    };
    std::vector<float> result(static_cast<size_t>(args.m * args.n));
    for (int64_t j = 0; j < args.n; ++j) {
      for (int64_t i = 0; i < args.m; ++i) {
        float acc = 0.0f;
        for (int64_t l = 0; l < args.k; ++l) acc += op_a(i, l) * op_b(l, j);
        float v = args.alpha * acc;
        float out = v;
        switch (e) {
          case GemmEpilogue::None: break;  // EPILOGUE_DEFAULT: no postprocessing
          // BIAS: the bias vector (one element per row of D) is broadcast to all columns and added
          // before the final postprocessing; *_BIAS variants apply the bias, then the activation.
          case GemmEpilogue::Bias: out = v + memory.load(bias, i, "bias"); break;
          case GemmEpilogue::BiasRelu: out = std::max(v + memory.load(bias, i, "bias"), 0.0f); break;
          case GemmEpilogue::BiasGelu: out = gelu_tanh(v + memory.load(bias, i, "bias")); break;
          // RELU / GELU: point-wise x := max(x, 0) / x := GELU(x) on the results.
          case GemmEpilogue::Relu: out = std::max(v, 0.0f); break;
          case GemmEpilogue::Gelu: out = gelu_tanh(v); break;
          // GELU_AUX(_BIAS): as GELU(_BIAS), and the GELU input (after the bias) is written to the aux
          // matrix (m x n, leading dimension EPILOGUE_AUX_LD).
          case GemmEpilogue::BiasGeluAux:
          case GemmEpilogue::GeluAux: {
            const float pre = e == GemmEpilogue::BiasGeluAux ? v + memory.load(bias, i, "bias") : v;
            memory.store(aux, i + j * args.ld_aux, pre);
            out = gelu_tanh(pre);
            break;
          }
          // DGELU(_BGRAD): the GELU gradient applied to the matmul output, reading the GELU input
          // from aux (the forward's GELU_AUX matrix): D = (alpha op(A) op(B)) * gelu'(aux).
          case GemmEpilogue::DGelu:
          case GemmEpilogue::DGeluBGrad: out = v * gelu_tanh_grad(memory.load(aux, i + j * args.ld_aux, "aux")); break;
          // BGRADB: D is the plain product; the bias gradient is computed from B (below).
          case GemmEpilogue::BGradB: break;
        }
        result[static_cast<size_t>(i + j * args.m)] = out;
      }
    }
    for (int64_t j = 0; j < args.n; ++j)
      for (int64_t i = 0; i < args.m; ++i) memory.store(d, i + j * args.ldd, result[static_cast<size_t>(i + j * args.m)]);

    if (e == GemmEpilogue::DGeluBGrad) {
      // DGELU_BGRAD: GELU gradient to D and, independently, the bias gradient to the BIAS_POINTER
      // buffer: the gradient of the per-row bias the forward added, i.e. each row of D summed over
      // its n columns (m elements).
      for (int64_t i = 0; i < args.m; ++i) {
        float sum = 0.0f;
        for (int64_t j = 0; j < args.n; ++j) sum += result[static_cast<size_t>(i + j * args.m)];
        memory.store(bias_grad, i, sum);
      }
    } else if (e == GemmEpilogue::BGradB) {
      // BGRADB: bias gradient from the input matrix B; one element per column of D, the reduction
      // runs over the GEMM's k dimension: bias_grad[j] = sum over l of op(B)(l, j).
      for (int64_t j = 0; j < args.n; ++j) {
        float sum = 0.0f;
        for (int64_t l = 0; l < args.k; ++l) sum += op_b(l, j);
        memory.store(bias_grad, j, sum);
      }
    }
    return {};
  } catch (const Memory::Error& error) {
    return {error.what()};
  }
}

// As run(args, memory), after checking the heuristic preference the wrapper would use for it.
inline Outcome run(const GemmArgs& args, Memory& memory, const GemmPreference& pref) {
  Outcome outcome = check_preference(args, pref);
  if (!outcome.ok()) return {"preference: " + outcome.error};
  return run(args, memory);
}

}  // namespace ampkit_test::lt_model
