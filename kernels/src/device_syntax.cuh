// The two pieces of kernel syntax that g++ cannot read, written so that nvcc and the emulated
// device (kernels/emulated) compile the same kernel bodies:
//   AMPKIT_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...)  is  kernel<<<...>>>(args...)
//   AMPKIT_SHARED_ARRAY(T, name, N);                                    is  __shared__ T name[N];
// (the emulated device checks every shared-memory access, so shared arrays are declared this way).
#pragma once

#if !defined(AMPKIT_EMULATED_DEVICE)
#define AMPKIT_LAUNCH(grid, block, shared_bytes, stream, ...) __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
#define AMPKIT_SHARED_ARRAY(T, name, N) __shared__ T name[N]
#endif
