// Small kernels that probe the emulated device itself (tests/emulated/test_emulated_device.cpp):
// each launches on the emulated device and returns cudaGetLastError()'s code (0: success).
#pragma once

namespace probe {

// Sums in[0..n) in one block of `threads` threads through shared memory; with_barrier = false
// leaves out the __syncthreads between the writes and the reads (a planted race).
int block_sum(const float* in, int n, int threads, bool with_barrier, float* out);
// Every thread writes its index into one shared slot, with no barrier between the writes.
int shared_write_race(int* out);
// A __syncthreads only half the block reaches.
int divergent_barrier();
// Reads a shared element no thread wrote.
int uninitialised_shared_read(float* out);
// Indexes one past a shared array's end.
int shared_out_of_bounds();
// A full-mask shuffle in a warp of 8 threads.
int partial_warp_shuffle();
// Lane-by-lane results of __shfl_down/up/xor/sync and __ballot/__any/__all in a 64-thread block:
// out[k * 64 + t] for probe k of thread t (7 probes).
int shuffles(int* out);
// A 3-D grid of 3-D blocks: out[global id] = the linear (block, thread) it came from, counted in
// hits[global id].
int indices(int* hits, int* out);
// A launch with 2048 threads per block.
int invalid_launch();

}  // namespace probe
