// CPU kernels of master_sgd_step_ / master_adam_step_: the per-element math of
// ampkit_kernels/optim_math.h (the same code the CUDA kernels run), on 16 elements at a time
// (AVX-512), 8 (AVX2) or one (the portable loop), chosen at run time (cpu/vector_isa.h).
// fp32/fp16/bf16 parameters compute in float (FP32 masters and state), fp64 parameters in double
// (always the portable loop: fp64 training is rare, and it keeps one code path for it).
//
// The three levels give the same bits for every input: the vector loops instantiate the very
// formulas of optim_math.h with FloatVec (one IEEE operation per lane, in the scalar code's
// order), load and store fp16/bf16 with c10's scalar conversions' bits, write one NaN for every
// NaN (the levels' stores, below), and hand the tail of each chunk (fewer elements than a
// vector) to the portable loop itself. This file is compiled with -ffp-contract=off
// (CMakeLists.txt): FMA contraction in one level only would break that.
//
// One step is one parallel pass: every tensor is cut into fixed chunks of kStepChunk elements and
// the threads take the chunks of all tensors from one queue (parallel_items), so a model of many
// small tensors does not pay one fork/join per tensor. Each element's math is independent of every other's, so the
// result does not depend on the thread count or on where a chunk boundary falls.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include "ampkit_kernels/optim_math.h"
#include "cpu/cpu_loops.h"
#include "cpu/vector_isa.h"
#include "ops/optim.h"

namespace ampkit::cpu {
namespace {

namespace math = ampkit_kernels::optim_math;

float read_scalar(const at::Tensor& tensor) { return *tensor.const_data_ptr<float>(); }

// lr is float32, or float64 for fp64 params (the checks in ops/optim.cpp).
double read_lr(const at::Tensor& lr) {
  return lr.scalar_type() == at::kDouble ? *lr.const_data_ptr<double>() : static_cast<double>(read_scalar(lr));
}

template <typename T>
T* optional_data(at::TensorList list, size_t index) {
  return list.empty() ? nullptr : list[index].mutable_data_ptr<T>();
}

// The compute type of a parameter's step: double for fp64 params, float otherwise.
template <typename Param>
using ComputeOf = std::conditional_t<std::is_same_v<Param, double>, double, float>;

// ---- one tensor's share of a step, type-erased so that one parallel loop runs every tensor ----

struct StepJob;
using StepBlockFn = void (*)(const StepJob& job, int64_t begin, int64_t end);

// master == nullptr: the parameter itself holds the weight. Any state may be null (unused). With
// write_back_grads the gradient becomes the unscaled (and clipped) value the update used.
struct StepJob {
  void* param = nullptr;
  void* master = nullptr;
  void* grad = nullptr;
  std::array<void*, 3> state{};
  int64_t numel = 0;
  const void* coefficients = nullptr;  // the rule's Coefficients, per tensor (its step count)
  float inv_scale = 1.0f;
  float clip_coef = 1.0f;
  bool write_back_grads = false;
  // The model copy is written with streaming stores (see run_step_jobs).
  bool stream_param = false;
  int64_t param_and_grad_bytes = 0;  // of one element
  int64_t compute_bytes = 0;         // of one element of the master and of each state
  StepBlockFn block = nullptr;
};

// What a step does to one element. update(weight, grad, state0, state1, state2, coefficients)
// returns the new weight; V is the compute type or a FloatVec of it.
template <typename Compute>
struct SgdRule {
  static constexpr bool kUpdates = true;
  using Coefficients = math::SgdCoefficients<Compute>;
  template <typename V>
  __attribute__((always_inline)) static V update(V weight, V grad, V& momentum_buffer, V&, V&,
                                                 const Coefficients& c) {
    return math::sgd_update(weight, grad, momentum_buffer, c);
  }
};

template <typename Compute>
struct AdamRule {
  static constexpr bool kUpdates = true;
  using Coefficients = math::AdamCoefficients<Compute>;
  template <typename V>
  __attribute__((always_inline)) static V update(V weight, V grad, V& exp_avg, V& exp_avg_sq, V& max_exp_avg_sq,
                                                 const Coefficients& c) {
    return math::adam_update(weight, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, c);
  }
};

// A skipped step with write_back_grads: only the gradients change (unscaled and clipped), as
// torch's GradScaler.unscale_ leaves them before it skips the step.
template <typename Compute>
struct UnscaleGradsRule {
  static constexpr bool kUpdates = false;
  using Coefficients = int;
  template <typename V>
  __attribute__((always_inline)) static V update(V weight, V, V&, V&, V&, const Coefficients&) {
    return weight;
  }
};

// ---- the levels: how Lanes elements of a storage dtype become the compute type and back ----
// Every store writes the one quiet NaN (0x7FC00000; fp16 0x7E00, bf16 0x7FC0) for any NaN. Where
// two NaNs meet in an operation, IEEE 754 leaves open whose sign and payload the result keeps
// (x86 keeps the first operand's), and the compiler orders the operands of + and * as it likes,
// differently in each loop; without this the levels would agree on every value but such NaNs.

template <typename Compute>
struct ScalarLevel {
  using Scalar = Compute;
  using Vec = Compute;
  static constexpr int64_t kLanes = 1;
  static Vec broadcast(Compute value) { return value; }
  template <typename T>
  static void prefetch(const T*) {}
  template <typename T>
  static Vec load(const T* data) {
    return static_cast<Compute>(*data);
  }
  template <typename T>
  static void store(T* data, Vec value) {
    *data = static_cast<T>(value != value ? std::numeric_limits<Compute>::quiet_NaN() : value);
  }
  template <typename T>
  static void store_streaming(T* data, Vec value) {
    store(data, value);
  }
  static void end_streaming() {}
};

#if AMPKIT_X86_DISPATCH
// Every stream a step reads is prefetched this far ahead. Measured on the shared, virtualised
// Zen 5 this was tuned on (AdamW, GPT-2-small shapes, paired runs): 4096 bytes ~15 % faster than
// none, ~12 % faster than 1024, level with 2048.
constexpr int64_t kPrefetchBytes = 4096;

struct Avx2Level {
  using Scalar = float;
  using Vec = FloatVec<8>;
  static constexpr int64_t kLanes = 8;
  static Vec broadcast(float value) { return cpu::broadcast<8>(value); }
  template <typename T>
  AMPKIT_X86_V3 static void prefetch(const T* data) {
    _mm_prefetch(reinterpret_cast<const char*>(data) + kPrefetchBytes, _MM_HINT_T0);
  }
  template <typename T>
  AMPKIT_X86_V3 static Vec load(const T* data) {
    return {(Vec::Native)x86::load8(data)};
  }
  AMPKIT_X86_V3 static __m256 without_nan_payload(Vec value) {
    const __m256 values = (__m256)value.v;
    const __m256 is_nan = _mm256_cmp_ps(values, values, _CMP_UNORD_Q);
    return _mm256_blendv_ps(values, _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()), is_nan);
  }
  template <typename T>
  AMPKIT_X86_V3 static void store(T* data, Vec value) {
    x86::store8(data, without_nan_payload(value));
  }
  // The same bits as store(), past the cache (the address is a multiple of the vector's bytes).
  AMPKIT_X86_V3 static void store_streaming(float* data, Vec value) {
    _mm256_stream_ps(data, without_nan_payload(value));
  }
  AMPKIT_X86_V3 static void store_streaming(c10::Half* data, Vec value) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(data), x86::canonical_f16_nan(x86::narrow_f16(without_nan_payload(value))));
  }
  AMPKIT_X86_V3 static void store_streaming(c10::BFloat16* data, Vec value) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(data), x86::narrow_bf16(without_nan_payload(value)));
  }
  AMPKIT_X86_V3 static void end_streaming() { _mm_sfence(); }
};

struct Avx512Level {
  using Scalar = float;
  using Vec = FloatVec<16>;
  static constexpr int64_t kLanes = 16;
  static Vec broadcast(float value) { return cpu::broadcast<16>(value); }
  template <typename T>
  AMPKIT_X86_V4 static void prefetch(const T* data) {
    _mm_prefetch(reinterpret_cast<const char*>(data) + kPrefetchBytes, _MM_HINT_T0);
  }
  template <typename T>
  AMPKIT_X86_V4 static Vec load(const T* data) {
    return {(Vec::Native)x86::load16(data)};
  }
  AMPKIT_X86_V4 static __m512 without_nan_payload(Vec value) {
    const __m512 values = (__m512)value.v;
    const __mmask16 is_nan = _mm512_cmp_ps_mask(values, values, _CMP_UNORD_Q);
    return _mm512_mask_blend_ps(is_nan, values, _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
  }
  template <typename T>
  AMPKIT_X86_V4 static void store(T* data, Vec value) {
    x86::store16(data, without_nan_payload(value));
  }
  // The same bits as store(), past the cache (the address is a multiple of the vector's bytes).
  AMPKIT_X86_V4 static void store_streaming(float* data, Vec value) {
    _mm512_stream_ps(data, without_nan_payload(value));
  }
  AMPKIT_X86_V4 static void store_streaming(c10::Half* data, Vec value) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(data), x86::narrow_f16_canonical(without_nan_payload(value)));
  }
  AMPKIT_X86_V4 static void store_streaming(c10::BFloat16* data, Vec value) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(data), x86::narrow_bf16(without_nan_payload(value)));
  }
  AMPKIT_X86_V4 static void end_streaming() { _mm_sfence(); }
};
#endif

// Elements [begin, end) of one job, Level::kLanes at a time, as far as whole vectors go; returns
// where it stopped. The order of the arithmetic is that of the scalar step: the gradient is
// unscaled as (grad * inv_scale) * clip_coef, then the rule's update runs on it.
template <typename Level, typename Param, typename Grad, template <typename> class Rule>
__attribute__((always_inline)) inline int64_t step_elements(const StepJob& job, int64_t begin, int64_t end) {
  using Compute = typename Level::Scalar;
  using Vec = typename Level::Vec;
  using RuleT = Rule<Compute>;
  constexpr int64_t kLanes = Level::kLanes;
  Param* const param = static_cast<Param*>(job.param);
  Compute* const master = static_cast<Compute*>(job.master);
  Grad* const grad = static_cast<Grad*>(job.grad);
  Compute* const state0 = static_cast<Compute*>(job.state[0]);
  Compute* const state1 = static_cast<Compute*>(job.state[1]);
  Compute* const state2 = static_cast<Compute*>(job.state[2]);
  // Copies: the stores below could alias the job's fields as far as the compiler knows, which would
  // make it re-read them from memory in every iteration.
  const typename RuleT::Coefficients coefficients = *static_cast<const typename RuleT::Coefficients*>(job.coefficients);
  const Compute inv_scale = static_cast<Compute>(job.inv_scale);
  const Compute clip_coef = static_cast<Compute>(job.clip_coef);
  const bool write_back_grads = job.write_back_grads;
  const bool stream_param = job.stream_param;
  const Vec zero = Level::broadcast(Compute(0));
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    Level::prefetch(grad + i);
    if (master != nullptr) Level::prefetch(master + i);
    if (state0 != nullptr) Level::prefetch(state0 + i);
    if (state1 != nullptr) Level::prefetch(state1 + i);
    if (state2 != nullptr) Level::prefetch(state2 + i);
    const Vec g = Level::load(grad + i) * inv_scale * clip_coef;
    if (write_back_grads) Level::store(grad + i, g);
    if constexpr (RuleT::kUpdates) {
      Vec weight = master != nullptr ? Level::load(master + i) : Level::load(param + i);
      Vec s0 = state0 != nullptr ? Level::load(state0 + i) : zero;
      Vec s1 = state1 != nullptr ? Level::load(state1 + i) : zero;
      Vec s2 = state2 != nullptr ? Level::load(state2 + i) : zero;
      weight = RuleT::update(weight, g, s0, s1, s2, coefficients);
      if (master != nullptr) Level::store(master + i, weight);
      if (stream_param) {
        Level::store_streaming(param + i, weight);
      } else {
        Level::store(param + i, weight);
      }
      if (state0 != nullptr) Level::store(state0 + i, s0);
      if (state1 != nullptr) Level::store(state1 + i, s1);
      if (state2 != nullptr) Level::store(state2 + i, s2);
    }
  }
  if (stream_param) Level::end_streaming();  // ordered before the stores of whoever reads them next
  return i;
}

// The portable loop. Never inlined: the vector levels call this very function for their tails.
template <typename Compute, typename Param, typename Grad, template <typename> class Rule>
__attribute__((noinline)) void step_block_baseline(const StepJob& job, int64_t begin, int64_t end) {
  step_elements<ScalarLevel<Compute>, Param, Grad, Rule>(job, begin, end);
}

#if AMPKIT_X86_DISPATCH
// flatten: optim_math's templates and FloatVec's operators carry no target attribute; inlined
// here they compile to this function's instructions.
template <typename Param, typename Grad, template <typename> class Rule>
AMPKIT_X86_V3 __attribute__((flatten)) void step_block_avx2(const StepJob& job, int64_t begin, int64_t end) {
  const int64_t done = step_elements<Avx2Level, Param, Grad, Rule>(job, begin, end);
  if (done < end) step_block_baseline<float, Param, Grad, Rule>(job, done, end);
}

template <typename Param, typename Grad, template <typename> class Rule>
AMPKIT_X86_V4 __attribute__((flatten)) void step_block_avx512(const StepJob& job, int64_t begin, int64_t end) {
  const int64_t done = step_elements<Avx512Level, Param, Grad, Rule>(job, begin, end);
  if (done < end) step_block_baseline<float, Param, Grad, Rule>(job, done, end);
}
#endif

template <typename Param, typename Grad, template <typename> class Rule>
StepBlockFn select_step_block() {
  if constexpr (std::is_same_v<Param, double>) {
    return step_block_baseline<double, double, double, Rule>;
  } else {
#if AMPKIT_X86_DISPATCH
    switch (selected_cpu_isa()) {
      case CpuIsa::kAvx512: return step_block_avx512<Param, Grad, Rule>;
      case CpuIsa::kAvx2: return step_block_avx2<Param, Grad, Rule>;
      default: break;
    }
#endif
    return step_block_baseline<float, Param, Grad, Rule>;
  }
}

// Elements per chunk of the parallel loop: 16384 elements of an fp16 AdamW step move ~450 KB,
// enough that a chunk hand-off is noise, and small enough that the last tensors of a model balance.
constexpr int64_t kStepChunk = 16384;

// The bytes of the last-level cache: the highest level Linux lists for cpu0 in sysfs (in a VM
// glibc's sysconf can report the host's whole L3, ten times what the guest's cores share), else
// sysconf's L3, else 32 MiB.
int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    int best_level = 0;
    int64_t best_size = 0;
    for (int index = 0; index < 10; ++index) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
      std::ifstream level_file(dir + "level"), size_file(dir + "size");
      int level = 0;
      std::string size_text;
      if (!(level_file >> level) || !(size_file >> size_text) || size_text.empty()) continue;
      int64_t size = std::strtoll(size_text.c_str(), nullptr, 10);
      switch (size_text.back()) {
        case 'K': size <<= 10; break;
        case 'M': size <<= 20; break;
        case 'G': size <<= 30; break;
        default: break;
      }
      if (level > best_level && size > 0) {
        best_level = level;
        best_size = size;
      }
    }
    if (best_size > 0) return best_size;
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return l3 > 0 ? static_cast<int64_t>(l3) : (static_cast<int64_t>(32) << 20);
  }();
  return bytes;
}

// A step that reads more than the last-level cache holds cannot leave the model copy in the cache
// for the next forward pass, so the copy (which the step only writes, when there is a master) goes
// out with streaming stores: a normal store first reads each line it writes, 2 of the ~30 bytes a
// 16-bit AdamW step moves per element (measured on this project's Zen 5, GPT-2-small AdamW: 5-8 %
// faster at 1 and 2 threads). Smaller steps store normally and the forward finds the weights cached.
void choose_streaming_stores(std::vector<StepJob>& jobs) {
  int64_t bytes = 0;
  for (const StepJob& job : jobs) {
    int64_t compute_streams = job.master != nullptr ? 1 : 0;
    for (void* state : job.state) compute_streams += state != nullptr ? 1 : 0;
    bytes += job.numel * (job.param_and_grad_bytes + compute_streams * job.compute_bytes);
  }
  if (bytes <= last_level_cache_bytes()) return;
  for (StepJob& job : jobs) {
    // Every vector store must be aligned: chunks start at multiples of kStepChunk elements, so a
    // 64-byte-aligned tensor (what torch's CPU allocator returns) keeps every store aligned.
    job.stream_param = job.master != nullptr && reinterpret_cast<uintptr_t>(job.param) % 64 == 0;
  }
}

void run_step_jobs(std::vector<StepJob>& jobs) {
  choose_streaming_stores(jobs);
  struct Chunk {
    const StepJob* job;
    int64_t begin;
    int64_t end;
  };
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (const StepJob& job : jobs) {
    for (int64_t begin = 0; begin < job.numel; begin += kStepChunk) {
      chunks.push_back({&job, begin, std::min(job.numel, begin + kStepChunk)});
    }
    total += job.numel;
  }
  const auto run = [&](int64_t c) { chunks[c].job->block(*chunks[c].job, chunks[c].begin, chunks[c].end); };
  if (total < kGrainSize) {  // a small step: a thread hand-off would cost more than it saves
    for (int64_t c = 0; c < static_cast<int64_t>(chunks.size()); ++c) run(c);
  } else {
    parallel_items(static_cast<int64_t>(chunks.size()), run);
  }
}

// Calls fn(T{}) with the C++ type of a dtype the checks accepted (float32, float16, bfloat16).
template <typename Fn>
void dispatch_float(at::ScalarType dtype, const Fn& fn) {
  switch (dtype) {
    case at::kFloat: return fn(float{});
    case at::kHalf: return fn(c10::Half{});
    case at::kBFloat16: return fn(c10::BFloat16{});
    default: TORCH_CHECK(false, "ampkit: no CPU optimizer kernel for dtype ", dtype);
  }
}

// Calls fn(Param{}, Grad{}) with the C++ types of one parameter and its gradient: both double for
// fp64 params (the checks require fp64 grads there), else any mix of float/Half/BFloat16.
template <typename Fn>
void dispatch_param_and_grad(const at::Tensor& param, const at::Tensor& grad, const Fn& fn) {
  if (param.scalar_type() == at::kDouble) {
    TORCH_CHECK(grad.scalar_type() == at::kDouble, "ampkit: an fp64 param needs an fp64 grad, got ",
                grad.scalar_type());
    return fn(double{}, double{});
  }
  dispatch_float(param.scalar_type(), [&](auto param_tag) {
    dispatch_float(grad.scalar_type(), [&](auto grad_tag) { fn(param_tag, grad_tag); });
  });
}

// One job per parameter with the pointers every rule reads; the caller adds state and coefficients.
template <template <typename> class Rule>
std::vector<StepJob> make_jobs(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                               float inv_scale, float clip_coef, bool write_back_grads) {
  std::vector<StepJob> jobs(params.size());
  for (size_t t = 0; t < params.size(); ++t) {
    StepJob& job = jobs[t];
    dispatch_param_and_grad(params[t], grads[t], [&](auto param_tag, auto grad_tag) {
      using Param = decltype(param_tag);
      using Grad = decltype(grad_tag);
      job.param = params[t].mutable_data_ptr<Param>();
      job.master = optional_data<ComputeOf<Param>>(master_params, t);
      job.grad = grads[t].mutable_data_ptr<Grad>();
      job.block = select_step_block<Param, Grad, Rule>();
      job.param_and_grad_bytes = static_cast<int64_t>(sizeof(Param) + sizeof(Grad));
      job.compute_bytes = static_cast<int64_t>(sizeof(ComputeOf<Param>));
    });
    job.numel = params[t].numel();
    job.inv_scale = inv_scale;
    job.clip_coef = clip_coef;
    job.write_back_grads = write_back_grads;
  }
  return jobs;
}

void unscale_grads(at::TensorList params, at::TensorList grads, float inv_scale, float clip_coef) {
  static const int kNoCoefficients = 0;
  std::vector<StepJob> jobs = make_jobs<UnscaleGradsRule>(params, {}, grads, inv_scale, clip_coef, true);
  for (StepJob& job : jobs) job.coefficients = &kNoCoefficients;
  run_step_jobs(jobs);
}

void advance_steps(at::TensorList steps) {
  for (const auto& step : steps) *step.mutable_data_ptr<float>() += 1.0f;
}

// Each parameter's coefficients (they depend on its step count) in the compute type of its dtype.
template <template <typename> class Coefficients>
struct PerTensorCoefficients {
  std::vector<Coefficients<float>> float_params;
  std::vector<Coefficients<double>> double_params;
  explicit PerTensorCoefficients(size_t count) : float_params(count), double_params(count) {}
};

void master_sgd_step_cpu(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                         at::TensorList momentum_buffers, at::TensorList steps, const at::Tensor& lr,
                         const at::Tensor& inv_scale, const at::Tensor& clip_coef,
                         const std::optional<at::Tensor>& found_inf, double momentum, double dampening,
                         double weight_decay, bool nesterov, bool maximize, bool write_back_grads) {
  detail::check_master_sgd_step_args(params, master_params, grads, momentum_buffers, steps, lr, inv_scale, clip_coef,
                                     found_inf, momentum, dampening, weight_decay, nesterov, write_back_grads);
  const float inv = read_scalar(inv_scale), clip = read_scalar(clip_coef);
  if (detail::cpu_step_skipped(found_inf)) {
    if (write_back_grads) unscale_grads(params, grads, inv, clip);
    return;
  }
  const ampkit_kernels::SgdHyper hyper{momentum, dampening, weight_decay, nesterov, maximize};
  const double lr_value = read_lr(lr);
  PerTensorCoefficients<math::SgdCoefficients> coefficients(params.size());
  std::vector<StepJob> jobs = make_jobs<SgdRule>(params, master_params, grads, inv, clip, write_back_grads);
  for (size_t t = 0; t < params.size(); ++t) {
    if (params[t].scalar_type() == at::kDouble) {
      coefficients.double_params[t] = math::sgd_coefficients<double>(hyper, lr_value, read_scalar(steps[t]));
      jobs[t].coefficients = &coefficients.double_params[t];
      jobs[t].state[0] = optional_data<double>(momentum_buffers, t);
    } else {
      coefficients.float_params[t] = math::sgd_coefficients<float>(hyper, lr_value, read_scalar(steps[t]));
      jobs[t].coefficients = &coefficients.float_params[t];
      jobs[t].state[0] = optional_data<float>(momentum_buffers, t);
    }
  }
  run_step_jobs(jobs);
  advance_steps(steps);
}

void master_adam_step_cpu(at::TensorList params, at::TensorList master_params, at::TensorList grads,
                          at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                          at::TensorList steps, const at::Tensor& lr, const at::Tensor& inv_scale,
                          const at::Tensor& clip_coef, const std::optional<at::Tensor>& found_inf, double beta1,
                          double beta2, double eps, double weight_decay, bool decoupled_weight_decay, bool maximize,
                          bool write_back_grads) {
  detail::check_master_adam_step_args(params, master_params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr,
                                      inv_scale, clip_coef, found_inf, beta1, beta2, eps, weight_decay,
                                      write_back_grads);
  const float inv = read_scalar(inv_scale), clip = read_scalar(clip_coef);
  if (detail::cpu_step_skipped(found_inf)) {
    if (write_back_grads) unscale_grads(params, grads, inv, clip);
    return;
  }
  const bool amsgrad = !max_exp_avg_sqs.empty();
  const ampkit_kernels::AdamHyper hyper{beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize, amsgrad};
  const double lr_value = read_lr(lr);
  PerTensorCoefficients<math::AdamCoefficients> coefficients(params.size());
  std::vector<StepJob> jobs = make_jobs<AdamRule>(params, master_params, grads, inv, clip, write_back_grads);
  for (size_t t = 0; t < params.size(); ++t) {
    const auto set_state = [&](auto compute_tag) {
      using Compute = decltype(compute_tag);
      jobs[t].state = {exp_avgs[t].mutable_data_ptr<Compute>(), exp_avg_sqs[t].mutable_data_ptr<Compute>(),
                       optional_data<Compute>(max_exp_avg_sqs, t)};
    };
    if (params[t].scalar_type() == at::kDouble) {
      coefficients.double_params[t] = math::adam_coefficients<double>(hyper, lr_value, read_scalar(steps[t]));
      jobs[t].coefficients = &coefficients.double_params[t];
      set_state(double{});
    } else {
      coefficients.float_params[t] = math::adam_coefficients<float>(hyper, lr_value, read_scalar(steps[t]));
      jobs[t].coefficients = &coefficients.float_params[t];
      set_state(float{});
    }
  }
  run_step_jobs(jobs);
  advance_steps(steps);
}

}  // namespace

TORCH_LIBRARY_IMPL(ampkit, CPU, m) {
  m.impl("master_sgd_step_", &master_sgd_step_cpu);
  m.impl("master_adam_step_", &master_adam_step_cpu);
}

}  // namespace ampkit::cpu
