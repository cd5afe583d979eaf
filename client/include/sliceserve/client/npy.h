#pragma once
// NumPy .npy files: the format np.save writes and np.load reads, for the arrays SliceServe
// serves (see https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html).
//
//   auto array = sliceserve::client::read_npy("x.npy");
//   if (!array.is_ok()) ... array.status().message() ...   // names the file and what is wrong
//   RETURN_IF_ERROR(sliceserve::client::write_npy("y.npy", *array));
//
// Reading accepts format versions 1.0, 2.0 and 3.0, C-order (not Fortran-order) arrays of the
// dtypes in shm::DataType, little-endian ('<', '=' or '|'; '>' is refused), any rank from 0 (a
// scalar, shape ()) to kMaxNpyDims. The header dict is parsed strictly (exactly the keys 'descr',
// 'fortran_order' and 'shape', each once, in any order; Python literal syntax with whitespace
// and trailing commas). Every malformed input is a kInvalidArgument naming what is wrong, and
// no allocation is larger than the input's own data. Writing produces what np.save writes:
// version 1.0 (2.0 when the header needs it), the header padded to 64 bytes, numpy's descr.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "sliceserve/shm/status.h"
#include "sliceserve/shm/tensor_spec.h"

namespace sliceserve::client {

inline constexpr size_t kMaxNpyDims = 64;                      // numpy's NPY_MAXDIMS (numpy 2)
inline constexpr size_t kMaxNpyHeaderBytes = size_t{1} << 20;  // the header dict's text

// A dense array: row-major, little-endian elements (BOOL one byte, 0 or 1; FP16 raw bits).
struct NpyArray {
  shm::DataType dtype = shm::DataType::kInvalid;
  std::vector<int64_t> shape;  // empty: a scalar (one element)
  std::vector<std::byte> data;

  // Product of the shape (1 for a scalar).
  int64_t element_count() const;
};

// numpy's descr of a dtype ("<f4", "|u1", "|b1", ...); empty for kInvalid.
std::string npy_descr(shm::DataType dtype);

// Parses a whole .npy file's bytes. kInvalidArgument for anything malformed or unsupported.
Result<NpyArray> parse_npy(std::span<const std::byte> bytes);

// Reads and parses a file; kNotFound when it does not exist. Errors name the file.
Result<NpyArray> read_npy(const std::string& path);

// kInvalidArgument unless the dtype is valid, no dimension is negative and data holds exactly
// element_count() elements.
Status validate_npy(const NpyArray& array);

// The file's bytes. The array must be valid (validate_npy); an invalid one aborts.
std::vector<std::byte> format_npy(const NpyArray& array);

// Writes the file through a temporary in the same folder, renamed over `path` once complete, so
// that a failure leaves either the old file or none, never a truncated one. kInvalidArgument for
// an invalid array, kNotFound when the folder does not exist, kInternal for other I/O errors.
Status write_npy(const std::string& path, const NpyArray& array);

}  // namespace sliceserve::client
