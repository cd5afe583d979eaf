#include "sliceserve/backends/vendor_library.h"

#include <dlfcn.h>

#include <cstring>

namespace sliceserve::backends {

void* find_symbol(void* handle, const char* symbol) {
  dlerror();  // clear a stale error
  return dlsym(handle, symbol);
}

std::string call_failure(const char* call, std::string_view error, const char* file, int line) {
  std::string text(call);
  const size_t paren = text.find('(');
  const size_t head = text.substr(0, paren).find_last_of(".>");
  if (head != std::string::npos) text.erase(0, head + 1);
  const char* base = std::strrchr(file, '/');
  return text + ": " + std::string(error) + " at " + (base != nullptr ? base + 1 : file) + ":" +
         std::to_string(line);
}

}  // namespace sliceserve::backends
