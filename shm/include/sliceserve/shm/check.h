#pragma once
// Checked system calls and fatal invariant checks. A failed system call becomes a Status that
// names the call, the errno text and file:line; a broken invariant aborts loudly.

#include <cerrno>
#include <string>

#include "sliceserve/shm/status.h"

namespace sliceserve {

// Builds "call failed at file:line: strerror(err)".
Status errno_status(const char* call, int err, const char* file, int line);

[[noreturn]] void fatal(const char* condition, const char* file, int line, const std::string& msg);

}  // namespace sliceserve

// Evaluates a call returning -1 on error; returns a Status from the enclosing function on failure.
#define SS_SYSCALL(call)                                                                   \
  do {                                                                                     \
    if ((call) == -1) return ::sliceserve::errno_status(#call, errno, __FILE__, __LINE__); \
  } while (0)

// For invariants that only a bug can break: logs and aborts.
#define SS_CHECK(cond, msg)                                             \
  do {                                                                  \
    if (!(cond)) ::sliceserve::fatal(#cond, __FILE__, __LINE__, (msg)); \
  } while (0)
