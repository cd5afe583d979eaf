// NumPy .npy reader and writer (see npy.h).
//
// The file: the magic "\x93NUMPY", a major and a minor version byte, the header's length (2
// bytes little-endian in 1.0, 4 bytes in 2.0 and 3.0), then the header, a Python dict literal
// padded with spaces and ended by '\n', then the elements. The header is parsed by a small
// recursive-descent parser for exactly the literals np.save writes: quoted strings, True/False
// and tuples of non-negative integers.

#include "sliceserve/client/npy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <string_view>

#include "sliceserve/shm/check.h"

namespace sliceserve::client {
namespace {

using shm::DataType;

// '=' and '|' mean the host's byte order, and the elements are handed on as they are.
static_assert(std::endian::native == std::endian::little, "SliceServe hosts are little-endian");

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;
constexpr size_t kAlignment = 64;  // np.save pads the header so that the data is aligned

struct DescrType {
  DataType dtype;
  char kind;  // numpy's kind character: f(loat), i(nt), u(nsigned), b(ool)
  size_t size;
};

constexpr DescrType kDescrTypes[] = {
    {DataType::kFp16, 'f', 2},   {DataType::kFp32, 'f', 4},   {DataType::kFp64, 'f', 8},
    {DataType::kInt8, 'i', 1},   {DataType::kInt16, 'i', 2},  {DataType::kInt32, 'i', 4},
    {DataType::kInt64, 'i', 8},  {DataType::kUint8, 'u', 1},  {DataType::kUint16, 'u', 2},
    {DataType::kUint32, 'u', 4}, {DataType::kUint64, 'u', 8}, {DataType::kBool, 'b', 1},
};

Status invalid(std::string message) {
  return Status(ErrorCode::kInvalidArgument, std::move(message));
}

std::string supported_descrs() {
  std::string out;
  for (const DescrType& t : kDescrTypes) {
    if (!out.empty()) out += ", ";
    out += npy_descr(t.dtype);
  }
  return out;
}

// '<f4' -> kFp32. The byte order may be '<', '=' or '|' (all little-endian here); '>' and '!'
// are refused for elements wider than a byte.
Result<DataType> parse_descr(std::string_view descr) {
  const std::string quoted = "'" + std::string(descr) + "'";
  if (descr.size() < 3 || std::string_view("<>=|!").find(descr[0]) == std::string_view::npos) {
    return invalid("unsupported descr " + quoted + " (supported: " + supported_descrs() + ")");
  }
  size_t size = 0;
  for (char c : descr.substr(2)) {
    if (c < '0' || c > '9' || size > 1000) {
      return invalid("unsupported descr " + quoted + " (supported: " + supported_descrs() + ")");
    }
    size = size * 10 + static_cast<size_t>(c - '0');
  }
  for (const DescrType& t : kDescrTypes) {
    if (t.kind != descr[1] || t.size != size) continue;
    if ((descr[0] == '>' || descr[0] == '!') && size > 1) {
      return invalid("big-endian arrays are not supported (descr " + quoted +
                     "); save arr.astype('<" + std::string(descr.substr(1)) + "')");
    }
    return t.dtype;
  }
  return invalid("unsupported descr " + quoted + " (supported: " + supported_descrs() + ")");
}

struct HeaderDict {
  DataType dtype = DataType::kInvalid;
  bool fortran_order = false;
  std::vector<int64_t> shape;
};

// The header dict, e.g. "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }".
class HeaderParser {
 public:
  explicit HeaderParser(std::string_view text) : text_(text) {}

  Result<HeaderDict> parse() {
    HeaderDict dict;
    bool seen_descr = false;
    bool seen_fortran = false;
    bool seen_shape = false;
    skip_space();
    if (!consume('{')) return error("header is not a dict (it does not start with '{')");
    while (true) {
      skip_space();
      if (consume('}')) break;
      ASSIGN_OR_RETURN(std::string key, string_literal("a quoted key"));
      skip_space();
      if (!consume(':')) return error("expected ':' after key '" + key + "'");
      skip_space();
      bool* seen = nullptr;
      if (key == "descr") {
        seen = &seen_descr;
        if (peek() == '[') return invalid("structured dtypes (a list descr) are not supported");
        ASSIGN_OR_RETURN(std::string descr, string_literal("a quoted descr"));
        ASSIGN_OR_RETURN(dict.dtype, parse_descr(descr));
      } else if (key == "fortran_order") {
        seen = &seen_fortran;
        ASSIGN_OR_RETURN(dict.fortran_order, bool_literal());
      } else if (key == "shape") {
        seen = &seen_shape;
        ASSIGN_OR_RETURN(dict.shape, shape_tuple());
      } else {
        return invalid("header has an unknown key '" + key +
                       "' (expected 'descr', 'fortran_order' and 'shape')");
      }
      if (*seen) return invalid("header has the key '" + key + "' twice");
      *seen = true;
      skip_space();
      if (consume(',')) continue;
      skip_space();
      if (consume('}')) break;
      return error("expected ',' or '}' after the value of '" + key + "'");
    }
    skip_space();
    if (pos_ != text_.size()) return error("unexpected text after the header dict");
    for (auto [seen, key] :
         {std::pair{seen_descr, "descr"}, std::pair{seen_fortran, "fortran_order"},
          std::pair{seen_shape, "shape"}}) {
      if (!seen) return invalid(std::string("header lacks the key '") + key + "'");
    }
    return dict;
  }

 private:
  // Python's whitespace.
  void skip_space() {
    while (pos_ < text_.size() &&
           std::string_view(" \t\n\r\f\v").find(text_[pos_]) != std::string_view::npos) {
      ++pos_;
    }
  }
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  bool consume(char c) {
    if (peek() != c || pos_ >= text_.size()) return false;
    ++pos_;
    return true;
  }
  Status error(const std::string& what) const {
    return invalid("malformed header dict: " + what + " at offset " + std::to_string(pos_));
  }

  Result<std::string> string_literal(const char* what) {
    const char quote = peek();
    if (quote != '\'' && quote != '"') return error(std::string("expected ") + what);
    const size_t begin = ++pos_;
    while (pos_ < text_.size() && text_[pos_] != quote) {
      if (text_[pos_] == '\\') return error("escape sequences in strings are not supported");
      if (text_[pos_] == '\n') return error("unterminated string");
      ++pos_;
    }
    if (pos_ >= text_.size()) return error("unterminated string");
    std::string value(text_.substr(begin, pos_ - begin));
    ++pos_;
    return value;
  }

  Result<bool> bool_literal() {
    for (auto [word, value] :
         {std::pair{std::string_view("True"), true}, std::pair{std::string_view("False"), false}}) {
      if (text_.substr(pos_, word.size()) == word && !is_identifier(pos_ + word.size())) {
        pos_ += word.size();
        return value;
      }
    }
    return error("expected True or False for 'fortran_order'");
  }
  bool is_identifier(size_t at) const {
    if (at >= text_.size()) return false;
    const char c = text_[at];
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  }

  // "()", "(3,)", "(2, 3)", "(2, 3,)"; Python 2's long suffix ("3L") is accepted too. "(3)" is
  // not a tuple (numpy refuses it as well).
  Result<std::vector<int64_t>> shape_tuple() {
    if (!consume('(')) return error("expected a tuple for 'shape'");
    std::vector<int64_t> shape;
    bool trailing_comma = false;
    while (true) {
      skip_space();
      if (consume(')')) break;
      if (!shape.empty() && !trailing_comma) return error("expected ',' or ')' in 'shape'");
      if (peek() == '-') return invalid("shape has a negative dimension");
      if (peek() < '0' || peek() > '9') return error("expected an integer in 'shape'");
      int64_t dim = 0;
      while (peek() >= '0' && peek() <= '9') {
        const int64_t digit = peek() - '0';
        if (dim > (std::numeric_limits<int64_t>::max() - digit) / 10) {
          return invalid("shape has a dimension that does not fit in 64 bits");
        }
        dim = dim * 10 + digit;
        ++pos_;
      }
      if (peek() == 'L') ++pos_;
      if (shape.size() == kMaxNpyDims) {
        return invalid("shape has more than " + std::to_string(kMaxNpyDims) + " dimensions");
      }
      shape.push_back(dim);
      skip_space();
      trailing_comma = consume(',');
    }
    if (shape.size() == 1 && !trailing_comma) {
      return invalid("'shape' is not a tuple: one dimension is written (" +
                     std::to_string(shape[0]) + ",)");
    }
    return shape;
  }

  std::string_view text_;
  size_t pos_ = 0;
};

// Where the header dict is, from the file's first bytes.
struct Preamble {
  int major = 0;
  size_t header_offset = 0;  // 10 (1.0) or 12 (2.0, 3.0)
  size_t header_len = 0;
};

// `head` holds the file's first min(file_size, 12) bytes or more.
Result<Preamble> parse_preamble(std::span<const std::byte> head, uint64_t file_size) {
  if (file_size == 0) return invalid("not a .npy file: it is empty");
  if (head.size() < kMagicSize || std::memcmp(head.data(), kMagic, kMagicSize) != 0) {
    return invalid("not a .npy file: it does not start with the magic string \\x93NUMPY");
  }
  if (head.size() < kMagicSize + 2) return invalid("truncated: the file ends inside the preamble");
  Preamble p;
  p.major = std::to_integer<int>(head[6]);
  const int minor = std::to_integer<int>(head[7]);
  if (p.major < 1 || p.major > 3 || minor != 0) {
    return invalid("unsupported .npy format version " + std::to_string(p.major) + "." +
                   std::to_string(minor) + " (1.0, 2.0 and 3.0 are supported)");
  }
  const size_t len_bytes = p.major == 1 ? 2 : 4;
  p.header_offset = kMagicSize + 2 + len_bytes;
  if (head.size() < p.header_offset) return invalid("truncated: the file ends inside the preamble");
  uint64_t len = 0;
  for (size_t i = 0; i < len_bytes; ++i) {
    len |= std::to_integer<uint64_t>(head[kMagicSize + 2 + i]) << (8 * i);
  }
  if (len > kMaxNpyHeaderBytes) {
    return invalid("header length " + std::to_string(len) + " is over the limit of " +
                   std::to_string(kMaxNpyHeaderBytes) + " bytes");
  }
  if (p.header_offset + len > file_size) {
    return invalid("truncated: header length " + std::to_string(len) +
                   " goes past the end of the file (" + std::to_string(file_size) + " bytes)");
  }
  p.header_len = static_cast<size_t>(len);
  return p;
}

struct Header {
  DataType dtype = DataType::kInvalid;
  std::vector<int64_t> shape;
  size_t data_offset = 0;
  size_t data_bytes = 0;
};

// The header dict's text at `text`, checked against the bytes that follow it.
Result<Header> parse_header(const Preamble& p, std::string_view text, uint64_t file_size) {
  if (p.major < 3) {
    for (char c : text) {
      if (static_cast<unsigned char>(c) >= 0x80) {
        return invalid("malformed header dict: a version " + std::to_string(p.major) +
                       ".0 header must be ASCII");
      }
    }
  }
  ASSIGN_OR_RETURN(HeaderDict dict, HeaderParser(text).parse());
  if (dict.fortran_order) {
    return invalid("fortran_order arrays are not supported; save np.ascontiguousarray(arr)");
  }
  Header h;
  h.dtype = dict.dtype;
  h.shape = std::move(dict.shape);
  h.data_offset = p.header_offset + p.header_len;
  uint64_t needed = data_type_size(h.dtype);
  for (int64_t d : h.shape) {
    if (__builtin_mul_overflow(needed, static_cast<uint64_t>(d), &needed)) {
      return invalid("shape " + shm::shape_to_string(h.shape) +
                     " is too large: its byte size overflows 64 bits");
    }
  }
  const uint64_t present = file_size - h.data_offset;
  if (present != needed) {
    return invalid("data is " + std::to_string(present) + " bytes, but shape " +
                   shm::shape_to_string(h.shape) + " of " + npy_descr(h.dtype) + " needs " +
                   std::to_string(needed));
  }
  h.data_bytes = static_cast<size_t>(needed);
  return h;
}

std::string_view as_text(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// The preamble and padded header dict of `array` (valid).
std::vector<std::byte> format_header(const NpyArray& array) {
  std::string dict =
      "{'descr': '" + npy_descr(array.dtype) + "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < array.shape.size(); ++i) {
    if (i > 0) dict += ", ";
    dict += std::to_string(array.shape[i]);
  }
  if (array.shape.size() == 1) dict += ",";
  dict += "), }";
  // Version 1.0 unless the padded header does not fit its 2-byte length.
  size_t preamble = kMagicSize + 2 + 2;
  size_t total = (preamble + dict.size() + 1 + kAlignment - 1) / kAlignment * kAlignment;
  int major = 1;
  if (total - preamble > 0xFFFF) {
    major = 2;
    preamble = kMagicSize + 2 + 4;
    total = (preamble + dict.size() + 1 + kAlignment - 1) / kAlignment * kAlignment;
  }
  dict.append(total - preamble - dict.size() - 1, ' ');
  dict += '\n';
  std::vector<std::byte> out(preamble);
  std::memcpy(out.data(), kMagic, kMagicSize);
  out[6] = static_cast<std::byte>(major);
  out[7] = std::byte{0};
  const uint64_t len = dict.size();
  for (size_t i = 0; i < preamble - kMagicSize - 2; ++i) {
    out[kMagicSize + 2 + i] = static_cast<std::byte>((len >> (8 * i)) & 0xFF);
  }
  const auto* text = reinterpret_cast<const std::byte*>(dict.data());
  out.insert(out.end(), text, text + dict.size());
  return out;
}

Status io_error(const char* what, const std::string& path, int err) {
  const ErrorCode code =
      err == ENOENT || err == ENOTDIR ? ErrorCode::kNotFound : ErrorCode::kInternal;
  return Status(code, path + ": " + what + ": " + std::strerror(err));
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes now, reporting the error close() may give (a delayed write failure).
  int close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// Reads exactly n bytes at `offset`; false (errno set, 0 for end of file) if it cannot.
bool read_at(int fd, uint64_t offset, std::byte* dst, size_t n) {
  while (n > 0) {
    const ssize_t got = ::pread(fd, dst, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      if (got == 0) errno = 0;
      return false;
    }
    dst += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return true;
}

bool write_all(int fd, std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    const ssize_t put = ::write(fd, bytes.data(), bytes.size());
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) {
      if (put == 0) errno = EIO;
      return false;
    }
    bytes = bytes.subspan(static_cast<size_t>(put));
  }
  return true;
}

}  // namespace

int64_t NpyArray::element_count() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string npy_descr(DataType dtype) {
  for (const DescrType& t : kDescrTypes) {
    if (t.dtype == dtype)
      return std::string(1, t.size == 1 ? '|' : '<') + t.kind + std::to_string(t.size);
  }
  return "";
}

Result<NpyArray> parse_npy(std::span<const std::byte> bytes) {
  ASSIGN_OR_RETURN(Preamble p, parse_preamble(bytes, bytes.size()));
  ASSIGN_OR_RETURN(Header h, parse_header(p, as_text(bytes.subspan(p.header_offset, p.header_len)),
                                          bytes.size()));
  NpyArray array;
  array.dtype = h.dtype;
  array.shape = std::move(h.shape);
  const auto data = bytes.subspan(h.data_offset, h.data_bytes);
  array.data.assign(data.begin(), data.end());
  return array;
}

Result<NpyArray> read_npy(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return Status(ErrorCode::kNotFound, path + ": no such file");
    return io_error("cannot open", path, errno);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return io_error("cannot stat", path, errno);
  if (!S_ISREG(st.st_mode)) return invalid(path + ": not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  auto read_failed = [&](int err) {
    if (err == 0) return invalid(path + ": truncated: the file changed while it was read");
    return io_error("read failed", path, err);
  };

  std::vector<std::byte> head(static_cast<size_t>(std::min<uint64_t>(size, 12)));
  if (!read_at(fd.get(), 0, head.data(), head.size())) return read_failed(errno);
  auto preamble = parse_preamble(head, size);
  if (!preamble.is_ok()) return preamble.status().with_context(path);
  std::string text(preamble->header_len, '\0');
  if (!read_at(fd.get(), preamble->header_offset, reinterpret_cast<std::byte*>(text.data()),
               text.size())) {
    return read_failed(errno);
  }
  auto header = parse_header(*preamble, text, size);
  if (!header.is_ok()) return header.status().with_context(path);

  NpyArray array;
  array.dtype = header->dtype;
  array.shape = std::move(header->shape);
  array.data.resize(header->data_bytes);
  if (!read_at(fd.get(), header->data_offset, array.data.data(), array.data.size())) {
    return read_failed(errno);
  }
  return array;
}

Status validate_npy(const NpyArray& array) {
  const size_t size = data_type_size(array.dtype);
  if (size == 0) return invalid("npy array has no dtype");
  if (array.shape.size() > kMaxNpyDims) {
    return invalid("npy array has more than " + std::to_string(kMaxNpyDims) + " dimensions");
  }
  uint64_t needed = size;
  for (int64_t d : array.shape) {
    if (d < 0)
      return invalid("npy array shape " + shm::shape_to_string(array.shape) +
                     " has a negative dimension");
    if (__builtin_mul_overflow(needed, static_cast<uint64_t>(d), &needed)) {
      return invalid("npy array shape " + shm::shape_to_string(array.shape) + " is too large");
    }
  }
  if (needed != array.data.size()) {
    return invalid("npy array data is " + std::to_string(array.data.size()) + " bytes, but shape " +
                   shm::shape_to_string(array.shape) + " of " +
                   std::string(shm::data_type_name(array.dtype)) + " needs " +
                   std::to_string(needed));
  }
  return Status::ok();
}

std::vector<std::byte> format_npy(const NpyArray& array) {
  const Status valid = validate_npy(array);
  SS_CHECK(valid.is_ok(), valid.message());
  std::vector<std::byte> out = format_header(array);
  out.insert(out.end(), array.data.begin(), array.data.end());
  return out;
}

Status write_npy(const std::string& path, const NpyArray& array) {
  RETURN_IF_ERROR(validate_npy(array));
  const std::vector<std::byte> header = format_header(array);

  // A hidden temporary next to the target (same file system, so the rename is atomic), created
  // with O_EXCL so that two writers never share one; the umask applies as for any new file.
  static std::atomic<uint64_t> counter{0};
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string tmp;
  int raw_fd = -1;
  for (int attempt = 0; attempt < 100 && raw_fd < 0; ++attempt) {
    tmp = dir + "." + base + ".tmp." + std::to_string(::getpid()) + "." +
          std::to_string(counter.fetch_add(1));
    raw_fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (raw_fd < 0 && errno != EEXIST) return io_error("cannot write", path, errno);
  }
  if (raw_fd < 0) return io_error("cannot create a temporary file next to it", path, EEXIST);
  Fd fd(raw_fd);
  auto fail = [&](const char* what) {
    const int err = errno;
    if (fd.get() >= 0) fd.close();
    ::unlink(tmp.c_str());
    return io_error(what, path, err);
  };
  if (!write_all(fd.get(), header) || !write_all(fd.get(), array.data)) return fail("write failed");
  if (fd.close() != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return io_error("write failed", path, err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return io_error("cannot rename the temporary file over it", path, err);
  }
  return Status::ok();
}

}  // namespace sliceserve::client
