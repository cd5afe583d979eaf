#pragma once
// Data movement kernel bodies, for elements of any dtype (1, 2, 4 or 8 bytes): a strided copy
// (Transpose, Slice, and Concat's and Split's blocks along an axis), Pad and Gather. Each is a
// function of one flat index of the copied index space.

#include "kernels/kernel_common.cuh"

namespace sliceserve::backends::kernels {

// dst[i's offset in dst_strides] = src[i's offset in src_strides] over the index space [dims].
// src and dst point at the views' element 0; strides are in elements and may be negative (a
// Slice with negative steps).
struct StridedCopyParams {
  const void* src;
  void* dst;
  int64_t count;
  int32_t element_size;
  int32_t rank;
  int64_t dims[kMaxRank];
  int64_t src_strides[kMaxRank];
  int64_t dst_strides[kMaxRank];
};

SS_HD inline void strided_copy_element(const StridedCopyParams& p, int64_t i) {
  int64_t at_src = 0, at_dst = 0;
  strided_offsets(i, p.rank, p.dims, p.src_strides, p.dst_strides, &at_src, &at_dst);
  copy_element(p.dst, at_dst, p.src, at_src, p.element_size);
}

enum class KernelPadMode : int32_t { kConstant, kReflect, kEdge };

// Per output dimension d: the kept part of the input (after negative pads crop) starts at
// keep_begin[d], has kept[d] elements, and lands at output position at[d]; other positions are
// padding: the constant (its bits), or for reflect and edge a kept position, dimension by
// dimension (the reference's innermost-first block copies compose to exactly that).
struct PadParams {
  const void* x;
  void* y;
  int64_t count;
  int32_t element_size;
  int32_t rank;
  KernelPadMode mode;
  uint64_t value_bits;
  int64_t out_dims[kMaxRank];
  int64_t x_strides[kMaxRank];
  int64_t keep_begin[kMaxRank];
  int64_t kept[kMaxRank];
  int64_t at[kMaxRank];
};

// The kept position that padded position `p` (relative to the kept part) copies.
SS_HD inline int64_t pad_source(KernelPadMode mode, int64_t p, int64_t len) {
  if (mode == KernelPadMode::kEdge) return p < 0 ? 0 : p >= len ? len - 1 : p;
  if (len == 1) return 0;
  const int64_t period = 2 * (len - 1);
  const int64_t r = ((p % period) + period) % period;
  return r < len ? r : period - r;
}

SS_HD inline void pad_element(const PadParams& p, int64_t i) {
  int64_t index = i;
  int64_t offset = 0;
  for (int32_t d = p.rank - 1; d >= 0; --d) {
    const int64_t q = index % p.out_dims[d];
    index /= p.out_dims[d];
    int64_t rel = q - p.at[d];
    if (rel < 0 || rel >= p.kept[d]) {
      if (p.mode == KernelPadMode::kConstant) {
        store_bits(p.y, i, p.element_size, p.value_bits);
        return;
      }
      rel = pad_source(p.mode, rel, p.kept[d]);
    }
    offset += (p.keep_begin[d] + rel) * p.x_strides[d];
  }
  copy_element(p.y, i, p.x, offset, p.element_size);
}

// y[o, j, k] = x[o, indices[j], k] with o over the dimensions before the axis, j over the
// indices, k over those after it. A negative index counts from the end; one out of range (which
// the executor cannot see before the run) gives zeros rather than a fault.
struct GatherParams {
  const void* x;
  const void* indices;
  void* y;
  int64_t count;
  int32_t element_size;
  int32_t indices_are_int64;
  int64_t index_count;
  int64_t axis_length;
  int64_t inner;
};

SS_HD inline void gather_element(const GatherParams& p, int64_t i) {
  const int64_t k = i % p.inner;
  const int64_t rest = i / p.inner;
  const int64_t j = rest % p.index_count;
  const int64_t o = rest / p.index_count;
  int64_t index = p.indices_are_int64 != 0 ? load_at<int64_t>(p.indices, j)
                                           : static_cast<int64_t>(load_at<int32_t>(p.indices, j));
  if (index < 0) index += p.axis_length;
  if (index < 0 || index >= p.axis_length) {
    store_bits(p.y, i, p.element_size, 0);
    return;
  }
  copy_element(p.y, i, p.x, (o * p.axis_length + index) * p.inner + k, p.element_size);
}

}  // namespace sliceserve::backends::kernels
