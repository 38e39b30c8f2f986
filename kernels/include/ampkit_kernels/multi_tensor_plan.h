// How the multi-tensor launcher cuts a list of tensors into launches: host-only, CUDA-free, so the
// plan is tested on any machine (tests/cpp/test_multi_tensor_plan.cpp) and the CUDA launcher
// (kernels/src/multi_tensor_apply.cuh) only adds the kernel launch.
//
// Every tensor is cut into chunks of `chunk_size` elements; each CUDA block processes one chunk.
// The (tensor, chunk) map and the tensors' addresses travel in the kernel's argument space (a
// LaunchTable passed by value), so no host->device copy and no device allocation is needed per
// launch. The table stays under the classic 4 KiB kernel-parameter limit; when it fills up (too
// many tensors or too many blocks) the table is launched and a new one started, carrying a
// partially processed tensor over as slot 0 of the next table.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ampkit_kernels {
namespace detail {

// Capacities chosen so sizeof(LaunchTable<Depth>) stays below 4 KiB for every depth <= 7.
template <int Depth>
struct TableCapacity {
  static constexpr int kMaxTensors =
      Depth == 1 ? 110 : Depth == 2 ? 64 : Depth == 3 ? 48 : Depth == 4 ? 36 : Depth == 5 ? 30 : 32;
  static constexpr int kMaxBlocks = 320;
};

template <int Depth>
struct LaunchTable {
  static constexpr int kMaxTensors = TableCapacity<Depth>::kMaxTensors;
  static constexpr int kMaxBlocks = TableCapacity<Depth>::kMaxBlocks;
  void* addresses[Depth][kMaxTensors];
  int64_t numels[kMaxTensors];
  unsigned char block_to_slot[kMaxBlocks];
  int block_to_chunk[kMaxBlocks];
};

static_assert(sizeof(LaunchTable<1>) <= 4096, "launch table exceeds kernel parameter space");
static_assert(sizeof(LaunchTable<2>) <= 4096, "launch table exceeds kernel parameter space");
static_assert(sizeof(LaunchTable<3>) <= 4096, "launch table exceeds kernel parameter space");
static_assert(sizeof(LaunchTable<4>) <= 4096, "launch table exceeds kernel parameter space");
static_assert(sizeof(LaunchTable<5>) <= 4096, "launch table exceeds kernel parameter space");
static_assert(sizeof(LaunchTable<6>) <= 4096, "launch table exceeds kernel parameter space");
static_assert(sizeof(LaunchTable<7>) <= 4096, "launch table exceeds kernel parameter space");
static_assert(TableCapacity<1>::kMaxTensors <= 256, "block_to_slot is one byte");

enum class PlanStatus { Ok, InvalidArgument, LaunchFailed };

// Fills `table` and calls `launch(table, num_blocks) -> bool` for every full table and for the
// last one; block b of a launch processes chunk table.block_to_chunk[b] of the tensor in slot
// table.block_to_slot[b]. `lists` holds Depth parallel pointer lists, `numels[t]` the element
// count of tensor t (the same in every list). Empty tensors get no block. A false from `launch`
// stops the plan (LaunchFailed).
template <int Depth, typename Launch>
PlanStatus plan_multi_tensor_launches(const std::vector<std::vector<void*>>& lists, const std::vector<int64_t>& numels,
                                      int64_t chunk_size, LaunchTable<Depth>& table, Launch&& launch) {
  using Table = LaunchTable<Depth>;
  if (static_cast<int>(lists.size()) != Depth || chunk_size <= 0) return PlanStatus::InvalidArgument;
  for (const auto& list : lists) {
    if (list.size() != numels.size()) return PlanStatus::InvalidArgument;
  }
  for (const int64_t numel : numels) {
    // block_to_chunk is an int: a tensor may not need more chunks than that counts.
    if (numel < 0 || (numel + chunk_size - 1) / chunk_size > INT32_MAX) return PlanStatus::InvalidArgument;
  }
  int slots_used = 0;
  int blocks_used = 0;
  for (size_t t = 0; t < numels.size(); ++t) {
    const int64_t numel = numels[t];
    if (numel == 0) continue;
    // The tensor's slot in the table being filled; 0 once it is carried over into a new table.
    int slot = slots_used++;
    for (int l = 0; l < Depth; ++l) table.addresses[l][slot] = lists[l][t];
    table.numels[slot] = numel;
    const int64_t num_chunks = (numel + chunk_size - 1) / chunk_size;
    for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
      table.block_to_slot[blocks_used] = static_cast<unsigned char>(slot);
      table.block_to_chunk[blocks_used] = static_cast<int>(chunk);
      ++blocks_used;
      const bool last_chunk = chunk == num_chunks - 1;
      const bool blocks_full = blocks_used == Table::kMaxBlocks;
      const bool slots_full = slots_used == Table::kMaxTensors && last_chunk;
      if (blocks_full || slots_full) {
        if (!launch(static_cast<const Table&>(table), blocks_used)) return PlanStatus::LaunchFailed;
        blocks_used = 0;
        if (last_chunk) {
          slots_used = 0;
        } else {
          // The tensor has chunks left: it moves to slot 0 of the next table, and its remaining
          // blocks must name slot 0 (its old slot will be reused by the tensors after it).
          for (int l = 0; l < Depth; ++l) table.addresses[l][0] = table.addresses[l][slot];
          table.numels[0] = numel;
          slot = 0;
          slots_used = 1;
        }
      }
    }
  }
  if (blocks_used > 0 && !launch(static_cast<const Table&>(table), blocks_used)) return PlanStatus::LaunchFailed;
  return PlanStatus::Ok;
}

}  // namespace detail
}  // namespace ampkit_kernels
