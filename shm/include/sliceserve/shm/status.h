#pragma once
// Recoverable errors as values: Status and Result<T>, propagated with RETURN_IF_ERROR /
// ASSIGN_OR_RETURN. Broken invariants abort through SS_CHECK (see check.h).

#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace sliceserve {

enum class ErrorCode {
  kOk = 0,
  kInvalidArgument,  // bad input from the caller: config, command line, request
  kNotFound,         // no such model / segment / file
  kAlreadyExists,    // a live owner holds the name
  kUnknownModel,     // client: no model of that name is served
  kServerGone,       // client: the controller or segment went away
  kTensorTooLarge,   // client: request does not fit a slot
  kWrongShape,       // request tensor shape differs from the model's declaration
  kWrongDtype,       // request tensor dtype differs from the model's declaration
  kUnknownTensor,    // request names a tensor the model does not declare
  kTimeout,          // deadline passed before completion
  kBusy,             // no free slot / lane
  kModelError,       // the model failed to run the request
  kIncompatible,     // layout version or checksum mismatch
  kUnavailable,      // resource missing on this machine (device, cgroup, ...)
  kInternal,         // a system call failed
};

std::string_view error_code_name(ErrorCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok() { return {}; }

  bool is_ok() const { return code_ == ErrorCode::kOk; }
  explicit operator bool() const { return is_ok(); }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "kind: message", for logs and CLI output.
  std::string to_string() const;
  // Prefixes context ("while loading model x: ...") keeping the code.
  Status with_context(std::string_view context) const;

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : value_(std::move(status)) {}  // NOLINT: implicit by design

  bool is_ok() const { return std::holds_alternative<T>(value_); }
  explicit operator bool() const { return is_ok(); }
  Status status() const { return is_ok() ? Status::ok() : std::get<Status>(value_); }
  T& value() & { return std::get<T>(value_); }
  const T& value() const& { return std::get<T>(value_); }
  T&& value() && { return std::get<T>(std::move(value_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> value_;
};

}  // namespace sliceserve

#define SS_CONCAT_INNER(a, b) a##b
#define SS_CONCAT(a, b) SS_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                   \
  do {                                          \
    ::sliceserve::Status ss_status_ = (expr);   \
    if (!ss_status_.is_ok()) return ss_status_; \
  } while (0)

#define SS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.is_ok()) return tmp.status();         \
  lhs = std::move(tmp).value()

#define ASSIGN_OR_RETURN(lhs, expr) \
  SS_ASSIGN_OR_RETURN_IMPL(SS_CONCAT(ss_result_, __LINE__), lhs, expr)
