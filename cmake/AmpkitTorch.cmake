# Imported targets for the LibTorch that ships inside a torch Python package.
#
# We do not call find_package(Torch): for a CUDA build of torch its config insists on a CUDA
# toolkit (so AMPKIT_CUDA=OFF could not build on a machine without nvcc) and it overrides
# CMAKE_CUDA_ARCHITECTURES with its own arch list. The libraries and headers are all we need.
#
# Input:  AMPKIT_TORCH_PREFIX (the torch package directory, holding include/ and lib/), or
#         Python3_EXECUTABLE / the `python3` on PATH to ask `torch.utils.cmake_prefix_path`.
# Output: ampkit_torch::cpu, ampkit_torch::cuda (if libtorch_cuda exists),
#         AMPKIT_TORCH_VERSION, AMPKIT_TORCH_CUDA_VERSION ("" for a CPU-only torch).

if(TARGET ampkit_torch::cpu)
  return()
endif()

if(NOT AMPKIT_TORCH_PREFIX)
  if(NOT AMPKIT_PYTHON)
    if(Python3_EXECUTABLE)
      set(AMPKIT_PYTHON "${Python3_EXECUTABLE}")
    else()
      find_program(AMPKIT_PYTHON NAMES python3 python REQUIRED)
    endif()
  endif()
  execute_process(
    COMMAND "${AMPKIT_PYTHON}" -c "import os, torch.utils; print(os.path.dirname(os.path.dirname(torch.utils.cmake_prefix_path)))"
    OUTPUT_VARIABLE _ampkit_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _ampkit_torch_rc ERROR_QUIET)
  if(NOT _ampkit_torch_rc EQUAL 0 OR NOT _ampkit_torch_prefix)
    message(FATAL_ERROR "ampkit: could not import torch with ${AMPKIT_PYTHON}; "
                        "set AMPKIT_TORCH_PREFIX to the torch package directory or AMPKIT_PYTHON to a Python that has torch.")
  endif()
  set(AMPKIT_TORCH_PREFIX "${_ampkit_torch_prefix}" CACHE PATH "torch package directory (include/, lib/)")
endif()

if(NOT EXISTS "${AMPKIT_TORCH_PREFIX}/include/ATen/ATen.h" OR NOT EXISTS "${AMPKIT_TORCH_PREFIX}/lib")
  message(FATAL_ERROR "ampkit: AMPKIT_TORCH_PREFIX=${AMPKIT_TORCH_PREFIX} holds no LibTorch (expected include/ATen/ATen.h and lib/)")
endif()

# torch/version.h records the version the headers belong to.
file(STRINGS "${AMPKIT_TORCH_PREFIX}/include/torch/headeronly/version.h" _ampkit_version_lines REGEX "#define TORCH_VERSION_(MAJOR|MINOR|PATCH) ")
foreach(_line IN LISTS _ampkit_version_lines)
  if(_line MATCHES "TORCH_VERSION_(MAJOR|MINOR|PATCH) ([0-9]+)")
    set(_ampkit_torch_${CMAKE_MATCH_1} ${CMAKE_MATCH_2})
  endif()
endforeach()
set(AMPKIT_TORCH_VERSION "${_ampkit_torch_MAJOR}.${_ampkit_torch_MINOR}.${_ampkit_torch_PATCH}")

function(_ampkit_torch_library target name)
  find_library(_lib_${name} NAMES ${name} PATHS "${AMPKIT_TORCH_PREFIX}/lib" NO_DEFAULT_PATH)
  if(NOT _lib_${name})
    set(_ampkit_missing_${name} TRUE PARENT_SCOPE)
    return()
  endif()
  add_library(${target} SHARED IMPORTED)
  set_target_properties(${target} PROPERTIES IMPORTED_LOCATION "${_lib_${name}}")
endfunction()

_ampkit_torch_library(ampkit_torch::c10 c10)
_ampkit_torch_library(ampkit_torch::torch_cpu torch_cpu)
_ampkit_torch_library(ampkit_torch::torch torch)
_ampkit_torch_library(ampkit_torch::c10_cuda c10_cuda)
_ampkit_torch_library(ampkit_torch::torch_cuda torch_cuda)
if(_ampkit_missing_c10 OR _ampkit_missing_torch_cpu OR _ampkit_missing_torch)
  message(FATAL_ERROR "ampkit: libc10/libtorch_cpu/libtorch not found under ${AMPKIT_TORCH_PREFIX}/lib")
endif()

add_library(ampkit_torch::cpu INTERFACE IMPORTED)
set_target_properties(ampkit_torch::cpu PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "${AMPKIT_TORCH_PREFIX}/include;${AMPKIT_TORCH_PREFIX}/include/torch/csrc/api/include"
  INTERFACE_LINK_LIBRARIES "ampkit_torch::torch;ampkit_torch::torch_cpu;ampkit_torch::c10"
  # torch >= 2.7 wheels use the C++11 ABI, as g++ does by default.
  INTERFACE_COMPILE_DEFINITIONS "_GLIBCXX_USE_CXX11_ABI=1")

set(AMPKIT_TORCH_HAS_CUDA FALSE)
if(TARGET ampkit_torch::torch_cuda AND TARGET ampkit_torch::c10_cuda)
  set(AMPKIT_TORCH_HAS_CUDA TRUE)
  add_library(ampkit_torch::cuda INTERFACE IMPORTED)
  set_target_properties(ampkit_torch::cuda PROPERTIES
    INTERFACE_LINK_LIBRARIES "ampkit_torch::torch_cuda;ampkit_torch::c10_cuda;ampkit_torch::cpu")
endif()

message(STATUS "ampkit: LibTorch ${AMPKIT_TORCH_VERSION} at ${AMPKIT_TORCH_PREFIX} (CUDA libraries: ${AMPKIT_TORCH_HAS_CUDA})")
