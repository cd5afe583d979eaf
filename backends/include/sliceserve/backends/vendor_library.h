#pragma once
// Vendor libraries (the CUDA driver, cuDNN, cuBLAS, the HIP runtime) are opened with dlopen at
// run time, so that every binary starts on a machine without them. What every wing's loader and
// check macros share: resolving a function, and the text of a failed call.

#include <string>
#include <string_view>

namespace sliceserve::backends {

// The address of `symbol` in the dlopen handle, or nullptr.
void* find_symbol(void* handle, const char* symbol);

// Stores `symbol`'s address in *fn; false when the library has no such symbol.
template <typename Fn>
bool resolve_symbol(void* handle, const char* symbol, Fn* fn) {
  void* address = find_symbol(handle, symbol);
  if (address == nullptr) return false;
  *fn = reinterpret_cast<Fn>(address);
  return true;
}

// "<call>: <error> at file:line", the message of every failed vendor call: `call` is its source
// text, a leading "api." / "api_->" dropped (the member access is noise in a message).
std::string call_failure(const char* call, std::string_view error, const char* file, int line);

}  // namespace sliceserve::backends
