#include "sliceserve/controller/config.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "sliceserve/backends/layer_profile.h"
#include "sliceserve/shm/layout.h"
#include "sliceserve/worker/model.h"

#ifdef SLICESERVE_HAVE_CUDA
#include "sliceserve/backends/cuda/cuda_device_slice.h"
#include "sliceserve/backends/cuda/mps_control.h"
#endif

namespace sliceserve::controller {
namespace {

constexpr double kDeviceShare = 100.0;                  // a slice is a percent of the device
constexpr double kSliceEpsilon = 1e-9;                  // so 33.3 + 33.3 + 33.4 fits
constexpr uint64_t kMaxItemBytes = uint64_t{64} << 20;  // inputs + outputs of one item
constexpr size_t kMaxNameLength = 48;                   // model and instance names
constexpr int64_t kMaxCores = 1024;                     // CPU_SETSIZE
constexpr int64_t kMaxU32 = std::numeric_limits<uint32_t>::max();
constexpr off_t kMaxConfigFileBytes = off_t{16} << 20;

constexpr std::string_view kTopLevelKeys[] = {"server", "backend", "policy", "model"};
constexpr std::string_view kPolicyKeys[] = {"enabled",
                                            "min_slice",
                                            "min_step",
                                            "grow_p99_fraction",
                                            "shrink_p99_fraction",
                                            "shrink_after",
                                            "cooldown",
                                            "target_utilization",
                                            "resize_timeout_ms",
                                            "failed_resize_backoff_ms"};
constexpr std::string_view kServerKeys[] = {"instance",
                                            "backend",
                                            "policy_interval_ms",
                                            "log_level",
                                            "tcp",
                                            "http",
                                            "token",
                                            "tcp_max_connections",
                                            "tcp_idle_timeout_ms",
                                            "tcp_io_threads",
                                            "io_poll_us",
                                            "http_max_body_mb",
                                            "worker_binary",
                                            "restart_backoff_min_ms",
                                            "restart_backoff_max_ms",
                                            "worker_ready_timeout_ms",
                                            "shutdown_grace_ms"};
constexpr std::string_view kBackendKeys[] = {"cpu", "mps", "greenctx", "cumask"};
constexpr std::string_view kCpuKeys[] = {"mode", "cores"};
constexpr std::string_view kMpsKeys[] = {"control",  "pipe_dir",          "log_dir",
                                         "fallback", "thread_percentage", "device"};
constexpr std::string_view kGreenctxKeys[] = {"device", "mps"};
constexpr std::string_view kCumaskKeys[] = {"device", "policy", "shader_engines", "wgp"};
constexpr std::string_view kCumaskPolicies[] = {"spread", "pack"};
constexpr int64_t kMaxShaderEngines = 64;  // backends::kMaxShaderEngines (cu_mask.h)
constexpr std::string_view kModelKeys[] = {"name",
                                           "kind",
                                           "path",
                                           "slo_ms",
                                           "slice",
                                           "max_batch",
                                           "max_queue_delay_us",
                                           "flops_per_item",
                                           "working_set_kb",
                                           "weights_mb",
                                           "load_delay_ms",
                                           "backend",
                                           "device_mem_mb",
                                           "policy",
                                           "profile",
                                           "right_size",
                                           "lanes",
                                           "slots_per_lane",
                                           "inputs",
                                           "outputs"};
constexpr std::string_view kTensorKeys[] = {"name", "dtype", "shape"};

constexpr std::string_view kBackends[] = {"cpu", "mps", "greenctx", "cumask"};
constexpr std::string_view kLogLevels[] = {"trace", "debug", "info", "warn", "error", "off"};
constexpr std::string_view kKinds[] = {"synthetic", "null", "onnx"};
constexpr std::string_view kCpuModes[] = {"process", "affinity"};
constexpr std::string_view kMpsControls[] = {"start", "attach", "off"};
constexpr std::string_view kMpsFallbacks[] = {"error", "timeshare"};
constexpr std::string_view kMpsThreadPercentages[] = {"slice", "full"};
constexpr int64_t kMaxDeviceOrdinal = 1023;
constexpr int64_t kMaxDeviceMemMb = int64_t{1} << 24;  // 16 TiB

#ifdef SLICESERVE_HAVE_CUDA
constexpr bool kHaveCuda = true;
#else
constexpr bool kHaveCuda = false;
#endif
#ifdef SLICESERVE_HAVE_HIP
constexpr bool kHaveHip = true;
#else
constexpr bool kHaveHip = false;
#endif
constexpr std::string_view kAvailableBackends =
    kHaveCuda ? (kHaveHip ? "cpu:process, cpu:affinity, mps, greenctx, cumask"
                          : "cpu:process, cpu:affinity, mps, greenctx")
              : (kHaveHip ? "cpu:process, cpu:affinity, cumask" : "cpu:process, cpu:affinity");

// A [backend.*] table or [server] backend this build has: cpu always, mps and greenctx with the
// cuda wing, cumask with the hip wing.
bool backend_built(std::string_view name) {
  if (name == "cpu") return true;
  if (name == "mps" || name == "greenctx") return kHaveCuda;
  return name == "cumask" && kHaveHip;
}

bool contains(std::span<const std::string_view> set, std::string_view item) {
  return std::find(set.begin(), set.end(), item) != set.end();
}

std::string join_choices(std::span<const std::string_view> set) {
  std::string out;
  for (size_t i = 0; i < set.size(); ++i) {
    if (i > 0) out += ", ";
    out += set[i];
  }
  return out;
}

std::string join_key(std::string_view prefix, std::string_view key) {
  if (prefix.empty()) return std::string(key);
  return fmt::format("{}.{}", prefix, key);
}

// [A-Za-z0-9_-]{1,48}
bool is_valid_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

bool is_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool is_hostname_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '_';
}

bool is_ipv6_char(char c) {
  return (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || (c >= '0' && c <= '9') || c == ':' ||
         c == '.';
}

// "host:port", "[v6addr]:port"; port 1..65535.
bool is_valid_host_port(std::string_view text) {
  const size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return false;
  const std::string_view host = text.substr(0, colon);
  const std::string_view port = text.substr(colon + 1);
  if (!is_digits(port) || port.size() > 5) return false;
  const int port_number = std::stoi(std::string(port));
  if (port_number < 1 || port_number > 65535) return false;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    const std::string_view inner = host.substr(1, host.size() - 2);
    return !inner.empty() && std::all_of(inner.begin(), inner.end(), is_ipv6_char);
  }
  return !host.empty() && std::all_of(host.begin(), host.end(), is_hostname_char);
}

bool has_control_chars(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
  });
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string_view type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

// 130 -> "130", 100.5 -> "100.5".
std::string format_number(double value) { return fmt::format("{:g}", value); }

uint64_t saturating_mul(uint64_t a, uint64_t b) {
  uint64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) return std::numeric_limits<uint64_t>::max();
  return product;
}

uint64_t saturating_add(uint64_t a, uint64_t b) {
  uint64_t sum = 0;
  if (__builtin_add_overflow(a, b, &sum)) return std::numeric_limits<uint64_t>::max();
  return sum;
}

uint64_t tensor_bytes(const TensorConfig& tensor) {
  uint64_t bytes = shm::data_type_size(tensor.dtype);
  for (int64_t dim : tensor.shape) bytes = saturating_mul(bytes, static_cast<uint64_t>(dim));
  return bytes;
}

// Owns a file descriptor for read_file.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

Result<std::string> read_file(const std::string& path) {
  auto cannot_open = [&path](int err) {
    const ErrorCode code =
        (err == ENOENT || err == ENOTDIR) ? ErrorCode::kNotFound : ErrorCode::kInvalidArgument;
    return Status(code, fmt::format("{}: cannot open: {}", path, std::strerror(err)));
  };
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return cannot_open(errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return cannot_open(errno);
  if (S_ISDIR(st.st_mode)) return cannot_open(EISDIR);
  if (st.st_size > kMaxConfigFileBytes) {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("{}: file too large ({} bytes, at most {})", path, st.st_size,
                              kMaxConfigFileBytes));
  }
  std::string text;
  char buffer[8192];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("{}: cannot read: {}", path, std::strerror(errno)));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
    if (static_cast<off_t>(text.size()) > kMaxConfigFileBytes) {
      return Status(
          ErrorCode::kInvalidArgument,
          fmt::format("{}: file too large (more than {} bytes)", path, kMaxConfigFileBytes));
    }
  }
  return text;
}

// Walks the parsed document, fills a Config and records every problem with its position; the
// earliest one in the file is reported.
class ConfigParser {
 public:
  explicit ConfigParser(const std::string& source_name)
      : file_(source_name), base_dir_(std::filesystem::path(source_name).parent_path()) {}
  // For a model loaded at run time: relative paths resolve against `base_dir`; `lines` says
  // whether the document has lines to name (TOML text) or not (converted from JSON).
  ConfigParser(const std::string& source_name, std::filesystem::path base_dir, bool lines)
      : file_(source_name), base_dir_(std::move(base_dir)), lines_(lines) {}

  Result<toml::table> parse_text(std::string_view text) {
    try {
      return toml::parse(text, file_);
    } catch (const toml::parse_error& e) {
      const toml::source_position pos = e.source().begin;
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("{}:{}:{}: {}", file_, std::max<uint32_t>(pos.line, 1),
                                std::max<uint32_t>(pos.column, 1), e.description()));
    } catch (const std::exception& e) {
      return Status(ErrorCode::kInternal, fmt::format("{}: cannot parse: {}", file_, e.what()));
    }
  }

  // A document holding one [[model]] table and nothing else, checked as a config file's model
  // is, on the backends of `base`. Names already served are the caller's to check.
  Result<ModelConfig> parse_loaded_model(const toml::table& root, const Config& base) {
    ModelConfig model;
    constexpr std::string_view kOnlyModel[] = {"model"};
    check_keys(root, "", kOnlyModel);
    const toml::node* node = root.get("model");
    const toml::array* array = node ? node->as_array() : nullptr;
    const toml::table* table =
        array && array->size() == 1 ? array->get(0)->as_table() : nullptr;
    if (!table) {
      report(node ? *node : static_cast<const toml::node&>(root), "model",
             "the request must hold exactly one model table ([[model]])");
      issues_.back().missing = true;
    } else {
      parse_model(*table, "model", model);
      check_model_backend(*table, "model", base, model);
    }
    RETURN_IF_ERROR(first_issue(/*values_first=*/true));
    return model;
  }

  Result<Config> parse(std::string_view text) {
    toml::table root;
    try {
      root = toml::parse(text, file_);
    } catch (const toml::parse_error& e) {
      const toml::source_position pos = e.source().begin;
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("{}:{}:{}: {}", file_, std::max<uint32_t>(pos.line, 1),
                                std::max<uint32_t>(pos.column, 1), e.description()));
    } catch (const std::exception& e) {
      return Status(ErrorCode::kInternal, fmt::format("{}: cannot parse: {}", file_, e.what()));
    }

    Config config;
    check_keys(root, "", kTopLevelKeys);
    parse_server(root, config.server);
    parse_backend(root, config);
    parse_policy(root, config.policy);
    parse_models(root, config);
    RETURN_IF_ERROR(first_issue());
    return config;
  }

 private:
  // The earliest problem in the document, or ok.
  // A loaded model's document is short and its missing keys are reported at the table's start,
  // so there a wrong value or key (`values_first`) is named before what is missing.
  Status first_issue(bool values_first = false) const {
    if (issues_.empty()) return Status::ok();
    const auto first = std::min_element(
        issues_.begin(), issues_.end(), [values_first](const Issue& a, const Issue& b) {
          if (values_first && a.missing != b.missing) return b.missing;
          return a.pos.line != b.pos.line ? a.pos.line < b.pos.line : a.pos.column < b.pos.column;
        });
    return Status(ErrorCode::kInvalidArgument, first->text);
  }

  struct Issue {
    toml::source_position pos;
    std::string text;
    bool missing = false;  // a required key or table is absent
  };

  // Where the first model's name and slice were seen, for the checks across models.
  struct ModelMarks {
    std::optional<toml::source_position> name_pos;
    std::optional<toml::source_position> slice_pos;
  };

  static toml::source_position position(const toml::source_region& region) {
    toml::source_position pos = region.begin;
    if (pos.line == 0) pos.line = 1;
    if (pos.column == 0) pos.column = 1;
    return pos;
  }
  static toml::source_position position(const toml::node& node) { return position(node.source()); }

  void report(toml::source_position pos, std::string_view key, std::string_view what) {
    issues_.push_back({pos, lines_ ? fmt::format("{}:{}: key '{}': {}", file_, pos.line, key, what)
                                   : fmt::format("{}: key '{}': {}", file_, key, what)});
  }
  void report(const toml::node& node, std::string_view key, std::string_view what) {
    report(position(node), key, what);
  }
  // Reports a problem with the value of an existing key.
  void report_value(const toml::table& table, std::string_view prefix, std::string_view key,
                    std::string_view what) {
    const toml::node* node = table.get(key);
    report(node ? position(*node) : position(table), join_key(prefix, key), what);
  }

  void check_keys(const toml::table& table, std::string_view prefix,
                  std::span<const std::string_view> allowed) {
    for (const auto& [key, value] : table) {
      if (contains(allowed, key.str())) continue;
      std::string what = "unknown key";
      for (std::string_view candidate : allowed) {
        if (edit_distance(key.str(), candidate) <= 2) {
          what += fmt::format(" (did you mean '{}'?)", candidate);
          break;
        }
      }
      const toml::source_position pos =
          key.source().begin.line != 0 ? position(key.source()) : position(value);
      report(pos, join_key(prefix, key.str()), what);
    }
  }

  bool require(const toml::table& table, std::string_view prefix, std::string_view key) {
    if (table.contains(key)) return true;
    report(table, join_key(prefix, key), "missing required key");
    issues_.back().missing = true;
    return false;
  }

  // The read_* helpers return nullopt when the key is absent (no issue) or its value has the
  // wrong type or range (issue recorded).
  std::optional<std::string> read_string(const toml::table& table, std::string_view prefix,
                                         std::string_view key) {
    const toml::node* node = table.get(key);
    if (!node) return std::nullopt;
    if (const auto* value = node->as_string()) return value->get();
    report(*node, join_key(prefix, key), fmt::format("must be a string, not {}", type_name(*node)));
    return std::nullopt;
  }

  std::optional<std::string> read_choice(const toml::table& table, std::string_view prefix,
                                         std::string_view key,
                                         std::span<const std::string_view> choices) {
    std::optional<std::string> value = read_string(table, prefix, key);
    if (!value || contains(choices, *value)) return value;
    report_value(table, prefix, key,
                 fmt::format("must be one of {}; got '{}'", join_choices(choices), *value));
    return std::nullopt;
  }

  std::optional<int64_t> read_int(const toml::table& table, std::string_view prefix,
                                  std::string_view key, int64_t lo, int64_t hi) {
    const toml::node* node = table.get(key);
    if (!node) return std::nullopt;
    const auto* value = node->as_integer();
    if (!value) {
      report(*node, join_key(prefix, key),
             fmt::format("must be an integer, not {}", type_name(*node)));
      return std::nullopt;
    }
    const int64_t v = value->get();
    if (v >= lo && v <= hi) return v;
    std::string what;
    if (hi == kMaxU32 && lo == 1) {
      what = fmt::format("must be > 0, got {}", v);
    } else if (hi == kMaxU32) {
      what = fmt::format("must be >= {}, got {}", lo, v);
    } else {
      what = fmt::format("must be in {}..{}, got {}", lo, hi, v);
    }
    report(*node, join_key(prefix, key), what);
    return std::nullopt;
  }

  void read_u32(const toml::table& table, std::string_view prefix, std::string_view key, int64_t lo,
                int64_t hi, uint32_t& out) {
    if (auto v = read_int(table, prefix, key, lo, hi)) out = static_cast<uint32_t>(*v);
  }

  std::optional<bool> read_bool(const toml::table& table, std::string_view prefix,
                                std::string_view key) {
    const toml::node* node = table.get(key);
    if (!node) return std::nullopt;
    if (const auto* value = node->as_boolean()) return value->get();
    report(*node, join_key(prefix, key),
           fmt::format("must be true or false, not {}", type_name(*node)));
    return std::nullopt;
  }

  // A number in [lo, hi] into `out`; out of range is reported.
  void read_fraction(const toml::table& table, std::string_view prefix, std::string_view key,
                     double lo, double hi, double& out) {
    if (auto v = read_number(table, prefix, key)) {
      if (*v >= lo && *v <= hi) {
        out = *v;
      } else {
        report_value(table, prefix, key,
                     fmt::format("must be in [{}, {}], got {}", format_number(lo),
                                 format_number(hi), format_number(*v)));
      }
    }
  }

  // Integers are accepted where a float is expected; nan and inf are not.
  std::optional<double> read_number(const toml::table& table, std::string_view prefix,
                                    std::string_view key) {
    const toml::node* node = table.get(key);
    if (!node) return std::nullopt;
    if (const auto* i = node->as_integer()) return static_cast<double>(i->get());
    if (const auto* f = node->as_floating_point()) {
      if (std::isfinite(f->get())) return f->get();
      report(*node, join_key(prefix, key), "must be a finite number");
      return std::nullopt;
    }
    report(*node, join_key(prefix, key), fmt::format("must be a number, not {}", type_name(*node)));
    return std::nullopt;
  }

  // A table-valued key: nullptr when absent or not a table (issue recorded).
  const toml::table* read_table(const toml::table& parent, std::string_view prefix,
                                std::string_view key) {
    const toml::node* node = parent.get(key);
    if (!node) return nullptr;
    if (const auto* table = node->as_table()) return table;
    report(*node, join_key(prefix, key), fmt::format("must be a table, not {}", type_name(*node)));
    return nullptr;
  }

  void parse_server(const toml::table& root, ServerConfig& server) {
    const toml::table* table = read_table(root, "", "server");
    if (!table) return;
    constexpr std::string_view kPrefix = "server";
    check_keys(*table, kPrefix, kServerKeys);

    if (auto instance = read_string(*table, kPrefix, "instance")) {
      if (is_valid_name(*instance)) {
        server.instance = *instance;
      } else {
        report_value(
            *table, kPrefix, "instance",
            fmt::format("must match [A-Za-z0-9_-]{{1,{}}}; got '{}'", kMaxNameLength, *instance));
      }
    }
    if (auto backend = read_choice(*table, kPrefix, "backend", kBackends)) {
      if (backend_built(*backend)) {
        server.backend = *backend;
      } else {
        report_value(*table, kPrefix, "backend",
                     fmt::format("backend '{}' is not available in this build", *backend));
      }
    }
    read_u32(*table, kPrefix, "policy_interval_ms", 1, kMaxU32, server.policy_interval_ms);
    if (auto level = read_choice(*table, kPrefix, "log_level", kLogLevels)) {
      server.log_level = *level;
    }
    for (auto [key, out] : {std::pair{std::string_view("tcp"), &server.tcp},
                            std::pair{std::string_view("http"), &server.http}}) {
      if (auto address = read_string(*table, kPrefix, key)) {
        // An empty address turns the front-end off.
        if (address->empty() || is_valid_host_port(*address)) {
          *out = *address;
        } else {
          report_value(*table, kPrefix, key,
                       fmt::format("must be host:port with a port in 1..65535, or empty; got '{}'",
                                   *address));
        }
      }
    }
    if (auto token = read_string(*table, kPrefix, "token")) {
      if (!token->empty() && (token->size() < kMinTokenBytes || has_control_chars(*token))) {
        report_value(*table, kPrefix, "token",
                     fmt::format("must be at least {} characters without control characters",
                                 kMinTokenBytes));
      } else {
        server.token = *token;
      }
    }
    server.tcp_configured = table->contains("tcp");
    server.http_configured = table->contains("http");
    read_u32(*table, kPrefix, "tcp_max_connections", 1, 65535, server.tcp_max_connections);
    read_u32(*table, kPrefix, "tcp_idle_timeout_ms", 1, kMaxU32, server.tcp_idle_timeout_ms);
    read_u32(*table, kPrefix, "tcp_io_threads", 0, 64, server.tcp_io_threads);
    read_u32(*table, kPrefix, "io_poll_us", 0, 1'000'000, server.io_poll_us);
    read_u32(*table, kPrefix, "http_max_body_mb", 1, 4096, server.http_max_body_mb);
    if (auto binary = read_string(*table, kPrefix, "worker_binary")) {
      server.worker_binary = *binary;
    }
    const auto backoff_min = read_int(*table, kPrefix, "restart_backoff_min_ms", 1, kMaxU32);
    const auto backoff_max = read_int(*table, kPrefix, "restart_backoff_max_ms", 1, kMaxU32);
    if (backoff_min) server.restart_backoff_min_ms = static_cast<uint32_t>(*backoff_min);
    if (backoff_max) server.restart_backoff_max_ms = static_cast<uint32_t>(*backoff_max);
    const bool has_min = table->contains("restart_backoff_min_ms");
    const bool min_ok = !has_min || backoff_min;
    const bool max_ok = !table->contains("restart_backoff_max_ms") || backoff_max;
    if (min_ok && max_ok && server.restart_backoff_min_ms > server.restart_backoff_max_ms) {
      if (has_min) {
        report_value(*table, kPrefix, "restart_backoff_min_ms",
                     fmt::format("must be <= restart_backoff_max_ms ({}), got {}",
                                 server.restart_backoff_max_ms, server.restart_backoff_min_ms));
      } else {
        report_value(*table, kPrefix, "restart_backoff_max_ms",
                     fmt::format("must be >= restart_backoff_min_ms ({}), got {}",
                                 server.restart_backoff_min_ms, server.restart_backoff_max_ms));
      }
    }
    read_u32(*table, kPrefix, "worker_ready_timeout_ms", 1, kMaxU32,
             server.worker_ready_timeout_ms);
    read_u32(*table, kPrefix, "shutdown_grace_ms", 0, kMaxU32, server.shutdown_grace_ms);
  }

  void parse_backend(const toml::table& root, Config& config) {
    const toml::table* backend = read_table(root, "", "backend");
    if (!backend) return;
    for (const auto& [key, value] : *backend) {
      if (contains(kBackendKeys, key.str()) && backend_built(key.str())) continue;
      const toml::source_position pos =
          key.source().begin.line != 0 ? position(key.source()) : position(value);
      report(pos, join_key("backend", key.str()),
             kHaveCuda ? (kHaveHip ? "unknown key (the backends are cpu, mps, greenctx and cumask)"
                                   : "unknown key (the backends are cpu, mps and greenctx)")
                       : (kHaveHip ? "unknown key (the backends are cpu and cumask)"
                                   : "unknown key (only [backend.cpu] exists in this build)"));
    }
    if (const toml::table* table = read_table(*backend, "backend", "cpu")) {
      constexpr std::string_view kPrefix = "backend.cpu";
      check_keys(*table, kPrefix, kCpuKeys);
      if (auto mode = read_choice(*table, kPrefix, "mode", kCpuModes)) {
        config.cpu.mode = *mode == "affinity" ? CpuMode::kAffinity : CpuMode::kProcess;
      }
      read_u32(*table, kPrefix, "cores", 0, kMaxCores, config.cpu.cores);
    }
    if (kHaveHip) {
      if (const toml::table* table = read_table(*backend, "backend", "cumask")) {
        parse_cumask(*table, config.cumask);
      }
    }
    if (!kHaveCuda) return;
    if (const toml::table* table = read_table(*backend, "backend", "mps")) {
      parse_mps(*table, config.mps);
    }
    if (const toml::table* table = read_table(*backend, "backend", "greenctx")) {
      constexpr std::string_view kPrefix = "backend.greenctx";
      check_keys(*table, kPrefix, kGreenctxKeys);
      read_u32(*table, kPrefix, "device", 0, kMaxDeviceOrdinal, config.greenctx.device);
      if (auto mps = read_bool(*table, kPrefix, "mps")) config.greenctx.mps = *mps;
    }
  }

  void parse_cumask(const toml::table& table, CumaskBackendConfig& cumask) {
    constexpr std::string_view kPrefix = "backend.cumask";
    check_keys(table, kPrefix, kCumaskKeys);
    read_u32(table, kPrefix, "device", 0, kMaxDeviceOrdinal, cumask.device);
    if (auto policy = read_choice(table, kPrefix, "policy", kCumaskPolicies)) {
      cumask.policy = *policy == "pack" ? CumaskPolicy::kPack : CumaskPolicy::kSpread;
    }
    // 0 is "from the device"; whether the count divides the device's CUs is known only there,
    // so the worker checks it (kInvalidArgument at load, naming the device and its CUs).
    read_u32(table, kPrefix, "shader_engines", 0, kMaxShaderEngines, cumask.shader_engines);
    if (auto wgp = read_bool(table, kPrefix, "wgp")) cumask.wgp = *wgp;
  }

  void parse_mps(const toml::table& table, MpsBackendConfig& mps) {
    constexpr std::string_view kPrefix = "backend.mps";
    check_keys(table, kPrefix, kMpsKeys);
    if (auto control = read_choice(table, kPrefix, "control", kMpsControls)) {
      mps.control = *control == "attach" ? MpsControlMode::kAttach
                    : *control == "off"  ? MpsControlMode::kOff
                                         : MpsControlMode::kStart;
    }
    for (auto [key, out] : {std::pair{std::string_view("pipe_dir"), &mps.pipe_dir},
                            std::pair{std::string_view("log_dir"), &mps.log_dir}}) {
      if (auto dir = read_string(table, kPrefix, key)) {
        if (dir->empty() || dir->front() != '/') {
          report_value(table, kPrefix, key,
                       fmt::format("must be an absolute path; got '{}'", *dir));
        } else if (mps.control == MpsControlMode::kOff) {
          report_value(table, kPrefix, key, "has no effect with control = \"off\"");
        } else {
          *out = *dir;
        }
      }
    }
    if (auto fallback = read_choice(table, kPrefix, "fallback", kMpsFallbacks)) {
      mps.fallback =
          *fallback == "timeshare" ? MpsFallbackMode::kTimeshare : MpsFallbackMode::kError;
    }
    if (auto threads = read_choice(table, kPrefix, "thread_percentage", kMpsThreadPercentages)) {
      mps.thread_percentage = *threads == "full" ? MpsThreads::kFull : MpsThreads::kSlice;
    }
    read_u32(table, kPrefix, "device", 0, kMaxDeviceOrdinal, mps.device);
  }

  void parse_policy(const toml::table& root, PolicySection& policy) {
    const toml::table* table = read_table(root, "", "policy");
    if (!table) return;
    constexpr std::string_view kPrefix = "policy";
    check_keys(*table, kPrefix, kPolicyKeys);
    if (auto enabled = read_bool(*table, kPrefix, "enabled")) policy.enabled = *enabled;
    PolicyConfig& t = policy.tuning;
    read_fraction(*table, kPrefix, "min_slice", 0.1, kDeviceShare, t.min_slice);
    read_fraction(*table, kPrefix, "min_step", 0.1, kDeviceShare, t.min_step);
    read_fraction(*table, kPrefix, "grow_p99_fraction", 0.05, 1, t.grow_p99_fraction);
    read_fraction(*table, kPrefix, "shrink_p99_fraction", 0.01, 1, t.shrink_p99_fraction);
    read_fraction(*table, kPrefix, "target_utilization", 0.05, 1, t.target_utilization);
    read_u32(*table, kPrefix, "shrink_after", 1, 1000, t.shrink_after);
    read_u32(*table, kPrefix, "cooldown", 0, 1000, t.cooldown);
    read_u32(*table, kPrefix, "resize_timeout_ms", 1, kMaxU32, policy.resize_timeout_ms);
    read_u32(*table, kPrefix, "failed_resize_backoff_ms", 0, kMaxU32,
             policy.failed_resize_backoff_ms);
    if (t.shrink_p99_fraction >= t.grow_p99_fraction) {
      report(*table, kPrefix,
             fmt::format("shrink_p99_fraction ({}) must be below grow_p99_fraction ({})",
                         format_number(t.shrink_p99_fraction), format_number(t.grow_p99_fraction)));
    }
  }

  void parse_models(const toml::table& root, Config& config) {
    std::vector<ModelConfig>& models = config.models;
    const toml::node* node = root.get("model");
    if (!node) {
      report(root, "model", "at least one [[model]] table is required");
      return;
    }
    const toml::array* array = node->as_array();
    if (!array) {
      report(*node, "model",
             fmt::format("must be an array of tables ([[model]]), not {}", type_name(*node)));
      return;
    }
    if (array->empty()) {
      report(*node, "model", "at least one [[model]] table is required");
      return;
    }

    std::vector<ModelMarks> marks;
    for (size_t i = 0; i < array->size(); ++i) {
      const toml::node& element = *array->get(i);
      const std::string prefix = fmt::format("model[{}]", i);
      ModelConfig model;
      if (const toml::table* table = element.as_table()) {
        marks.push_back(parse_model(*table, prefix, model));
        check_model_backend(*table, prefix, config, model);
      } else {
        report(element, prefix, fmt::format("must be a table, not {}", type_name(element)));
        marks.emplace_back();
      }
      models.push_back(std::move(model));
    }

    // Names are unique.
    std::map<std::string, toml::source_position, std::less<>> first_seen;
    for (size_t i = 0; i < models.size(); ++i) {
      if (!marks[i].name_pos) continue;
      auto [it, inserted] = first_seen.emplace(models[i].name, *marks[i].name_pos);
      if (!inserted) {
        report(*marks[i].name_pos, fmt::format("model[{}].name", i),
               fmt::format("duplicate model name '{}' (first defined at line {})", models[i].name,
                           it->second.line));
      }
    }

    // The initial slices fit the device; reported at the model that crosses it.
    double total = 0;
    std::optional<size_t> crossing;
    for (size_t i = 0; i < models.size(); ++i) {
      if (!marks[i].slice_pos) continue;
      total += models[i].slice;
      if (!crossing && total > kDeviceShare + kSliceEpsilon) crossing = i;
    }
    if (crossing) {
      report(*marks[*crossing].slice_pos, fmt::format("model[{}].slice", *crossing),
             fmt::format("sum of slices {} exceeds the device ({})", format_number(total),
                         format_number(kDeviceShare)));
    }
  }

  ModelMarks parse_model(const toml::table& table, const std::string& prefix, ModelConfig& model) {
    ModelMarks marks;
    const size_t issues_before = issues_.size();
    model.source_line = position(table).line;
    check_keys(table, prefix, kModelKeys);

    if (require(table, prefix, "name")) {
      if (auto name = read_string(table, prefix, "name")) {
        if (is_valid_name(*name)) {
          model.name = *name;
          marks.name_pos = position(*table.get("name"));
        } else {
          report_value(
              table, prefix, "name",
              fmt::format("must match [A-Za-z0-9_-]{{1,{}}}; got '{}'", kMaxNameLength, *name));
        }
      }
    }
    if (auto kind = read_choice(table, prefix, "kind", kKinds)) model.kind = *kind;
    if (auto path = read_string(table, prefix, "path")) {
      if (path->empty()) {
        report_value(table, prefix, "path", "must not be empty");
      } else {
        std::filesystem::path resolved(*path);
        if (resolved.is_relative()) resolved = (base_dir_ / resolved).lexically_normal();
        std::error_code ec;
        if (std::filesystem::exists(resolved, ec)) {
          model.path = resolved.string();
        } else {
          report_value(table, prefix, "path",
                       fmt::format("model file not found: '{}'", resolved.string()));
        }
      }
    }
    if (auto slo = read_number(table, prefix, "slo_ms")) {
      if (*slo > 0) {
        model.slo_ms = *slo;
      } else {
        report_value(table, prefix, "slo_ms", fmt::format("must be > 0, got {}", *slo));
      }
    }
    if (require(table, prefix, "slice")) {
      if (auto slice = read_number(table, prefix, "slice")) {
        if (*slice > 0 && *slice <= kDeviceShare) {
          model.slice = *slice;
          marks.slice_pos = position(*table.get("slice"));
        } else {
          report_value(table, prefix, "slice",
                       fmt::format("must be in (0, {}], got {}", format_number(kDeviceShare),
                                   format_number(*slice)));
        }
      }
    }
    read_u32(table, prefix, "max_batch", 1, shm::kMaxBatch, model.max_batch);
    read_u32(table, prefix, "max_queue_delay_us", 0, kMaxU32, model.max_queue_delay_us);
    if (auto flops = read_number(table, prefix, "flops_per_item")) {
      if (*flops >= 0) {
        model.flops_per_item = *flops;
      } else {
        report_value(table, prefix, "flops_per_item",
                     fmt::format("must be >= 0, got {}", format_number(*flops)));
      }
    }
    read_u32(table, prefix, "working_set_kb", 1, kMaxU32, model.working_set_kb);
    read_u32(table, prefix, "weights_mb", 0, 64 * 1024, model.weights_mb);
    read_u32(table, prefix, "load_delay_ms", 0, 3'600'000, model.load_delay_ms);
    if (auto backend = read_string(table, prefix, "backend")) {
      Result<Backend> parsed = parse_backend_name(*backend);
      if (parsed.is_ok()) {
        model.backend = *parsed;
      } else {
        report_value(table, prefix, "backend", parsed.status().message());
      }
    }
    if (auto mem = read_int(table, prefix, "device_mem_mb", 1, kMaxDeviceMemMb)) {
      model.device_mem_mb = static_cast<uint32_t>(*mem);
    }
    if (auto policy = read_bool(table, prefix, "policy")) model.policy = *policy;
    parse_profile(table, prefix, model);
    read_u32(table, prefix, "lanes", 1, shm::kMaxLanes, model.lanes);
    read_u32(table, prefix, "slots_per_lane", 1, shm::kMaxSlotsPerLane, model.slots_per_lane);
    // An ONNX model's file declares its tensors; the config may leave them out.
    const bool onnx = model.kind == "onnx";
    if (onnx && !table.contains("path")) require(table, prefix, "path");
    if (!onnx || table.contains("inputs")) parse_tensors(table, prefix, "inputs", model.inputs);
    if (!onnx || table.contains("outputs")) parse_tensors(table, prefix, "outputs", model.outputs);
    if (onnx && !model.path.empty() && issues_.size() == issues_before) {
      tensors_from_model(table, prefix, model);
    }

    if (issues_.size() == issues_before) {
      uint64_t bytes = 0;
      for (const auto* list : {&model.inputs, &model.outputs}) {
        for (const TensorConfig& tensor : *list)
          bytes = saturating_add(bytes, tensor_bytes(tensor));
      }
      if (bytes > kMaxItemBytes) {
        const std::string size = bytes == std::numeric_limits<uint64_t>::max()
                                     ? std::string("more than 2^64")
                                     : fmt::format("{}", bytes);
        report(table, prefix,
               fmt::format("one item's inputs and outputs take {} bytes, more than the {} MiB "
                           "budget per item",
                           size, kMaxItemBytes >> 20));
      }
    }
    return marks;
  }

  // profile and right_size: the file parses and belongs to the model's file; right_size needs it
  // (measured on hip). Whether the backend is cumask is check_model_backend's.
  void parse_profile(const toml::table& table, const std::string& prefix, ModelConfig& model) {
    if (auto right = read_bool(table, prefix, "right_size")) model.right_size = *right;
    auto path = read_string(table, prefix, "profile");
    if (!path) {
      if (model.right_size && !table.contains("profile")) {
        report_value(table, prefix, "right_size",
                     "needs a layer profile of the model: profile = \"FILE\" (from slicectl "
                     "profile MODEL.onnx --device hip:N)");
      }
      return;
    }
    std::filesystem::path resolved(*path);
    if (resolved.is_relative()) resolved = (base_dir_ / resolved).lexically_normal();
    Result<backends::LayerProfile> profile = backends::read_layer_profile(resolved.string());
    if (!profile.is_ok()) {
      report_value(table, prefix, "profile", profile.status().message());
      return;
    }
    if (!model.path.empty()) {
      if (Status same = backends::check_layer_profile_model(*profile, model.path); !same.is_ok()) {
        report_value(table, prefix, "profile", same.message());
        return;
      }
    }
    if (model.right_size && profile->device != "hip") {
      report_value(table, prefix, "profile",
                   fmt::format("right_size needs a profile measured on hip (CU counts); this one "
                               "was measured on {}{}",
                               profile->device,
                               profile->device == "cuda"
                                   ? " (SM counts, for measuring only: there is no per-layer "
                                     "launch on NVIDIA yet, docs/nvidia.md)"
                                   : ""));
      return;
    }
    model.profile = resolved.string();
  }

  // What the model's backend (its own or the server's) allows; reported at its `backend` key, or
  // at the key that does not fit it.
  void check_model_backend(const toml::table& table, const std::string& prefix,
                           const Config& config, const ModelConfig& model) {
    const Backend backend = config.backend_of(model);
    const std::string origin = model.backend ? "" : " ([server] backend)";
    if (Status fits = check_kind_on_backend(model, backend); !fits.is_ok()) {
      report_value(table, prefix, "kind", fits.message() + origin);
    }
    if (model.device_mem_mb && backend != Backend::kMps) {
      report_value(table, prefix, "device_mem_mb",
                   fmt::format("applies to the mps backend only; the model runs on {}{}",
                               backend_name(backend), origin));
    }
    if (model.right_size && backend != Backend::kCumask) {
      report_value(table, prefix, "right_size",
                   fmt::format("needs the cumask backend (per-layer CU masks); the model runs on "
                               "{}{}",
                               backend_name(backend), origin));
    }
  }

  // Fills the tensors the config left out from the ONNX file; those it declares must be the
  // file's.
  void tensors_from_model(const toml::table& table, const std::string& prefix, ModelConfig& model) {
    Result<shm::ModelSpec> spec = worker::onnx_item_spec(model.path);
    if (!spec.is_ok()) {
      report_value(table, prefix, "path", spec.status().message());
      return;
    }
    auto from_spec = [](std::span<const shm::TensorSpec> tensors) {
      std::vector<TensorConfig> out;
      for (const shm::TensorSpec& t : tensors) {
        out.push_back({std::string(t.name_view()), t.dtype, {t.shape().begin(), t.shape().end()}});
      }
      return out;
    };
    auto check = [&](std::string_view key, std::vector<TensorConfig>& declared,
                     std::vector<TensorConfig> file) {
      if (!table.contains(key)) {
        declared = std::move(file);
        return;
      }
      auto describe = [](const std::vector<TensorConfig>& tensors) {
        std::string text;
        for (const TensorConfig& t : tensors) {
          text += fmt::format("{}{} {} {}", text.empty() ? "" : ", ", t.name,
                              shm::data_type_name(t.dtype), shm::shape_to_string(t.shape));
        }
        return text;
      };
      const bool same =
          std::equal(declared.begin(), declared.end(), file.begin(), file.end(),
                     [](const TensorConfig& a, const TensorConfig& b) {
                       return a.name == b.name && a.dtype == b.dtype && a.shape == b.shape;
                     });
      if (!same) {
        report_value(table, prefix, key,
                     fmt::format("the model file has {} (per item, without the batch); the "
                                 "config declares {}",
                                 describe(file), describe(declared)));
      }
    };
    check("inputs", model.inputs, from_spec(spec->input_specs()));
    check("outputs", model.outputs, from_spec(spec->output_specs()));
  }

  void parse_tensors(const toml::table& model, const std::string& prefix, std::string_view key,
                     std::vector<TensorConfig>& out) {
    if (!require(model, prefix, key)) return;
    const std::string path = join_key(prefix, key);
    const toml::node& node = *model.get(key);
    const toml::array* array = node.as_array();
    if (!array) {
      report(node, path,
             fmt::format("must be an array of {{ name, dtype, shape }} tables, not {}",
                         type_name(node)));
      return;
    }
    if (array->empty()) {
      report(node, path, "must declare at least one tensor");
      return;
    }
    if (array->size() > shm::kMaxTensors) {
      report(
          node, path,
          fmt::format("at most {} tensors are allowed, got {}", shm::kMaxTensors, array->size()));
      return;
    }
    std::map<std::string, uint32_t, std::less<>> seen;  // name -> line
    for (size_t j = 0; j < array->size(); ++j) {
      const toml::node& element = *array->get(j);
      const std::string tensor_prefix = fmt::format("{}[{}]", path, j);
      const toml::table* table = element.as_table();
      if (!table) {
        report(element, tensor_prefix,
               fmt::format("must be a {{ name, dtype, shape }} table, not {}", type_name(element)));
        continue;
      }
      check_keys(*table, tensor_prefix, kTensorKeys);
      TensorConfig tensor;
      if (require(*table, tensor_prefix, "name")) {
        if (auto name = read_string(*table, tensor_prefix, "name")) {
          if (name->empty()) {
            report_value(*table, tensor_prefix, "name", "must not be empty");
          } else if (name->size() >= shm::kMaxTensorName) {
            report_value(*table, tensor_prefix, "name",
                         fmt::format("must be at most {} characters, got {}",
                                     shm::kMaxTensorName - 1, name->size()));
          } else if (has_control_chars(*name)) {
            report_value(*table, tensor_prefix, "name", "must not contain control characters");
          } else {
            const uint32_t line = position(*table->get("name")).line;
            auto [it, inserted] = seen.emplace(*name, line);
            if (inserted) {
              tensor.name = *name;
            } else {
              report_value(*table, tensor_prefix, "name",
                           fmt::format("duplicate tensor name '{}' in {} (first defined at line "
                                       "{})",
                                       *name, path, it->second));
            }
          }
        }
      }
      if (auto dtype_name = read_string(*table, tensor_prefix, "dtype")) {
        Result<shm::DataType> dtype = shm::parse_data_type(*dtype_name);
        if (dtype.is_ok()) {
          tensor.dtype = *dtype;
        } else {
          report_value(*table, tensor_prefix, "dtype", dtype.status().message());
        }
      }
      if (require(*table, tensor_prefix, "shape")) parse_shape(*table, tensor_prefix, tensor);
      out.push_back(std::move(tensor));
    }
  }

  void parse_shape(const toml::table& table, const std::string& prefix, TensorConfig& tensor) {
    const std::string path = join_key(prefix, "shape");
    const toml::node& node = *table.get("shape");
    const toml::array* array = node.as_array();
    if (!array) {
      report(node, path, fmt::format("must be an array of integers, not {}", type_name(node)));
      return;
    }
    if (array->empty() || array->size() > shm::kMaxDims) {
      report(node, path,
             fmt::format("must have 1..{} dimensions, got {}", shm::kMaxDims, array->size()));
      return;
    }
    for (size_t d = 0; d < array->size(); ++d) {
      const toml::node& dim = *array->get(d);
      const auto* value = dim.as_integer();
      if (!value) {
        report(dim, path,
               fmt::format("dimension {} must be an integer, not {}", d, type_name(dim)));
      } else if (value->get() <= 0) {
        report(dim, path, fmt::format("dimension {} must be > 0, got {}", d, value->get()));
      } else {
        tensor.shape.push_back(value->get());
      }
    }
  }

  const std::string file_;
  const std::filesystem::path base_dir_;
  const bool lines_ = true;
  std::vector<Issue> issues_;
};

// Where a converted JSON value goes: a table under a key, or the end of an array. Not a template
// (a recursive template over the caller's lambda would instantiate a new function per level).
struct TomlSink {
  toml::table* table = nullptr;
  std::string_view key;
  toml::array* array = nullptr;

  template <typename T>
  void add(T&& value) const {
    if (table != nullptr) {
      table->insert(key, std::forward<T>(value));
    } else {
      array->push_back(std::forward<T>(value));
    }
  }
};

// A JSON value as the TOML value a file would hold, added to `sink`; kInvalidArgument for null
// and integers beyond int64.
Status add_from_json(const nlohmann::json& value, const std::string& key, const TomlSink& sink) {
  switch (value.type()) {
    case nlohmann::json::value_t::object: {
      toml::table table;
      for (const auto& [k, v] : value.items()) {
        const TomlSink member{.table = &table, .key = k, .array = nullptr};
        RETURN_IF_ERROR(add_from_json(v, join_key(key, k), member));
      }
      sink.add(std::move(table));
      return Status::ok();
    }
    case nlohmann::json::value_t::array: {
      toml::array array;
      for (size_t i = 0; i < value.size(); ++i) {
        const TomlSink element{.table = nullptr, .key = {}, .array = &array};
        RETURN_IF_ERROR(add_from_json(value[i], fmt::format("{}[{}]", key, i), element));
      }
      sink.add(std::move(array));
      return Status::ok();
    }
    case nlohmann::json::value_t::string:
      sink.add(value.get<std::string>());
      return Status::ok();
    case nlohmann::json::value_t::boolean:
      sink.add(value.get<bool>());
      return Status::ok();
    case nlohmann::json::value_t::number_integer:
      sink.add(value.get<int64_t>());
      return Status::ok();
    case nlohmann::json::value_t::number_unsigned:
      if (value.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())) {
        return Status(ErrorCode::kInvalidArgument, fmt::format("key '{}': integer too large", key));
      }
      sink.add(value.get<int64_t>());
      return Status::ok();
    case nlohmann::json::value_t::number_float:
      sink.add(value.get<double>());
      return Status::ok();
    default:
      return Status(ErrorCode::kInvalidArgument,
                    fmt::format("key '{}': must not be {}", key, value.type_name()));
  }
}

std::filesystem::path loaded_model_dir(const Config& base) {
  return base.source_path.empty() ? std::filesystem::path()
                                  : std::filesystem::path(base.source_path).parent_path();
}

}  // namespace

Result<ModelConfig> parse_model_toml(const Config& base, std::string_view text,
                                     const std::string& source_name) {
  ConfigParser parser(source_name, loaded_model_dir(base), true);
  ASSIGN_OR_RETURN(toml::table root, parser.parse_text(text));
  return parser.parse_loaded_model(root, base);
}

Result<ModelConfig> parse_model_json(const Config& base, const nlohmann::json& model,
                                     const std::string& source_name) {
  if (!model.is_object()) {
    return Status(ErrorCode::kInvalidArgument,
                  fmt::format("{}: key 'model': must be an object of [[model]] keys, not {}",
                              source_name, model.type_name()));
  }
  toml::array models;
  Status converted = add_from_json(model, "model", TomlSink{.table = nullptr, .key = {}, .array = &models});
  if (!converted.is_ok()) {
    return Status(ErrorCode::kInvalidArgument, source_name + ": " + converted.message());
  }
  toml::table root;
  root.insert("model", std::move(models));
  ConfigParser parser(source_name, loaded_model_dir(base), false);
  return parser.parse_loaded_model(root, base);
}

const ModelConfig* Config::find_model(std::string_view name) const {
  for (const ModelConfig& model : models) {
    if (model.name == name) return &model;
  }
  return nullptr;
}

Result<Config> parse_config(std::string_view text, const std::string& source_name) {
  return ConfigParser(source_name).parse(text);
}

Result<Config> load_config(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, read_file(path));
  ASSIGN_OR_RETURN(Config config, parse_config(text, path));
  config.source_path = path;
  return config;
}

Backend Config::backend_of(const ModelConfig& model) const {
  if (model.backend) return *model.backend;
  if (server.backend == "mps") return Backend::kMps;
  if (server.backend == "greenctx") return Backend::kGreenctx;
  if (server.backend == "cumask") return Backend::kCumask;
  return cpu.mode == CpuMode::kAffinity ? Backend::kCpuAffinity : Backend::kCpuProcess;
}

bool Config::wants_mps(Backend backend) const {
  if (mps.control == MpsControlMode::kOff) return false;
  return backend == Backend::kMps || (backend == Backend::kGreenctx && greenctx.mps);
}

bool Config::needs_mps_control() const {
  return std::any_of(models.begin(), models.end(),
                     [this](const ModelConfig& m) { return wants_mps(backend_of(m)); });
}

std::string backend_name(Backend backend) {
  switch (backend) {
    case Backend::kCpuProcess:
      return "cpu:process";
    case Backend::kCpuAffinity:
      return "cpu:affinity";
    case Backend::kMps:
      return "mps";
    case Backend::kGreenctx:
      return "greenctx";
    case Backend::kCumask:
      return "cumask";
  }
  return "unknown";
}

Result<Backend> parse_backend_name(std::string_view name) {
  if (name == "cpu" || name == "cpu:process") return Backend::kCpuProcess;
  if (name == "cpu:affinity") return Backend::kCpuAffinity;
  if (kHaveCuda && name == "mps") return Backend::kMps;
  if (kHaveCuda && name == "greenctx") return Backend::kGreenctx;
  if (kHaveHip && name == "cumask") return Backend::kCumask;
  if (name == "mps" || name == "greenctx" || name == "cumask") {
    return Status(ErrorCode::kUnavailable,
                  fmt::format("backend '{}' is not available in this build (available: {})", name,
                              kAvailableBackends));
  }
  return Status(ErrorCode::kInvalidArgument,
                fmt::format("unknown backend '{}' (available: {})", name, kAvailableBackends));
}

std::string_view backend_family(Backend backend) {
  switch (backend) {
    case Backend::kCpuProcess:
    case Backend::kCpuAffinity:
      return "cpu";
    case Backend::kMps:
      return "mps";
    case Backend::kGreenctx:
      return "greenctx";
    case Backend::kCumask:
      return "cumask";
  }
  return "unknown";
}

bool resizes_in_place(Backend backend) {
  return backend == Backend::kCpuAffinity || backend == Backend::kGreenctx ||
         backend == Backend::kCumask;
}

bool is_gpu_backend(Backend backend) {
  return backend == Backend::kMps || backend == Backend::kGreenctx || backend == Backend::kCumask;
}

Status check_kind_on_backend(const ModelConfig& model, Backend backend) {
  // The synthetic kind burns host cpu and the null kind computes nothing: on a GPU slice neither
  // would measure the slice.
  if (!is_gpu_backend(backend) || model.kind == "onnx") return Status::ok();
  return Status(ErrorCode::kInvalidArgument,
                fmt::format("model kind '{}' runs on the cpu backend only, not on {}", model.kind,
                            backend_name(backend)));
}

Status check_greenctx_environment(const Config& config, const char* active_thread_percentage) {
  if (active_thread_percentage == nullptr) return Status::ok();
  const auto greenctx = std::find_if(
      config.models.begin(), config.models.end(),
      [&config](const ModelConfig& m) { return config.backend_of(m) == Backend::kGreenctx; });
  if (greenctx == config.models.end()) return Status::ok();
  Status combined = Status::ok();
#ifdef SLICESERVE_HAVE_CUDA
  Result<std::optional<double>> percent =
      backends::parse_mps_thread_percentage(active_thread_percentage);
  combined = percent.is_ok() ? backends::check_greenctx_with_mps(percent->value_or(100.0))
                             : percent.status();
#endif
  if (combined.is_ok()) return Status::ok();
  return Status(ErrorCode::kInvalidArgument,
                fmt::format("greenctx must not be combined with an MPS thread percentage below "
                            "100: model '{}' uses greenctx, and the workers would inherit "
                            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={} from sliceserved's environment "
                            "({})",
                            greenctx->name, active_thread_percentage, combined.message()));
}

std::string_view cumask_policy_name(CumaskPolicy policy) {
  return policy == CumaskPolicy::kPack ? "pack" : "spread";
}

std::string_view cpu_mode_name(CpuMode mode) {
  switch (mode) {
    case CpuMode::kProcess:
      return "process";
    case CpuMode::kAffinity:
      return "affinity";
  }
  return "unknown";
}

}  // namespace sliceserve::controller
