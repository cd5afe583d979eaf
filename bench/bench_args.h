#pragma once
// Command-line reading shared by the benchmarks: options as "--name value" or "--name=value",
// numbers parsed whole, errors naming the option.

#include <charconv>
#include <optional>
#include <string>
#include <string_view>

#include "sliceserve/shm/status.h"

namespace sliceserve::bench {

// The whole of `text` as a number of type T.
template <typename T>
bool parse_number(std::string_view text, T& out) {
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc() && ptr == end;
}

class ArgReader {
 public:
  ArgReader(int argc, char** argv) : argc_(argc), argv_(argv) {}

  // Moves to the next argument; false when there is none.
  bool next() {
    if (++i_ >= argc_) return false;
    name_ = argv_[i_];
    inline_value_.reset();
    if (const size_t eq = name_.find('=');
        name_.starts_with("--") && eq != std::string_view::npos) {
      inline_value_ = name_.substr(eq + 1);
      name_ = name_.substr(0, eq);
    }
    return true;
  }

  std::string_view name() const { return name_; }

  // The option's value: after '=', else the next argument (consumed); nullopt when there is none.
  std::optional<std::string_view> value() {
    if (inline_value_) return inline_value_;
    if (i_ + 1 >= argc_) return std::nullopt;
    return std::string_view(argv_[++i_]);
  }

  // The value as a number; false when it is missing or not one.
  template <typename T>
  bool number(T& out) {
    const auto text = value();
    return text && parse_number(*text, out);
  }

  Status bad(std::string_view why) const {
    return {ErrorCode::kInvalidArgument, std::string(name_) + ": " + std::string(why)};
  }
  Status unknown() const {
    return {ErrorCode::kInvalidArgument, "unknown option " + std::string(name_)};
  }

 private:
  int argc_;
  char** argv_;
  int i_ = 0;
  std::string_view name_;
  std::optional<std::string_view> inline_value_;
};

}  // namespace sliceserve::bench
