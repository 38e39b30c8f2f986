#include "ampkit/fused_linear.h"

#include <atomic>

#include "ops/fused_linear.h"
#include "ops/op_lookup.h"

namespace ampkit {

at::Tensor fused_linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        std::string_view activation) {
  static const auto op = detail::find_typed_op<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                           const std::optional<at::Tensor>&, std::string_view)>(
      "ampkit::fused_linear");
  return op.call(input, weight, bias, activation);
}

std::vector<std::string> fused_linear_activations() { return detail::activation_names(); }

void check_fused_linear_activation(std::string_view caller, std::string_view activation) {
  detail::parse_activation(caller, activation);
}

at::Tensor fused_mlp(const at::Tensor& input, const at::Tensor& weight1, const std::optional<at::Tensor>& bias1,
                     const at::Tensor& weight2, const std::optional<at::Tensor>& bias2) {
  static const auto op =
      detail::find_typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                       const at::Tensor&, const std::optional<at::Tensor>&)>("ampkit::fused_mlp");
  return op.call(input, weight1, bias1, weight2, bias2);
}

namespace {
std::atomic<int64_t> fused_epilogues{0};
std::atomic<int64_t> unfused_epilogues{0};
}  // namespace

FusedEpilogueCounts fused_epilogue_counts() {
  FusedEpilogueCounts counts;
  counts.fused = fused_epilogues.load(std::memory_order_relaxed);
  counts.unfused = unfused_epilogues.load(std::memory_order_relaxed);
  return counts;
}

void reset_fused_epilogue_counts() {
  fused_epilogues.store(0, std::memory_order_relaxed);
  unfused_epilogues.store(0, std::memory_order_relaxed);
}

namespace detail {
void count_epilogue_gemm(bool fused) {
  (fused ? fused_epilogues : unfused_epilogues).fetch_add(1, std::memory_order_relaxed);
}
}  // namespace detail

}  // namespace ampkit
