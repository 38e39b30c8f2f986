#include "ampkit_kernels/cublaslt_gemm.h"

#include <cublasLt.h>

#include "ampkit_kernels/gemm_preference.h"

#include <array>
#include <cstring>
#include <mutex>
#include <unordered_map>

namespace ampkit_kernels {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

// gemm_preference.h spells cuBLASLt's reduction schemes without CUDA; they must be cuBLASLt's.
static_assert(kReductionNone == CUBLASLT_REDUCTION_SCHEME_NONE, "reduction scheme NONE");
static_assert(kReductionInPlace == CUBLASLT_REDUCTION_SCHEME_INPLACE, "reduction scheme INPLACE");
static_assert(kReductionComputeType == CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE, "reduction scheme COMPUTE_TYPE");
static_assert(kReductionOutputType == CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE, "reduction scheme OUTPUT_TYPE");
static_assert(kReductionAll == CUBLASLT_REDUCTION_SCHEME_MASK, "reduction scheme mask");

cudaDataType_t cuda_type(DType dtype) {
  switch (dtype) {
    case DType::Float32: return CUDA_R_32F;
    case DType::Float16: return CUDA_R_16F;
    case DType::BFloat16: return CUDA_R_16BF;
    case DType::Float64: return CUDA_R_64F;
  }
  return CUDA_R_32F;
}

cublasLtEpilogue_t lt_epilogue(GemmEpilogue epilogue) {
  switch (epilogue) {
    case GemmEpilogue::None: return CUBLASLT_EPILOGUE_DEFAULT;
    case GemmEpilogue::Bias: return CUBLASLT_EPILOGUE_BIAS;
    case GemmEpilogue::BiasRelu: return CUBLASLT_EPILOGUE_RELU_BIAS;
    case GemmEpilogue::BiasGelu: return CUBLASLT_EPILOGUE_GELU_BIAS;
    case GemmEpilogue::BiasGeluAux: return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    case GemmEpilogue::GeluAux: return CUBLASLT_EPILOGUE_GELU_AUX;
    case GemmEpilogue::DGelu: return CUBLASLT_EPILOGUE_DGELU;
    case GemmEpilogue::DGeluBGrad: return CUBLASLT_EPILOGUE_DGELU_BGRAD;
    case GemmEpilogue::BGradB: return CUBLASLT_EPILOGUE_BGRADB;
    case GemmEpilogue::Relu: return CUBLASLT_EPILOGUE_RELU;
    case GemmEpilogue::Gelu: return CUBLASLT_EPILOGUE_GELU;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}

bool reads_bias(GemmEpilogue e) {
  return e == GemmEpilogue::Bias || e == GemmEpilogue::BiasRelu || e == GemmEpilogue::BiasGelu ||
         e == GemmEpilogue::BiasGeluAux;
}
bool writes_bias_grad(GemmEpilogue e) { return e == GemmEpilogue::DGeluBGrad || e == GemmEpilogue::BGradB; }
bool uses_aux(GemmEpilogue e) {
  return e == GemmEpilogue::BiasGeluAux || e == GemmEpilogue::GeluAux || e == GemmEpilogue::DGelu ||
         e == GemmEpilogue::DGeluBGrad;
}

Result library_error(cublasStatus_t status) {
  Result result;
  result.status = Status::LibraryError;
  result.library_status = static_cast<int>(status);
  return result;
}

Result invalid_argument() {
  Result result;
  result.status = Status::InvalidArgument;
  return result;
}

#define AMPKIT_LT_TRY(call)                                       \
  do {                                                            \
    const cublasStatus_t ampkit_status_ = (call);                 \
    if (ampkit_status_ != CUBLAS_STATUS_SUCCESS) return library_error(ampkit_status_); \
  } while (0)

// ---- one handle per device, created on first use and kept for the process ----
struct HandleTable {
  std::mutex mutex;
  std::unordered_map<int, cublasLtHandle_t> handles;
};
HandleTable& handle_table() {
  static auto* table = new HandleTable();  // leaked on purpose: no destruction-order issues at exit
  return *table;
}

Result handle_for(int device, cublasLtHandle_t* handle) {
  HandleTable& table = handle_table();
  std::lock_guard<std::mutex> lock(table.mutex);
  auto found = table.handles.find(device);
  if (found == table.handles.end()) {
    cublasLtHandle_t created = nullptr;
    AMPKIT_LT_TRY(cublasLtCreate(&created));
    found = table.handles.emplace(device, created).first;
  }
  *handle = found->second;
  return {};
}

// ---- algorithm cache ----
// Everything the heuristic's answer depends on. Pointers enter only through their alignments.
struct AlgoKey {
  std::array<int64_t, 20> fields{};
  bool operator==(const AlgoKey& other) const { return fields == other.fields; }
};
struct AlgoKeyHash {
  size_t operator()(const AlgoKey& key) const {
    size_t hash = 1469598103934665603ull;
    for (int64_t field : key.fields) hash = (hash ^ static_cast<size_t>(field)) * 1099511628211ull;
    return hash;
  }
};
struct AlgoCache {
  std::mutex mutex;
  std::unordered_map<AlgoKey, cublasLtMatmulAlgo_t, AlgoKeyHash> algos;
};
AlgoCache& algo_cache() {
  static auto* cache = new AlgoCache();
  return *cache;
}

struct Alignments {
  uint32_t a, b, d, bias, aux;
};

AlgoKey make_key(int device, const GemmArgs& args, const Alignments& align) {
  AlgoKey key;
  key.fields = {device,
                args.transpose_a,
                args.transpose_b,
                args.m,
                args.n,
                args.k,
                args.lda,
                args.ldb,
                args.ldd,
                static_cast<int64_t>(args.ab_dtype),
                static_cast<int64_t>(args.d_dtype),
                static_cast<int64_t>(args.epilogue),
                args.ld_aux,
                align.a,
                align.b,
                align.d,
                align.bias,
                align.aux,
                static_cast<int64_t>(args.workspace_bytes),
                0};
  return key;
}

// The descriptors of one call live on the stack (cuBLASLt's "opaque" structs): no heap traffic
// per GEMM, nothing to destroy, nothing shared between threads.
template <typename T>
cublasStatus_t set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute, const T& value) {
  return cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof(value));
}
template <typename T>
cublasStatus_t set_pref(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attribute,
                        const T& value) {
  return cublasLtMatmulPreferenceSetAttribute(pref, attribute, &value, sizeof(value));
}

bool valid(const GemmArgs& args) {
  if (args.m < 1 || args.n < 1 || args.k < 1) return false;
  if (!args.a || !args.b || !args.d) return false;
  if (args.ab_dtype == DType::Float32 && args.d_dtype != DType::Float32) return false;
  if (args.d_dtype != DType::Float32 && args.d_dtype != args.ab_dtype) return false;
  if (args.lda < (args.transpose_a ? args.k : args.m)) return false;
  if (args.ldb < (args.transpose_b ? args.n : args.k)) return false;
  if (args.ldd < args.m) return false;
  if (reads_bias(args.epilogue) && !args.bias) return false;
  if (writes_bias_grad(args.epilogue) && !args.bias_grad) return false;
  if (uses_aux(args.epilogue) && (!args.aux || args.ld_aux < args.m || args.ld_aux % 8 != 0)) return false;
  if (args.workspace_bytes > 0 && !args.workspace) return false;
  return true;
}

Result no_algorithm(int library_status) {
  Result result;
  result.status = Status::NoAlgorithm;
  result.library_status = library_status;
  return result;
}

// The epilogue kernels access bias / bias_grad / aux with 16-byte vectors, and the heuristic has no
// alignment preference for them: a vector that is less aligned (a slice of a larger buffer) gets
// no fused algorithm here, and the caller runs the unfused path.
bool epilogue_vectors_aligned(const GemmArgs& args) {
  constexpr uint32_t kVectorBytes = 16;
  if (reads_bias(args.epilogue) && pointer_alignment_bytes(args.bias) < kVectorBytes) return false;
  if (writes_bias_grad(args.epilogue) && pointer_alignment_bytes(args.bias_grad) < kVectorBytes) return false;
  if (uses_aux(args.epilogue) && pointer_alignment_bytes(args.aux) < kVectorBytes) return false;
  return true;
}

}  // namespace

const char* epilogue_name(GemmEpilogue epilogue) {
  switch (epilogue) {
    case GemmEpilogue::None: return "none";
    case GemmEpilogue::Bias: return "bias";
    case GemmEpilogue::BiasRelu: return "bias+relu";
    case GemmEpilogue::BiasGelu: return "bias+gelu";
    case GemmEpilogue::BiasGeluAux: return "bias+gelu+aux";
    case GemmEpilogue::GeluAux: return "gelu+aux";
    case GemmEpilogue::DGelu: return "dgelu";
    case GemmEpilogue::DGeluBGrad: return "dgelu+bgrad";
    case GemmEpilogue::BGradB: return "bgradb";
    case GemmEpilogue::Relu: return "relu";
    case GemmEpilogue::Gelu: return "gelu";
  }
  return "unknown epilogue";
}

size_t recommended_workspace_bytes(int device) {
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    cudaGetLastError();  // a failed query leaves a (non-sticky) error behind; clear it
    return 0;
  }
  return major >= 9 ? 32 * kMiB : 4 * kMiB;
}

size_t gemm_algorithm_cache_size() {
  AlgoCache& cache = algo_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  return cache.algos.size();
}

void clear_gemm_algorithm_cache() {
  AlgoCache& cache = algo_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  cache.algos.clear();
}

Result cublaslt_gemm(const GemmArgs& args, cudaStream_t stream) {
  if (!valid(args)) return invalid_argument();
  if (!epilogue_vectors_aligned(args)) return no_algorithm(0);

  int device = 0;
  if (const cudaError_t error = cudaGetDevice(&device); error != cudaSuccess) {
    Result result;
    result.status = Status::CudaError;
    result.cuda_error = error;
    return result;
  }
  cublasLtHandle_t handle = nullptr;
  if (Result result = handle_for(device, &handle); !result.ok()) return result;

  const cudaDataType_t ab_type = cuda_type(args.ab_dtype);
  const cudaDataType_t d_type = cuda_type(args.d_dtype);

  // fp32 accumulation and fp32 alpha/beta, whatever the storage types.
  cublasLtMatmulDescOpaque_t op_storage;
  const cublasLtMatmulDesc_t op = &op_storage;
  AMPKIT_LT_TRY(cublasLtMatmulDescInit(op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans_a = args.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t trans_b = args.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  AMPKIT_LT_TRY(set_desc(op, CUBLASLT_MATMUL_DESC_TRANSA, trans_a));
  AMPKIT_LT_TRY(set_desc(op, CUBLASLT_MATMUL_DESC_TRANSB, trans_b));
  const auto epilogue = static_cast<uint32_t>(lt_epilogue(args.epilogue));
  AMPKIT_LT_TRY(set_desc(op, CUBLASLT_MATMUL_DESC_EPILOGUE, epilogue));
  if (reads_bias(args.epilogue) || writes_bias_grad(args.epilogue)) {
    const void* bias = reads_bias(args.epilogue) ? args.bias : args.bias_grad;
    AMPKIT_LT_TRY(set_desc(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias));
    AMPKIT_LT_TRY(set_desc(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<int32_t>(d_type)));
  }
  if (uses_aux(args.epilogue)) {
    AMPKIT_LT_TRY(set_desc(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, args.aux));
    AMPKIT_LT_TRY(set_desc(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, args.ld_aux));
    // EPILOGUE_AUX_DATA_TYPE stays unset: its default is D's type, which is what we store, and
    // setting it is only defined for the fp8 kernels (elsewhere cuBLASLt may answer INVALID_VALUE).
  }

  // Layouts as stored (before op()): A is (transpose_a ? k x m : m x k), B likewise.
  cublasLtMatrixLayoutOpaque_t a_storage, b_storage, d_storage;
  const cublasLtMatrixLayout_t a_layout = &a_storage, b_layout = &b_storage, d_layout = &d_storage;
  AMPKIT_LT_TRY(cublasLtMatrixLayoutInit(a_layout, ab_type, args.transpose_a ? args.k : args.m,
                                         args.transpose_a ? args.m : args.k, args.lda));
  AMPKIT_LT_TRY(cublasLtMatrixLayoutInit(b_layout, ab_type, args.transpose_b ? args.n : args.k,
                                         args.transpose_b ? args.k : args.n, args.ldb));
  AMPKIT_LT_TRY(cublasLtMatrixLayoutInit(d_layout, d_type, args.m, args.n, args.ldd));

  const uint32_t bias_alignment =
      reads_bias(args.epilogue) ? pointer_alignment_bytes(args.bias)
                                : (writes_bias_grad(args.epilogue) ? pointer_alignment_bytes(args.bias_grad) : 0);
  const Alignments align{pointer_alignment_bytes(args.a), pointer_alignment_bytes(args.b),
                         pointer_alignment_bytes(args.d), bias_alignment,
                         uses_aux(args.epilogue) ? pointer_alignment_bytes(args.aux) : 0};
  const AlgoKey key = make_key(device, args, align);

  cublasLtMatmulAlgo_t algo;
  bool cached = false;
  {
    AlgoCache& cache = algo_cache();
    std::lock_guard<std::mutex> lock(cache.mutex);
    const auto found = cache.algos.find(key);
    if (found != cache.algos.end()) {
      algo = found->second;
      cached = true;
    }
  }
  if (!cached) {
    // The values come from the CUDA-free builder (gemm_preference.h, host-tested): the workspace,
    // split-K reductions that keep partial sums in fp32 only (a 16-bit D excludes the INPLACE and
    // OUTPUT_TYPE schemes, which add partials in D's type), and the operands' real alignments (the
    // heuristic assumes 256 bytes unless told otherwise, and an algorithm picked on that assumption
    // can fault on a less aligned view: a slice, an odd-sized neighbour).
    const GemmPreference wanted = gemm_preference(args);
    cublasLtMatmulPreferenceOpaque_t pref_storage;
    const cublasLtMatmulPreference_t pref = &pref_storage;
    AMPKIT_LT_TRY(cublasLtMatmulPreferenceInit(pref));
    AMPKIT_LT_TRY(set_pref(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, wanted.max_workspace_bytes));
    AMPKIT_LT_TRY(set_pref(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, wanted.reduction_scheme_mask));
    AMPKIT_LT_TRY(set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, wanted.min_alignment_a));
    AMPKIT_LT_TRY(set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, wanted.min_alignment_b));
    AMPKIT_LT_TRY(set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, wanted.min_alignment_c));
    AMPKIT_LT_TRY(set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, wanted.min_alignment_d));
    cublasLtMatmulHeuristicResult_t heuristic;
    std::memset(&heuristic, 0, sizeof(heuristic));
    int found = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle, op, a_layout, b_layout,
                                                                 d_layout, d_layout, pref, 1,
                                                                 &heuristic, &found);
    // Our arguments passed valid() above, so INVALID_VALUE here is the heuristic declining the
    // problem (it does so for some shapes with a dimension of 1), not a caller bug.
    if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE ||
        (status == CUBLAS_STATUS_SUCCESS && found == 0)) {
      return no_algorithm(static_cast<int>(status));
    }
    if (status != CUBLAS_STATUS_SUCCESS) return library_error(status);
    algo = heuristic.algo;
    // The mask is a filter on the heuristic's answer; check the answer too, so that a library that
    // ignored it could not silently add partial sums in fp16/bf16. Such an algorithm is not run.
    uint32_t scheme = kReductionNone;
    size_t written = 0;
    AMPKIT_LT_TRY(cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                                       sizeof(scheme), &written));
    if (!reduction_scheme_allowed(wanted, scheme)) return no_algorithm(0);
    AlgoCache& cache = algo_cache();
    std::lock_guard<std::mutex> lock(cache.mutex);
    cache.algos.emplace(key, algo);
  }

  const float alpha = args.alpha;
  const float beta = 0.0f;
  // beta = 0: C is never read; cuBLASLt still wants a C, and D is the natural one.
  AMPKIT_LT_TRY(cublasLtMatmul(handle, op, &alpha, args.a, a_layout, args.b, b_layout, &beta,
                               args.d, d_layout, args.d, d_layout, &algo, args.workspace,
                               args.workspace_bytes, stream));
  if (const cudaError_t error = cudaGetLastError(); error != cudaSuccess) {
    Result result;
    result.status = Status::CudaError;
    result.cuda_error = error;
    return result;
  }
  return {};
}

}  // namespace ampkit_kernels
