// The NCCL half of the c10d shim (see c10d_shim.cpp): a ProcessGroupNCCL over the same store,
// for CUDA tensors. Compiled only when the torch wheel has libtorch_cuda.so and the NCCL and
// CUDA headers are installed (scripts/setup.sh installs nvidia-cuda-crt and nvidia-cuda-cccl
// for the headers the CUDA runtime wheel lacks); the collectives are the shim's, called through
// c10d::Backend.

#include "c10d_handles.h"

#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>
#include <cstring>
#include <string>

// `device`: this rank's GPU, made current first so NCCL's communicator lives there.
extern "C" void* convkit_nccl_new(
    void* store,
    const char* prefix,
    int rank,
    int world,
    int64_t timeout_ms,
    int device,
    char* err,
    size_t err_len) {
  try {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(
        std::string(prefix),
        static_cast<convkit_shim::StoreHandle*>(store)->store);
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = timeout;
    auto backend =
        c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, world, options);
    return new convkit_shim::GroupHandle{backend, timeout};
  } catch (const std::exception& e) {
    if (err != nullptr && err_len > 0) {
      std::strncpy(err, e.what(), err_len - 1);
      err[err_len - 1] = '\0';
    }
  } catch (...) {
    if (err != nullptr && err_len > 0) {
      std::strncpy(err, "unknown C++ exception in c10d (NCCL)", err_len - 1);
      err[err_len - 1] = '\0';
    }
  }
  return nullptr;
}
