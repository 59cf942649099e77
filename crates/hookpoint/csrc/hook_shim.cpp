// Native backward hooks for tch tensors.
//
// tch represents a tensor as a heap-allocated `at::Tensor*` (torch_api.h: `typedef torch::Tensor
// *tensor`). This shim registers a libtorch tensor hook whose body calls back into Rust. Every
// entry point catches C++ exceptions and reports them as strings; the Rust callback never unwinds
// (it catches panics and returns a status instead), and a failed callback is turned into a C++
// exception here so that libtorch aborts the backward pass and tch reports it as an error.

#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

extern "C" {
// Called with the incoming gradient (ownership passes to Rust). Sets *replacement to a new
// heap tensor (ownership passes to C++) or leaves it null. Returns 0 on success; when the Rust
// hook failed, returns non-zero and sets *failure_id to the id under which Rust recorded why.
typedef int (*hp_callback)(void *data, at::Tensor *grad, at::Tensor **replacement,
                           uint64_t *failure_id);
// Frees the Rust state behind `data`; called exactly once, when libtorch drops the hook.
typedef void (*hp_drop)(void *data);
// Called after libtorch accumulated a gradient into a leaf's `.grad`, with the leaf (ownership
// passes to Rust) and the index it was registered under. Never fails: Rust records failures.
typedef void (*hp_leaf_callback)(void *data, size_t index, at::Tensor *leaf);
}

namespace {

char *copy_message(const char *message) {
  size_t n = std::strlen(message);
  char *out = static_cast<char *>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, message, n + 1);
  }
  return out;
}

// Owns the Rust callback state; the hook lambda holds it through a shared_ptr, so the Rust state
// is released exactly when libtorch destroys the hook (removal, or the graph being freed).
struct RustHook {
  hp_callback callback;
  hp_drop drop;
  void *data;
  std::string name;

  RustHook(hp_callback c, hp_drop d, void *p, std::string n)
      : callback(c), drop(d), data(p), name(std::move(n)) {}
  RustHook(const RustHook &) = delete;
  RustHook &operator=(const RustHook &) = delete;
  ~RustHook() { drop(data); }
};

// libtorch's post-accumulate-grad hook (Python's `register_post_accumulate_grad_hook`), calling
// back into Rust. A leaf holds at most one; the Rust side removes it before its state is freed.
struct RustLeafHook : torch::autograd::PostAccumulateGradHook {
  hp_leaf_callback callback;
  void *data;
  size_t index;

  RustLeafHook(hp_leaf_callback c, void *p, size_t i) : callback(c), data(p), index(i) {}
  void operator()(const torch::autograd::Variable &leaf) override {
    callback(data, index, new at::Tensor(leaf));
  }
};

}  // namespace

extern "C" {

void hp_free_string(char *s) { std::free(s); }

// Registers a hook on `tensor`; writes libtorch's hook position to *position.
// Returns null on success, or an error message to be freed with hp_free_string.
char *hp_register_hook(const at::Tensor *tensor, hp_callback callback, hp_drop drop,
                       void *data, const char *name, unsigned *position) {
  // Take ownership of the Rust state first, so it is released on every error path too.
  std::shared_ptr<RustHook> hook;
  try {
    hook = std::make_shared<RustHook>(callback, drop, data, std::string(name));
  } catch (const std::exception &e) {
    drop(data);
    return copy_message(e.what());
  }
  try {
    *position = tensor->register_hook([hook](const at::Tensor &grad) -> at::Tensor {
      at::Tensor *incoming = new at::Tensor(grad);
      at::Tensor *replacement = nullptr;
      uint64_t failure_id = 0;
      int status = hook->callback(hook->data, incoming, &replacement, &failure_id);
      if (status != 0) {
        if (replacement != nullptr) {
          delete replacement;
        }
        // The marker lets hookpoint::backward find the recorded cause of exactly this failure.
        throw std::runtime_error("backward hook '" + hook->name + "' failed [hookpoint failure " +
                                 std::to_string(failure_id) + "]");
      }
      if (replacement == nullptr) {
        return at::Tensor();  // undefined: libtorch keeps the gradient as it is
      }
      at::Tensor out = *replacement;
      delete replacement;
      return out;
    });
  } catch (const std::exception &e) {
    return copy_message(e.what());
  }
  return nullptr;
}

// Sets (callback non-null) or removes (callback null) the accumulated-gradient hook of the leaf
// `tensor`, replacing any it had. Null on success, else an error message.
char *hp_set_leaf_hook(const at::Tensor *tensor, hp_leaf_callback callback, void *data,
                       size_t index) {
  try {
    std::unique_ptr<torch::autograd::PostAccumulateGradHook> hook;
    if (callback != nullptr) {
      hook = std::make_unique<RustLeafHook>(callback, data, index);
    }
    torch::autograd::impl::set_post_acc_grad_hooks(*tensor, std::move(hook));
  } catch (const std::exception &e) {
    return copy_message(e.what());
  }
  return nullptr;
}

// Drops the gradient accumulated on `tensor` (PyTorch's `zero_grad(set_to_none=True)`), freeing
// its memory. Null on success, else an error message.
char *hp_clear_grad(const at::Tensor *tensor) {
  try {
    const_cast<at::Tensor *>(tensor)->mutable_grad().reset();
  } catch (const std::exception &e) {
    return copy_message(e.what());
  }
  return nullptr;
}

// The version counter of `tensor`'s storage (bumped by every in-place change), or -1 when the
// tensor has none (an inference-mode tensor).
int64_t hp_version(const at::Tensor *tensor) {
  try {
    return static_cast<int64_t>(tensor->_version());
  } catch (const std::exception &) {
    return -1;
  }
}

// Whether autograd records operations on this thread (not inside no_grad).
int hp_grad_enabled() { return at::GradMode::is_enabled() ? 1 : 0; }

}  // extern "C"
