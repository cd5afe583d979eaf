// The .npy reader and writer: round trips of every dtype, the header dialects numpy writes,
// every kind of malformed file with its message, and (when /usr/bin/python3 has numpy) files
// written by numpy read here and files written here read by numpy.

#include "sliceserve/client/npy.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace sliceserve::client {
namespace {

using shm::DataType;
using Bytes = std::vector<std::byte>;

constexpr DataType kAllTypes[] = {
    DataType::kBool,   DataType::kUint8, DataType::kUint16, DataType::kUint32,
    DataType::kUint64, DataType::kInt8,  DataType::kInt16,  DataType::kInt32,
    DataType::kInt64,  DataType::kFp16,  DataType::kFp32,   DataType::kFp64,
};

Bytes to_bytes(std::string_view s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  return Bytes(p, p + s.size());
}

// A file with the given version, header text (unpadded) and data.
Bytes npy_file(int major, const std::string& header, const Bytes& data = {}) {
  std::string out = std::string("\x93NUMPY") + char(major) + '\0';
  const size_t len = header.size();
  out += char(len & 0xFF);
  out += char((len >> 8) & 0xFF);
  if (major > 1) {
    out += char((len >> 16) & 0xFF);
    out += char((len >> 24) & 0xFF);
  }
  Bytes bytes = to_bytes(out + header);
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}

Bytes pattern(size_t n) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = std::byte(i * 37 + 11);
  return b;
}

NpyArray sample(DataType dtype, std::vector<int64_t> shape) {
  NpyArray a;
  a.dtype = dtype;
  a.shape = std::move(shape);
  a.data = pattern(size_t(a.element_count()) * shm::data_type_size(dtype));
  if (dtype == DataType::kBool) {
    for (size_t i = 0; i < a.data.size(); ++i) a.data[i] = std::byte(i % 3 == 0);
  }
  return a;
}

std::string parse_error(const Bytes& bytes) {
  auto r = parse_npy(bytes);
  if (r.is_ok()) return "parsed";
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << r.status().to_string();
  return r.status().message();
}

class NpyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/npy_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  void write_raw(const std::string& name, const Bytes& bytes) const {
    std::ofstream out(path(name), std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  }
  size_t files_in_dir() const {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir_)) ++n;
    return n;
  }

  std::string dir_;
};

TEST_F(NpyTest, RoundTripsEveryDtypeInMemoryAndThroughAFile) {
  for (DataType dtype : kAllTypes) {
    SCOPED_TRACE(std::string(shm::data_type_name(dtype)));
    const NpyArray a = sample(dtype, {2, 3, 5});
    const Bytes bytes = format_npy(a);
    auto parsed = parse_npy(bytes);
    ASSERT_TRUE(parsed.is_ok()) << parsed.status().to_string();
    EXPECT_EQ(parsed->dtype, dtype);
    EXPECT_EQ(parsed->shape, a.shape);
    EXPECT_EQ(parsed->data, a.data);

    const std::string file = path(std::string(shm::data_type_name(dtype)) + ".npy");
    ASSERT_TRUE(write_npy(file, a).is_ok());
    auto read = read_npy(file);
    ASSERT_TRUE(read.is_ok()) << read.status().to_string();
    EXPECT_EQ(read->dtype, dtype);
    EXPECT_EQ(read->shape, a.shape);
    EXPECT_EQ(read->data, a.data);
  }
  EXPECT_EQ(files_in_dir(), std::size(kAllTypes)) << "no temporary file left behind";
}

TEST_F(NpyTest, DescrsAreNumpys) {
  EXPECT_EQ(npy_descr(DataType::kFp32), "<f4");
  EXPECT_EQ(npy_descr(DataType::kFp16), "<f2");
  EXPECT_EQ(npy_descr(DataType::kFp64), "<f8");
  EXPECT_EQ(npy_descr(DataType::kInt8), "|i1");
  EXPECT_EQ(npy_descr(DataType::kInt64), "<i8");
  EXPECT_EQ(npy_descr(DataType::kUint8), "|u1");
  EXPECT_EQ(npy_descr(DataType::kUint16), "<u2");
  EXPECT_EQ(npy_descr(DataType::kBool), "|b1");
  EXPECT_EQ(npy_descr(DataType::kInvalid), "");
}

TEST_F(NpyTest, FormatIsVersionOneWithAHeaderPaddedTo64Bytes) {
  const Bytes bytes = format_npy(sample(DataType::kFp32, {2, 3}));
  ASSERT_GE(bytes.size(), 64u + 24u);
  EXPECT_EQ(std::memcmp(bytes.data(), "\x93NUMPY\x01\x00", 8), 0);
  const size_t len = std::to_integer<size_t>(bytes[8]) | std::to_integer<size_t>(bytes[9]) << 8;
  EXPECT_EQ((10 + len) % 64, 0u);
  EXPECT_EQ(bytes.size(), 10 + len + 24);
  const std::string header(reinterpret_cast<const char*>(bytes.data()) + 10, len);
  EXPECT_EQ(header.rfind("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 0), 0u)
      << header;
  EXPECT_EQ(header.back(), '\n');

  const Bytes one = format_npy(sample(DataType::kInt64, {4}));
  EXPECT_NE(std::string(reinterpret_cast<const char*>(one.data()), one.size()).find("(4,)"),
            std::string::npos);
  const Bytes scalar = format_npy(sample(DataType::kInt64, {}));
  EXPECT_NE(std::string(reinterpret_cast<const char*>(scalar.data()), scalar.size()).find("()"),
            std::string::npos);
}

TEST_F(NpyTest, ScalarsAndEmptyArrays) {
  auto scalar = parse_npy(format_npy(sample(DataType::kFp64, {})));
  ASSERT_TRUE(scalar.is_ok()) << scalar.status().to_string();
  EXPECT_TRUE(scalar->shape.empty());
  EXPECT_EQ(scalar->element_count(), 1);
  EXPECT_EQ(scalar->data.size(), 8u);

  auto empty = parse_npy(format_npy(sample(DataType::kFp32, {0, 3})));
  ASSERT_TRUE(empty.is_ok()) << empty.status().to_string();
  EXPECT_EQ(empty->shape, (std::vector<int64_t>{0, 3}));
  EXPECT_TRUE(empty->data.empty());
}

TEST_F(NpyTest, HeaderDialects) {
  const Bytes four = pattern(4);
  struct Case {
    int major;
    std::string header;
    DataType dtype;
    std::vector<int64_t> shape;
    size_t bytes;
  };
  const Case cases[] = {
      // Key order, no trailing comma, double quotes, odd whitespace.
      {1, "{'shape': (4,), 'fortran_order': False, 'descr': '|u1'}", DataType::kUint8, {4}, 4},
      {1,
       " {\"descr\":\"<u1\",\"fortran_order\":False,\"shape\":(2,2)}\n",
       DataType::kUint8,
       {2, 2},
       4},
      {1,
       "{\n\t'descr' : '|i1' ,\r\n 'fortran_order' : False , 'shape' : ( 4 , ) , }   \n",
       DataType::kInt8,
       {4},
       4},
      {1, "{'descr': '=i4', 'fortran_order': False, 'shape': (), }", DataType::kInt32, {}, 4},
      {1,
       "{'descr': '<f2', 'fortran_order': False, 'shape': (1L, 2L), }",
       DataType::kFp16,
       {1, 2},
       4},
      {1, "{'descr': '>u1', 'fortran_order': False, 'shape': (4,), }", DataType::kUint8, {4}, 4},
      {2, "{'descr': '<u2', 'fortran_order': False, 'shape': (2,), }", DataType::kUint16, {2}, 4},
      {3, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", DataType::kFp32, {1}, 4},
      {1,
       "{'descr': '|b1', 'fortran_order': False, 'shape': (4, 0, 9), }",
       DataType::kBool,
       {4, 0, 9},
       0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    const Bytes data(four.begin(), four.begin() + std::ptrdiff_t(c.bytes));
    auto a = parse_npy(npy_file(c.major, c.header, data));
    ASSERT_TRUE(a.is_ok()) << a.status().to_string();
    EXPECT_EQ(a->dtype, c.dtype);
    EXPECT_EQ(a->shape, c.shape);
    EXPECT_EQ(a->data, data);
  }
}

TEST_F(NpyTest, MalformedFilesAreNamedErrors) {
  const std::string ok_tail = "'fortran_order': False, 'shape': (2,), }";
  const Bytes eight = pattern(8);
  EXPECT_EQ(parse_error({}), "not a .npy file: it is empty");
  EXPECT_EQ(parse_error(to_bytes("PK\x03\x04 a zip")),
            "not a .npy file: it does not start with the magic string \\x93NUMPY");
  EXPECT_EQ(parse_error(to_bytes("\x93NUM")),
            "not a .npy file: it does not start with the magic string \\x93NUMPY");
  EXPECT_EQ(parse_error(to_bytes("\x93NUMPY\x01")), "truncated: the file ends inside the preamble");
  EXPECT_EQ(parse_error(to_bytes(std::string("\x93NUMPY\x02\x00\x10\x00", 10))),
            "truncated: the file ends inside the preamble");
  EXPECT_EQ(parse_error(npy_file(4, "{}")),
            "unsupported .npy format version 4.0 (1.0, 2.0 and 3.0 are supported)");
  Bytes minor = npy_file(1, "{}");
  minor[7] = std::byte{1};
  EXPECT_EQ(parse_error(minor),
            "unsupported .npy format version 1.1 (1.0, 2.0 and 3.0 are supported)");
  Bytes past_end = npy_file(1, "{'descr': '<f4', " + ok_tail);
  past_end[8] = std::byte{0xFF};
  EXPECT_EQ(parse_error(past_end),
            "truncated: header length 255 goes past the end of the file (67 bytes)");
  Bytes huge_header = npy_file(2, "{}");
  huge_header[11] = std::byte{0x7F};
  EXPECT_EQ(parse_error(huge_header),
            "header length 2130706434 is over the limit of 1048576 bytes");

  auto header_error = [&](const std::string& header, const Bytes& data = {}) {
    return parse_error(npy_file(1, header, data));
  };
  EXPECT_EQ(header_error("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", eight),
            "fortran_order arrays are not supported; save np.ascontiguousarray(arr)");
  EXPECT_EQ(header_error("{'descr': '>f4', " + ok_tail, eight),
            "big-endian arrays are not supported (descr '>f4'); save arr.astype('<f4')");
  EXPECT_EQ(header_error("{'descr': '!i8', 'fortran_order': False, 'shape': (1,), }", eight),
            "big-endian arrays are not supported (descr '!i8'); save arr.astype('<i8')");
  const std::string supported =
      " (supported: <f2, <f4, <f8, |i1, <i2, <i4, <i8, |u1, <u2, <u4, <u8, |b1)";
  EXPECT_EQ(header_error("{'descr': '<c8', " + ok_tail, eight),
            "unsupported descr '<c8'" + supported);
  EXPECT_EQ(header_error("{'descr': '<f16', " + ok_tail, eight),
            "unsupported descr '<f16'" + supported);
  EXPECT_EQ(header_error("{'descr': 'f4', " + ok_tail, eight),
            "unsupported descr 'f4'" + supported);
  EXPECT_EQ(header_error("{'descr': '|O', " + ok_tail, eight),
            "unsupported descr '|O'" + supported);
  EXPECT_EQ(header_error("{'descr': '<U99999999999999999999', " + ok_tail, eight),
            "unsupported descr '<U99999999999999999999'" + supported);
  EXPECT_EQ(header_error("{'descr': [('a', '<f4')], " + ok_tail, eight),
            "structured dtypes (a list descr) are not supported");
  EXPECT_EQ(header_error("{'descr': '<f4', " + ok_tail, pattern(7)),
            "data is 7 bytes, but shape [2] of <f4 needs 8");
  EXPECT_EQ(header_error("{'descr': '<f4', " + ok_tail, pattern(9)),
            "data is 9 bytes, but shape [2] of <f4 needs 8");
  EXPECT_EQ(header_error("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, "
                         "4294967296), }"),
            "shape [4294967296,4294967296] is too large: its byte size overflows 64 bits");
  EXPECT_EQ(header_error("{'descr': '<f8', 'fortran_order': False, 'shape': (65536, 65536), }"),
            "data is 0 bytes, but shape [65536,65536] of <f8 needs 34359738368");
  EXPECT_EQ(header_error("{'descr': '<f8', 'fortran_order': False, 'shape': "
                         "(99999999999999999999,), }"),
            "shape has a dimension that does not fit in 64 bits");
  EXPECT_EQ(header_error("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }"),
            "shape has a negative dimension");
  EXPECT_EQ(header_error("{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", eight),
            "'shape' is not a tuple: one dimension is written (2,)");
  EXPECT_EQ(header_error("{'descr': '<f4', 'fortran_order': False, 'shape': [2], }", eight),
            "malformed header dict: expected a tuple for 'shape' at offset 50");
  EXPECT_EQ(header_error("{'descr': '<f4', 'fortran_order': False, 'shape': (2 3), }", eight),
            "malformed header dict: expected ',' or ')' in 'shape' at offset 53");
  std::string many = "{'descr': '|u1', 'fortran_order': False, 'shape': (";
  for (int i = 0; i < 65; ++i) many += "1,";
  EXPECT_EQ(header_error(many + "), }", pattern(1)), "shape has more than 64 dimensions");
  EXPECT_EQ(header_error("{'descr': '<f4', 'shape': (2,), }", eight),
            "header lacks the key 'fortran_order'");
  EXPECT_EQ(header_error("{'descr': '<f4', 'descr': '<f4', " + ok_tail, eight),
            "header has the key 'descr' twice");
  EXPECT_EQ(header_error("{'descr': '<f4', 'extra': 1, " + ok_tail, eight),
            "header has an unknown key 'extra' (expected 'descr', 'fortran_order' and 'shape')");
  EXPECT_EQ(header_error("{'descr': '<f4', 'fortran_order': false, 'shape': (2,), }", eight),
            "malformed header dict: expected True or False for 'fortran_order' at offset 34");
  EXPECT_EQ(header_error("{'descr': '<f4', 'fortran_order': Falsey, 'shape': (2,), }", eight),
            "malformed header dict: expected True or False for 'fortran_order' at offset 34");
  EXPECT_EQ(header_error("['descr', '<f4']"),
            "malformed header dict: header is not a dict (it does not start with '{') at offset 0");
  EXPECT_EQ(header_error("{'descr': '<f4', " + ok_tail + " x", eight),
            "malformed header dict: unexpected text after the header dict at offset 58");
  EXPECT_EQ(header_error("{'descr': '<f4' 'fortran_order': False, 'shape': (2,), }", eight),
            "malformed header dict: expected ',' or '}' after the value of 'descr' at offset 16");
  EXPECT_EQ(header_error("{'descr' '<f4', " + ok_tail, eight),
            "malformed header dict: expected ':' after key 'descr' at offset 9");
  EXPECT_EQ(header_error("{descr: '<f4', " + ok_tail, eight),
            "malformed header dict: expected a quoted key at offset 1");
  EXPECT_EQ(header_error("{'descr': '<f4"),
            "malformed header dict: unterminated string at offset 14");
  EXPECT_EQ(header_error("{'descr': '<f\\x34', " + ok_tail, eight),
            "malformed header dict: escape sequences in strings are not supported at offset 13");
  EXPECT_EQ(header_error("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)"),
            "malformed header dict: expected ',' or '}' after the value of 'shape' at offset 54");
  EXPECT_EQ(header_error("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } \xC3\xA9"),
            "malformed header dict: a version 1.0 header must be ASCII");
}

TEST_F(NpyTest, EveryTruncationOfAValidFileIsAnError) {
  const Bytes full = format_npy(sample(DataType::kInt16, {3, 4}));
  for (size_t n = 0; n < full.size(); ++n) {
    auto r = parse_npy(std::span(full).first(n));
    ASSERT_FALSE(r.is_ok()) << n;
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  }
}

TEST_F(NpyTest, ReadErrorsNameTheFile) {
  auto missing = read_npy(path("missing.npy"));
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(missing.status().message(), path("missing.npy") + ": no such file");

  write_raw("bad.npy", to_bytes("not numpy"));
  auto bad = read_npy(path("bad.npy"));
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(
      bad.status().message(),
      path("bad.npy") + ": not a .npy file: it does not start with the magic string \\x93NUMPY");

  Bytes short_data = format_npy(sample(DataType::kFp32, {2, 2}));
  short_data.pop_back();
  write_raw("short.npy", short_data);
  auto truncated = read_npy(path("short.npy"));
  ASSERT_FALSE(truncated.is_ok());
  EXPECT_EQ(truncated.status().message(),
            path("short.npy") + ": data is 15 bytes, but shape [2,2] of <f4 needs 16");

  auto folder = read_npy(dir_);
  ASSERT_FALSE(folder.is_ok());
  EXPECT_EQ(folder.status().message(), dir_ + ": not a regular file");
}

TEST_F(NpyTest, WriteReplacesAtomicallyAndRefusesInvalidArrays) {
  const std::string file = path("x.npy");
  ASSERT_TRUE(write_npy(file, sample(DataType::kFp32, {8})).is_ok());
  ASSERT_TRUE(write_npy(file, sample(DataType::kUint8, {3})).is_ok());
  auto read = read_npy(file);
  ASSERT_TRUE(read.is_ok());
  EXPECT_EQ(read->dtype, DataType::kUint8);

  NpyArray wrong = sample(DataType::kFp32, {2, 2});
  wrong.data.pop_back();
  Status s = write_npy(file, wrong);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "npy array data is 15 bytes, but shape [2,2] of FP32 needs 16");
  wrong = sample(DataType::kFp32, {2});
  wrong.shape = {-1, -2};
  EXPECT_EQ(write_npy(file, wrong).message(), "npy array shape [-1,-2] has a negative dimension");
  wrong.dtype = DataType::kInvalid;
  EXPECT_EQ(write_npy(file, wrong).message(), "npy array has no dtype");
  read = read_npy(file);
  ASSERT_TRUE(read.is_ok()) << "the old file is still whole";
  EXPECT_EQ(read->dtype, DataType::kUint8);
  EXPECT_EQ(files_in_dir(), 1u);

  Status no_dir = write_npy(path("nope/x.npy"), sample(DataType::kFp32, {1}));
  EXPECT_EQ(no_dir.code(), ErrorCode::kNotFound) << no_dir.to_string();
  EXPECT_NE(no_dir.message().find(path("nope/x.npy")), std::string::npos) << no_dir.message();
  EXPECT_EQ(files_in_dir(), 1u);
}

// numpy itself, when /usr/bin/python3 has it (not the python3 on PATH, which may be another).
bool have_numpy() { return std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0; }

int run_python(const std::string& dir, const std::string& script) {
  const std::string file = dir + "/script.py";
  std::ofstream(file) << script;
  return std::system(("cd " + dir + " && /usr/bin/python3 " + file).c_str());
}

TEST_F(NpyTest, ReadsWhatNumpyWrites) {
  if (!have_numpy()) GTEST_SKIP() << "/usr/bin/python3 has no numpy";
  ASSERT_EQ(run_python(dir_, R"(
import numpy as np
from numpy.lib import format as F
types = ['<f2', '<f4', '<f8', '|i1', '<i2', '<i4', '<i8', '|u1', '<u2', '<u4', '<u8', '|b1']
for t in types:
    a = (np.arange(24) % 7).astype(t).reshape(2, 3, 4)
    np.save(t[1:] + '.npy', a)
np.save('scalar.npy', np.float64(2.5))
np.save('empty.npy', np.zeros((0, 5), '<i4'))
for v in [(2, 0), (3, 0)]:
    with open('v%d.npy' % v[0], 'wb') as f:
        F.write_array(f, np.arange(6, dtype='<f4').reshape(3, 2), version=v)
np.save('fortran.npy', np.asfortranarray(np.ones((2, 3), '<f4')))
np.save('big.npy', np.ones(3, '>f4'))
np.save('complex.npy', np.ones(3, '<c8'))
)"),
            0);
  for (const char* t : {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"}) {
    SCOPED_TRACE(t);
    auto a = read_npy(path(std::string(t) + ".npy"));
    ASSERT_TRUE(a.is_ok()) << a.status().to_string();
    EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3, 4}));
    EXPECT_EQ(npy_descr(a->dtype).substr(1), t);
    EXPECT_EQ(a->data.size(), 24 * shm::data_type_size(a->dtype));
    // Element 10 is 10 % 7 = 3 (true for bool).
    const size_t size = shm::data_type_size(a->dtype);
    const std::byte* e = a->data.data() + 10 * size;
    if (a->dtype == DataType::kFp32) {
      float v;
      std::memcpy(&v, e, 4);
      EXPECT_EQ(v, 3.0F);
    } else if (a->dtype == DataType::kFp64) {
      double v;
      std::memcpy(&v, e, 8);
      EXPECT_EQ(v, 3.0);
    } else if (a->dtype == DataType::kFp16) {
      EXPECT_EQ(std::to_integer<int>(e[0]) | std::to_integer<int>(e[1]) << 8, 0x4200);  // 3.0
    } else if (a->dtype == DataType::kBool) {
      EXPECT_EQ(std::to_integer<int>(e[0]), 1);
    } else {
      EXPECT_EQ(std::to_integer<int>(e[0]), 3);
      for (size_t k = 1; k < size; ++k) EXPECT_EQ(std::to_integer<int>(e[k]), 0);
    }
  }
  auto scalar = read_npy(path("scalar.npy"));
  ASSERT_TRUE(scalar.is_ok()) << scalar.status().to_string();
  EXPECT_TRUE(scalar->shape.empty());
  EXPECT_EQ(scalar->dtype, DataType::kFp64);
  auto empty = read_npy(path("empty.npy"));
  ASSERT_TRUE(empty.is_ok()) << empty.status().to_string();
  EXPECT_EQ(empty->shape, (std::vector<int64_t>{0, 5}));
  for (const char* v : {"v2.npy", "v3.npy"}) {
    auto a = read_npy(path(v));
    ASSERT_TRUE(a.is_ok()) << a.status().to_string();
    EXPECT_EQ(a->shape, (std::vector<int64_t>{3, 2}));
    float last;
    std::memcpy(&last, a->data.data() + 20, 4);
    EXPECT_EQ(last, 5.0F);
  }
  EXPECT_EQ(read_npy(path("fortran.npy")).status().message(),
            path("fortran.npy") +
                ": fortran_order arrays are not supported; save np.ascontiguousarray(arr)");
  EXPECT_EQ(read_npy(path("big.npy")).status().message(),
            path("big.npy") +
                ": big-endian arrays are not supported (descr '>f4'); save arr.astype('<f4')");
  EXPECT_NE(read_npy(path("complex.npy")).status().message().find("unsupported descr '<c8'"),
            std::string::npos);
}

TEST_F(NpyTest, NumpyReadsWhatWeWrite) {
  if (!have_numpy()) GTEST_SKIP() << "/usr/bin/python3 has no numpy";
  for (DataType dtype : kAllTypes) {
    ASSERT_TRUE(
        write_npy(path(npy_descr(dtype).substr(1) + ".npy"), sample(dtype, {2, 3, 5})).is_ok());
  }
  ASSERT_TRUE(write_npy(path("scalar.npy"), sample(DataType::kInt32, {})).is_ok());
  // numpy checks the header, the dtype and the bytes (the pattern sample() writes).
  ASSERT_EQ(run_python(dir_, R"(
import numpy as np
pattern = np.array([(i * 37 + 11) % 256 for i in range(240)], dtype=np.uint8)
for t in ['<f2', '<f4', '<f8', '|i1', '<i2', '<i4', '<i8', '|u1', '<u2', '<u4', '<u8', '|b1']:
    a = np.load(t[1:] + '.npy')
    assert a.dtype == np.dtype(t), (t, a.dtype)
    assert a.shape == (2, 3, 5), a.shape
    assert a.flags['C_CONTIGUOUS']
    if t == '|b1':
        assert (a.reshape(-1) == (np.arange(30) % 3 == 0)).all()
    else:
        assert (a.reshape(-1).view(np.uint8) == pattern[:30 * a.itemsize]).all(), t
s = np.load('scalar.npy')
assert s.shape == () and s.dtype == np.int32
)"),
            0);
}

}  // namespace
}  // namespace sliceserve::client
