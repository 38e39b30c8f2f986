// The multi-tensor launcher's plan (which block processes which chunk of which tensor), checked on
// the host: every launch is "executed" by walking its table as the CUDA blocks would, and every
// element of every tensor must be visited exactly once, through the right addresses in every list.
#include "test_helpers.h"

#include <random>

#include "ampkit_kernels/multi_tensor_plan.h"

using ampkit_kernels::detail::LaunchTable;
using ampkit_kernels::detail::plan_multi_tensor_launches;
using ampkit_kernels::detail::PlanStatus;

namespace {

// Fake tensors: tensor t of list l "lives" at &markers[l][t], so an address names its tensor.
template <int Depth>
struct PlanRun {
  std::vector<int64_t> numels;
  int64_t chunk_size;
  std::vector<std::vector<char>> markers;
  std::vector<std::vector<void*>> lists;
  std::vector<std::vector<int>> visits;  // visits[t][i]: how often element i of tensor t was processed
  int launches = 0;
  std::vector<std::string> problems;

  PlanRun(std::vector<int64_t> sizes, int64_t chunk) : numels(std::move(sizes)), chunk_size(chunk) {
    markers.assign(Depth, std::vector<char>(numels.size() + 1));
    lists.assign(Depth, std::vector<void*>(numels.size()));
    for (int l = 0; l < Depth; ++l) {
      for (size_t t = 0; t < numels.size(); ++t) lists[l][t] = &markers[l][t];
    }
    for (const int64_t numel : numels) visits.emplace_back(static_cast<size_t>(numel), 0);
  }

  void problem(const std::string& what) {
    if (problems.size() < 5) problems.push_back(what);
  }

  // What the kernel's blocks do with one launched table.
  bool execute(const LaunchTable<Depth>& table, int num_blocks) {
    ++launches;
    if (num_blocks <= 0 || num_blocks > LaunchTable<Depth>::kMaxBlocks) {
      problem("launch with " + std::to_string(num_blocks) + " blocks");
      return true;
    }
    for (int b = 0; b < num_blocks; ++b) {
      const int slot = table.block_to_slot[b];
      const int64_t chunk = table.block_to_chunk[b];
      if (slot >= LaunchTable<Depth>::kMaxTensors) {
        problem("slot out of range");
        continue;
      }
      const char* first = static_cast<const char*>(table.addresses[0][slot]);
      const auto t = static_cast<size_t>(first - markers[0].data());
      if (first < markers[0].data() || t >= numels.size()) {
        problem("block " + std::to_string(b) + " names an unknown tensor");
        continue;
      }
      for (int l = 1; l < Depth; ++l) {
        if (table.addresses[l][slot] != lists[l][t]) problem("list " + std::to_string(l) + " address mismatch");
      }
      if (table.numels[slot] != numels[t]) problem("numel mismatch for tensor " + std::to_string(t));
      const int64_t start = chunk * chunk_size;
      const int64_t end = std::min(start + chunk_size, numels[t]);
      if (start >= numels[t]) problem("chunk beyond the end of tensor " + std::to_string(t));
      for (int64_t i = start; i < end; ++i) ++visits[t][static_cast<size_t>(i)];
    }
    return true;
  }

  PlanStatus run() {
    LaunchTable<Depth> table;
    return plan_multi_tensor_launches<Depth>(lists, numels, chunk_size, table,
                                             [&](const LaunchTable<Depth>& full, int n) { return execute(full, n); });
  }

  // Empty when every element of every tensor was visited exactly once.
  std::string coverage_error() const {
    for (size_t t = 0; t < visits.size(); ++t) {
      for (size_t i = 0; i < visits[t].size(); ++i) {
        if (visits[t][i] != 1) {
          return "tensor " + std::to_string(t) + " element " + std::to_string(i) + " visited " +
                 std::to_string(visits[t][i]) + " times";
        }
      }
    }
    return {};
  }
};

template <int Depth>
void check_plan(const std::vector<int64_t>& numels, int64_t chunk_size) {
  PlanRun<Depth> run(numels, chunk_size);
  REQUIRE(run.run() == PlanStatus::Ok);
  INFO("depth " << Depth << ", " << numels.size() << " tensors, chunk " << chunk_size);
  for (const auto& problem : run.problems) UNSCOPED_INFO(problem);
  CHECK(run.problems.empty());
  CHECK(run.coverage_error().empty());
}

std::vector<int64_t> random_sizes(std::mt19937& rng, int count, int64_t chunk_size) {
  std::vector<int64_t> sizes;
  std::uniform_int_distribution<int> kind(0, 9);
  std::uniform_int_distribution<int64_t> small(1, 3 * chunk_size);
  std::uniform_int_distribution<int64_t> large(chunk_size, 700 * chunk_size);
  for (int i = 0; i < count; ++i) {
    switch (kind(rng)) {
      case 0: sizes.push_back(0); break;
      case 1: sizes.push_back(chunk_size); break;
      case 2: sizes.push_back(chunk_size + 1); break;
      case 3: sizes.push_back(large(rng)); break;
      default: sizes.push_back(small(rng)); break;
    }
  }
  return sizes;
}

}  // namespace

TEST_CASE("multi-tensor plan: a tensor carried into a new table keeps its chunks after its old slot is reused",
          "[multi_tensor_plan]") {
  // Depth 1 holds 320 blocks: the fifth tensor (400 chunks) overflows the first table and is
  // carried over; the 200 one-chunk tensors behind it then take slots 1.. of the new table,
  // including its old slot 4, while its last chunks are still waiting in that table.
  std::vector<int64_t> sizes = {4, 4, 4, 4, 400 * 4};
  sizes.insert(sizes.end(), 200, 3);
  check_plan<1>(sizes, 4);
  check_plan<6>(sizes, 4);
}

TEST_CASE("multi-tensor plan: table limits are met exactly", "[multi_tensor_plan]") {
  const int64_t chunk = 8;
  // Exactly as many one-chunk tensors as a table holds, and one more.
  check_plan<1>(std::vector<int64_t>(LaunchTable<1>::kMaxTensors, chunk), chunk);
  check_plan<1>(std::vector<int64_t>(LaunchTable<1>::kMaxTensors + 1, chunk), chunk);
  check_plan<5>(std::vector<int64_t>(3 * LaunchTable<5>::kMaxTensors + 7, 5), chunk);
  // Exactly a table's worth of blocks in one tensor, one more, and several tables' worth.
  check_plan<2>({LaunchTable<2>::kMaxBlocks * chunk}, chunk);
  check_plan<2>({LaunchTable<2>::kMaxBlocks * chunk + 1}, chunk);
  check_plan<2>({5 * LaunchTable<2>::kMaxBlocks * chunk + 3, 1, 2 * LaunchTable<2>::kMaxBlocks * chunk}, chunk);
  // A tensor that ends exactly where a table fills up, and one that straddles two carries.
  check_plan<3>({(LaunchTable<3>::kMaxBlocks - 2) * chunk, 2 * chunk, 9, 3 * LaunchTable<3>::kMaxBlocks * chunk}, chunk);
}

TEST_CASE("multi-tensor plan: random tensor lists at every depth", "[multi_tensor_plan]") {
  std::mt19937 rng(20261124);
  for (int trial = 0; trial < 12; ++trial) {
    const int64_t chunk = trial % 3 == 0 ? 1 : 4 + trial;
    std::uniform_int_distribution<int> count(1, 400);
    check_plan<1>(random_sizes(rng, count(rng), chunk), chunk);
    check_plan<2>(random_sizes(rng, count(rng), chunk), chunk);
    check_plan<3>(random_sizes(rng, count(rng), chunk), chunk);
    check_plan<4>(random_sizes(rng, count(rng), chunk), chunk);
    check_plan<5>(random_sizes(rng, count(rng), chunk), chunk);
    check_plan<6>(random_sizes(rng, count(rng), chunk), chunk);
  }
}

TEST_CASE("multi-tensor plan: empty lists and empty tensors launch nothing", "[multi_tensor_plan]") {
  PlanRun<2> none({}, 16);
  CHECK(none.run() == PlanStatus::Ok);
  CHECK(none.launches == 0);
  PlanRun<2> zeros({0, 0, 0}, 16);
  CHECK(zeros.run() == PlanStatus::Ok);
  CHECK(zeros.launches == 0);
}

TEST_CASE("multi-tensor plan: inconsistent arguments are refused before any launch", "[multi_tensor_plan]") {
  LaunchTable<2> table;
  int launches = 0;
  auto count = [&](const LaunchTable<2>&, int) { return ++launches > 0; };
  std::vector<char> storage(4);
  const std::vector<void*> two = {&storage[0], &storage[1]};
  const std::vector<void*> one = {&storage[2]};
  CHECK(plan_multi_tensor_launches<2>({two, one}, {3, 3}, 8, table, count) == PlanStatus::InvalidArgument);
  CHECK(plan_multi_tensor_launches<2>({two}, {3, 3}, 8, table, count) == PlanStatus::InvalidArgument);
  CHECK(plan_multi_tensor_launches<2>({two, two}, {3, 3}, 0, table, count) == PlanStatus::InvalidArgument);
  CHECK(plan_multi_tensor_launches<2>({two, two}, {3, -1}, 8, table, count) == PlanStatus::InvalidArgument);
  // More chunks than block_to_chunk can count.
  CHECK(plan_multi_tensor_launches<2>({two, two}, {3, int64_t{1} << 40}, 1, table, count) ==
        PlanStatus::InvalidArgument);
  CHECK(launches == 0);
}

TEST_CASE("multi-tensor plan: a failed launch stops the plan", "[multi_tensor_plan]") {
  PlanRun<1> run(std::vector<int64_t>(3 * LaunchTable<1>::kMaxTensors, 1), 1);
  LaunchTable<1> table;
  int launches = 0;
  const auto status = plan_multi_tensor_launches<1>(run.lists, run.numels, 1, table,
                                                    [&](const LaunchTable<1>&, int) { return ++launches < 2; });
  CHECK(status == PlanStatus::LaunchFailed);
  CHECK(launches == 2);
}
