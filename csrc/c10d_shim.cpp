// A small C interface to PyTorch's distributed engine (c10d), as the PyPI torch wheel's
// libtorch_cpu.so carries it: a TCPStore rendezvous and a Gloo process group, with the
// collectives data-parallel training needs (all-reduce, broadcast, all-gather, barrier) on tch's
// tensors in place (tch's `Tensor::as_ptr()` is an `at::Tensor*`). Errors never cross the C
// boundary as exceptions: every call returns 0 or writes the exception's message into `err`.
//
// The same calls torch.distributed makes from Python (ProcessGroupGloo, TCPStore), so convkit
// runs under torchrun and Slurm like any PyTorch program.

#include "c10d_handles.h"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

void put_error(char* err, size_t len, const char* what) {
  if (err == nullptr || len == 0) {
    return;
  }
  std::strncpy(err, what, len - 1);
  err[len - 1] = '\0';
}

// Runs `f`; returns 0, or 1 with the exception's message in `err`.
template <typename F>
int guarded(char* err, size_t len, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    put_error(err, len, e.what());
  } catch (...) {
    put_error(err, len, "unknown C++ exception in c10d");
  }
  return 1;
}

}  // namespace

namespace {
using convkit_shim::GroupHandle;
using convkit_shim::StoreHandle;

void wait(GroupHandle* g, const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait(g->timeout);
}

}  // namespace

extern "C" {

// Connects to (or, with is_server, hosts) the TCPStore at host:port for `world` processes.
void* convkit_store_new(
    const char* host,
    uint16_t port,
    int world,
    int is_server,
    int64_t timeout_ms,
    char* err,
    size_t err_len) {
  StoreHandle* handle = nullptr;
  guarded(err, err_len, [&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<size_t>(world);
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    handle = new StoreHandle{store};
  });
  return handle;
}

void convkit_store_free(void* store) {
  delete static_cast<StoreHandle*>(store);
}

// A Gloo process group of `world` ranks over the store, `prefix` separating groups that share
// it; the device binds to this machine's hostname, or loopback when it does not resolve.
void* convkit_gloo_new(
    void* store,
    const char* prefix,
    int rank,
    int world,
    int64_t timeout_ms,
    char* err,
    size_t err_len) {
  GroupHandle* handle = nullptr;
  guarded(err, err_len, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(
        std::string(prefix), static_cast<StoreHandle*>(store)->store);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    // As torch.distributed: GLOO_SOCKET_IFNAME names the network interface(s) to use, for
    // machines whose hostname resolves to a loopback address.
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    if (ifname != nullptr && *ifname != '\0') {
      std::string names(ifname);
      size_t start = 0;
      while (start <= names.size()) {
        size_t end = names.find(',', start);
        if (end == std::string::npos) end = names.size();
        if (end > start) {
          options->devices.push_back(
              c10d::ProcessGroupGloo::createDeviceForInterface(names.substr(start, end - start)));
        }
        start = end + 1;
      }
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
        prefixed, rank, world, options);
    handle = new GroupHandle{backend, timeout};
  });
  return handle;
}

void convkit_group_free(void* group) {
  delete static_cast<GroupHandle*>(group);
}

// Sums `tensor` across ranks, in place.
int convkit_allreduce_sum(void* group, void* tensor, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto g = static_cast<GroupHandle*>(group);
    std::vector<at::Tensor> tensors{*static_cast<at::Tensor*>(tensor)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    wait(g, g->backend->allreduce(tensors, opts));
  });
}

// Copies rank `root`'s `tensor` to every rank, in place.
int convkit_broadcast(void* group, void* tensor, int root, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto g = static_cast<GroupHandle*>(group);
    std::vector<at::Tensor> tensors{*static_cast<at::Tensor*>(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    wait(g, g->backend->broadcast(tensors, opts));
  });
}

// Gathers every rank's `input` into `output`, rank-major: `output` holds world x input's
// elements, contiguous.
int convkit_allgather(
    void* group,
    void* output,
    void* input,
    char* err,
    size_t err_len) {
  return guarded(err, err_len, [&] {
    auto g = static_cast<GroupHandle*>(group);
    auto& out = *static_cast<at::Tensor*>(output);
    auto& in = *static_cast<at::Tensor*>(input);
    std::vector<at::Tensor> inputs{in};
    std::vector<std::vector<at::Tensor>> outputs(1);
    auto world = g->backend->getSize();
    auto parts = out.chunk(world, 0);
    outputs[0].assign(parts.begin(), parts.end());
    wait(g, g->backend->allgather(outputs, inputs));
  });
}

int convkit_barrier(void* group, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto g = static_cast<GroupHandle*>(group);
    wait(g, g->backend->barrier());
  });
}

}  // extern "C"

namespace {

// An all-reduce (sum) that autograd can differentiate: its backward all-reduces the incoming
// gradient, as PyTorch's SyncBatchNorm does with the gradients of the batch statistics. Every
// rank's backward must reach it, in the same order as the forward passes did.
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(
      torch::autograd::AutogradContext* ctx,
      const at::Tensor& input,
      int64_t group) {
    ctx->saved_data["group"] = group;
    auto g = reinterpret_cast<GroupHandle*>(group);
    auto out = input.detach().contiguous().clone();
    std::vector<at::Tensor> tensors{out};
    wait(g, g->backend->allreduce(tensors));
    return out;
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    auto g = reinterpret_cast<GroupHandle*>(ctx->saved_data["group"].toInt());
    auto grad = grads[0].contiguous().clone();
    std::vector<at::Tensor> tensors{grad};
    wait(g, g->backend->allreduce(tensors));
    return {grad, at::Tensor()};
  }
};

}  // namespace

extern "C" {

// Sums `tensor` across ranks into a new tensor (returned as a heap at::Tensor* for tch to own),
// differentiably: gradients flowing back are summed across ranks too. NULL on error.
void* convkit_allreduce_sum_autograd(
    void* group,
    void* tensor,
    char* err,
    size_t err_len) {
  at::Tensor* result = nullptr;
  guarded(err, err_len, [&] {
    auto& input = *static_cast<at::Tensor*>(tensor);
    auto out = AllReduceSum::apply(input, reinterpret_cast<int64_t>(group));
    result = new at::Tensor(out);
  });
  return result;
}

}  // extern "C"
