// Declarations only: see ../README.md. ProcessGroupGloo.hpp's inline setTimeout names
// Context::setTimeout; the shim never calls it, so no definition is needed.
#pragma once
#include <chrono>
namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
