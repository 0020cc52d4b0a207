// The handles the shim's C functions pass around, shared by c10d_shim.cpp and c10d_nccl.cpp
// (one definition, so both files agree on the layout).
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

namespace convkit_shim {
struct StoreHandle {
  c10::intrusive_ptr<c10d::Store> store;
};

struct GroupHandle {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};
}  // namespace convkit_shim
