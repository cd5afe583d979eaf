#include "sliceserve/shm/status.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "sliceserve/shm/check.h"

namespace sliceserve {

std::string_view error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk:
      return "ok";
    case ErrorCode::kInvalidArgument:
      return "invalid argument";
    case ErrorCode::kNotFound:
      return "not found";
    case ErrorCode::kAlreadyExists:
      return "already exists";
    case ErrorCode::kUnknownModel:
      return "unknown model";
    case ErrorCode::kServerGone:
      return "server gone";
    case ErrorCode::kTensorTooLarge:
      return "tensor too large";
    case ErrorCode::kWrongShape:
      return "wrong shape";
    case ErrorCode::kWrongDtype:
      return "wrong dtype";
    case ErrorCode::kUnknownTensor:
      return "unknown tensor";
    case ErrorCode::kTimeout:
      return "timeout";
    case ErrorCode::kBusy:
      return "busy";
    case ErrorCode::kModelError:
      return "model error";
    case ErrorCode::kIncompatible:
      return "incompatible";
    case ErrorCode::kUnavailable:
      return "unavailable";
    case ErrorCode::kInternal:
      return "internal";
  }
  return "unknown";
}

std::string Status::to_string() const {
  if (is_ok()) return "ok";
  return std::string(error_code_name(code_)) + ": " + message_;
}

Status Status::with_context(std::string_view context) const {
  if (is_ok()) return *this;
  return Status(code_, std::string(context) + ": " + message_);
}

Status errno_status(const char* call, int err, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  return Status(ErrorCode::kInternal, std::string(call) + " failed at " + (base ? base + 1 : file) +
                                          ":" + std::to_string(line) + ": " + std::strerror(err));
}

void fatal(const char* condition, const char* file, int line, const std::string& msg) {
  std::fprintf(stderr, "FATAL %s:%d: check failed: %s: %s\n", file, line, condition, msg.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace sliceserve
