// AMPKIT_HOST_DEVICE marks the arithmetic that the CPU kernels (csrc/cpu, g++) and the CUDA kernels
// (kernels/src, nvcc) share, so a rule needed on both devices is written once. Plain C++ when no
// CUDA compiler reads it: the CPU-only build includes these headers without CUDA.
#pragma once

#if defined(__CUDACC__)
#define AMPKIT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define AMPKIT_HOST_DEVICE inline
#endif
