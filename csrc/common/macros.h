// Macros shared by every native source: host/device qualifiers that compile in plain C++ too.
#pragma once

#if defined(__CUDACC__)
#define COAVS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define COAVS_HOST_DEVICE inline
#endif
