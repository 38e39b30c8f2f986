// AMPKIT_HOST_DEVICE marks the arithmetic that the CPU kernels (csrc/cpu, g++) and the CUDA kernels
// (kernels/src, nvcc) share, so a rule needed on both devices is written once. Plain C++ when no
// CUDA compiler reads it: the CPU-only build includes these headers without CUDA.
#pragma once

// On the host they are always inlined: the CPU's vector loops instantiate them with vector types
// inside functions compiled for AVX2/AVX-512 (target attributes), and an out-of-line copy compiled
// for the baseline ISA would take and return those vectors under another calling convention.
#if defined(__CUDACC__)
#define AMPKIT_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define AMPKIT_HOST_DEVICE inline __attribute__((always_inline))
#else
#define AMPKIT_HOST_DEVICE inline
#endif
