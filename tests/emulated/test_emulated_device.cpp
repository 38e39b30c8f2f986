// The emulated device checked on small probe kernels: it must run what is correct, and report
// what is not (races, divergent barriers, uninitialised and out-of-bounds shared accesses, bad
// launches), or the kernel suite's silence would mean nothing.
#include <numeric>

#include "emulated_test_helpers.h"
#include "probe_kernels.h"

namespace {

using emulated_test::for_each_thread_order;
using emulated_test::require_no_findings;
using ampkit_emulated::take_findings;
using ampkit_emulated::ThreadOrder;

bool any_finding_contains(const std::vector<std::string>& findings, const std::string& needle) {
  for (const std::string& finding : findings) {
    if (finding.find(needle) != std::string::npos) return true;
  }
  return false;
}

std::string joined(const std::vector<std::string>& findings) {
  std::string text;
  for (const std::string& finding : findings) text += finding + "\n";
  return text;
}

constexpr int kLaunchFailure = 719;        // cudaErrorLaunchFailure
constexpr int kInvalidConfiguration = 9;   // cudaErrorInvalidConfiguration

TEST_CASE("emulated device: a correct block reduction gives the exact sum in every thread order", "[emulator]") {
  std::vector<float> values(1000);
  std::iota(values.begin(), values.end(), 1.0f);
  for_each_thread_order([&] {
    float sum = 0.0f;
    REQUIRE(probe::block_sum(values.data(), 1000, 256, /*with_barrier=*/true, &sum) == 0);
    REQUIRE(sum == 500500.0f);
  });
}

TEST_CASE("emulated device: a missing __syncthreads is reported as a shared-memory race with the kernel and address",
          "[emulator]") {
  std::vector<float> values(1000, 1.0f);
  for (const ThreadOrder order : emulated_test::thread_orders()) {
    INFO(ampkit_emulated::thread_order_name(order));
    ampkit_emulated::set_thread_order(order, emulated_test::kRandomOrderSeed);
    float sum = 0.0f;
    REQUIRE(probe::block_sum(values.data(), 1000, 256, /*with_barrier=*/false, &sum) == kLaunchFailure);
    const std::vector<std::string> findings = take_findings();
    INFO(joined(findings));
    REQUIRE(any_finding_contains(findings, "block_sum_kernel"));
    REQUIRE(any_finding_contains(findings, "shared-memory race on partial["));
    REQUIRE(any_finding_contains(findings, "(address 0x"));
  }
  ampkit_emulated::set_thread_order(ThreadOrder::InOrder);
}

TEST_CASE("emulated device: the thread orders differ, so an order-dependent result shows", "[emulator]") {
  // Threads race to write one slot: the last writer wins, and which one is last depends on the order.
  std::vector<int> winners;
  for (const ThreadOrder order : emulated_test::thread_orders()) {
    ampkit_emulated::set_thread_order(order, emulated_test::kRandomOrderSeed);
    int winner = -1;
    REQUIRE(probe::shared_write_race(&winner) == kLaunchFailure);
    const std::vector<std::string> findings = take_findings();
    INFO(joined(findings));
    REQUIRE(any_finding_contains(findings, "shared-memory race on slot[0]"));
    winners.push_back(winner);
  }
  ampkit_emulated::set_thread_order(ThreadOrder::InOrder);
  REQUIRE(winners[0] == 63);  // in order: thread 63 writes last
  REQUIRE(winners[1] == 0);   // reversed: thread 0 writes last
  REQUIRE(winners[2] != 63);
  REQUIRE(winners[2] != 0);
}

TEST_CASE("emulated device: a barrier in divergent code is reported, not hung on", "[emulator]") {
  REQUIRE(probe::divergent_barrier() == kLaunchFailure);
  const std::vector<std::string> findings = take_findings();
  INFO(joined(findings));
  REQUIRE(any_finding_contains(findings, "divergent_barrier_kernel"));
  REQUIRE(any_finding_contains(findings, "__syncthreads reached by 16 of 64 threads"));
}

TEST_CASE("emulated device: uninitialised and out-of-bounds shared accesses are reported", "[emulator]") {
  float out = 0.0f;
  REQUIRE(probe::uninitialised_shared_read(&out) == kLaunchFailure);
  std::vector<std::string> findings = take_findings();
  INFO(joined(findings));
  REQUIRE(any_finding_contains(findings, "reads shared values[5] before any thread of the block wrote it"));
  REQUIRE(std::isnan(out));  // shared memory starts as garbage (NaN bytes), not zero

  REQUIRE(probe::shared_out_of_bounds() == kLaunchFailure);
  findings = take_findings();
  INFO(joined(findings));
  REQUIRE(any_finding_contains(findings, "indexes shared values[32], past its 32 elements"));
}

TEST_CASE("emulated device: a full-mask shuffle in a partial warp is reported", "[emulator]") {
  REQUIRE(probe::partial_warp_shuffle() == kLaunchFailure);
  const std::vector<std::string> findings = take_findings();
  INFO(joined(findings));
  REQUIRE(any_finding_contains(findings, "mask names lanes that do not exist"));
}

TEST_CASE("emulated device: shuffles and votes give CUDA's lane-by-lane results", "[emulator]") {
  for_each_thread_order([] {
    std::vector<int> out(7 * 64, -1);
    REQUIRE(probe::shuffles(out.data()) == 0);
    for (int t = 0; t < 64; ++t) {
      INFO("thread " << t);
      const int lane = t % 32, warp_base = t - lane;
      REQUIRE(out[0 * 64 + t] == 100 + (lane + 3 < 32 ? t + 3 : t));                 // down 3
      REQUIRE(out[1 * 64 + t] == 100 + (lane >= 5 ? t - 5 : t));                      // up 5
      REQUIRE(out[2 * 64 + t] == 100 + warp_base + (lane ^ 6));                        // xor 6
      REQUIRE(out[3 * 64 + t] == 100 + warp_base + (lane / 16) * 16 + 7);              // lane 7 of each 16
      unsigned ballot = 0;
      for (int l = 0; l < 32; ++l) ballot |= ((warp_base + l) % 3 == 0 ? 1u : 0u) << l;
      REQUIRE(static_cast<unsigned>(out[4 * 64 + t]) == ballot);
      REQUIRE(out[5 * 64 + t] == (warp_base == 32 ? 1 : 0));  // thread 40 is in the second warp
      REQUIRE(out[6 * 64 + t] == (warp_base == 0 ? 1 : 0));   // threads 60..63 are in the second warp
    }
  });
}

TEST_CASE("emulated device: 3-D grids and blocks run every thread once with CUDA's indices", "[emulator]") {
  for_each_thread_order([] {
    const int total = 3 * 2 * 2 * 4 * 3 * 2;
    std::vector<int> hits(total, 0), out(total, -1);
    REQUIRE(probe::indices(hits.data(), out.data()) == 0);
    for (int id = 0; id < total; ++id) {
      REQUIRE(hits[id] == 1);
      REQUIRE(out[id] == (id / 24) * 1000 + id % 24);
    }
  });
}

TEST_CASE("emulated device: an invalid launch configuration fails the launch", "[emulator]") {
  REQUIRE(probe::invalid_launch() == kInvalidConfiguration);
  const std::vector<std::string> findings = take_findings();
  INFO(joined(findings));
  REQUIRE(any_finding_contains(findings, "invalid launch configuration"));
  require_no_findings();
}

}  // namespace
