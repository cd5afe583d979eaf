#include "reference_ops.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "sliceserve/backends/op_geometry.h"
#include "sliceserve/shm/element_conversions.h"
#include "sliceserve/shm/tensor_spec.h"

namespace sliceserve::backends {
namespace {

using Inputs = std::span<const TensorRef>;
using Outputs = std::span<const MutableTensorRef>;

// Storage types of the two dtypes C++ has no distinct arithmetic type for.
struct Fp16 {
  uint16_t bits;
};
struct Bool {
  uint8_t value;
};

// What a dtype is computed in: fp16 in fp32, everything else in itself.
template <typename T>
using Compute = std::conditional_t<std::is_same_v<T, Fp16>, float, T>;

template <typename T>
inline constexpr bool kIsFloat = std::is_same_v<T, Fp16> || std::is_floating_point_v<T>;

template <typename T>
struct Type {
  using type = T;
};

// Tensors need not be aligned for their dtype: every access goes through memcpy, which compiles
// to a plain load or store.
template <typename T>
T load(const std::byte* base, int64_t index) {
  T value;
  std::memcpy(&value, base + index * int64_t(sizeof(T)), sizeof(T));
  return value;
}

template <typename T>
void store(std::byte* base, int64_t index, T value) {
  std::memcpy(base + index * int64_t(sizeof(T)), &value, sizeof(T));
}

float half_to_float(uint16_t bits) { return static_cast<float>(shm::half_to_double(bits)); }

using shm::double_to_half;
using shm::saturate;
using shm::to_float;

// Cast semantics (see the header): From and To are storage types.
template <typename To, typename From>
To convert(From value) {
  if constexpr (std::is_same_v<From, Bool>) {
    return convert<To>(uint8_t(value.value != 0 ? 1 : 0));
  } else if constexpr (std::is_same_v<From, Fp16>) {
    return convert<To>(half_to_float(value.bits));
  } else if constexpr (std::is_same_v<To, Bool>) {
    return Bool{uint8_t(value != From(0) ? 1 : 0)};
  } else if constexpr (std::is_same_v<To, Fp16>) {
    return Fp16{double_to_half(double(value))};
  } else if constexpr (std::is_integral_v<To> && std::is_floating_point_v<From>) {
    return saturate<To>(double(value));
  } else if constexpr (std::is_same_v<To, float> && std::is_same_v<From, double>) {
    return to_float(value);
  } else {
    return static_cast<To>(value);  // integer -> integer wraps (C++20 defines it modular)
  }
}

template <typename T>
Compute<T> load_value(const std::byte* base, int64_t index) {
  if constexpr (std::is_same_v<T, Fp16>) {
    return half_to_float(load<uint16_t>(base, index));
  } else {
    return load<T>(base, index);
  }
}

template <typename T>
void store_value(std::byte* base, int64_t index, Compute<T> value) {
  if constexpr (std::is_same_v<T, Fp16>) {
    store<uint16_t>(base, index, double_to_half(double(value)));
  } else {
    store<T>(base, index, value);
  }
}

template <typename T>
std::vector<Compute<T>> load_all(const std::byte* base, int64_t count) {
  std::vector<Compute<T>> values(static_cast<size_t>(count));
  if constexpr (std::is_same_v<T, Fp16>) {
    for (int64_t i = 0; i < count; ++i) values[size_t(i)] = load_value<T>(base, i);
  } else if (count > 0) {
    std::memcpy(values.data(), base, size_t(count) * sizeof(T));
  }
  return values;
}

template <typename T>
void store_all(std::byte* base, const std::vector<Compute<T>>& values) {
  if constexpr (std::is_same_v<T, Fp16>) {
    for (size_t i = 0; i < values.size(); ++i) store_value<T>(base, int64_t(i), values[i]);
  } else if (!values.empty()) {
    std::memcpy(base, values.data(), values.size() * sizeof(T));
  }
}

// ---- shapes and errors ---------------------------------------------------------------------

std::string_view kind_name(OpKind kind) {
  switch (kind) {
    case OpKind::kConv:
      return "Conv";
    case OpKind::kBatchNorm:
      return "BatchNorm";
    case OpKind::kUnary:
      return "Unary";
    case OpKind::kBinary:
      return "Binary";
    case OpKind::kMaxPool:
      return "MaxPool";
    case OpKind::kAveragePool:
      return "AveragePool";
    case OpKind::kGlobalAveragePool:
      return "GlobalAveragePool";
    case OpKind::kGemm:
      return "Gemm";
    case OpKind::kMatMul:
      return "MatMul";
    case OpKind::kCopy:
      return "Copy";
    case OpKind::kTranspose:
      return "Transpose";
    case OpKind::kConcat:
      return "Concat";
    case OpKind::kSplit:
      return "Split";
    case OpKind::kSlice:
      return "Slice";
    case OpKind::kReduceMean:
      return "ReduceMean";
    case OpKind::kSoftmax:
      return "Softmax";
    case OpKind::kLrn:
      return "LRN";
    case OpKind::kPad:
      return "Pad";
    case OpKind::kGather:
      return "Gather";
    case OpKind::kCast:
      return "Cast";
    case OpKind::kFill:
      return "Fill";
  }
  return "unknown op";
}

Status invalid(const PlanOp& op, const std::string& what) {
  return Status(ErrorCode::kInvalidArgument,
                op.label + ": " + std::string(kind_name(op.kind)) + " reference kernel: " + what);
}

Status unsupported_dtype(const PlanOp& op, DataType dtype) {
  return invalid(op, "unsupported dtype " + std::string(shm::data_type_name(dtype)));
}

std::string dtype_name(DataType dtype) { return std::string(shm::data_type_name(dtype)); }

bool present(const TensorRef& t) { return t.data != nullptr; }

Status check_tensor(const PlanOp& op, const std::string& what, DataType dtype, DimsView dims,
                    bool has_data) {
  if (shm::data_type_size(dtype) == 0) return invalid(op, what + " has no valid dtype");
  for (int64_t d : dims) {
    if (d < 0) return invalid(op, what + " has a negative dimension " + dims_string(dims));
  }
  if (!has_data && element_count(dims) > 0) return invalid(op, what + " has no data");
  return Status::ok();
}

// Counts of inputs (required ones first, then optional ones) and outputs, and that each tensor is
// well formed. Optional inputs are absent when their data is null.
Status check_io(const PlanOp& op, Inputs in, Outputs out, size_t min_in, size_t max_in,
                size_t min_out, size_t max_out) {
  auto range = [](size_t lo, size_t hi) {
    return lo == hi ? std::to_string(lo) : std::to_string(lo) + " to " + std::to_string(hi);
  };
  if (in.size() < min_in || in.size() > max_in) {
    return invalid(op,
                   "needs " + range(min_in, max_in) + " inputs, got " + std::to_string(in.size()));
  }
  if (out.size() < min_out || out.size() > max_out) {
    return invalid(
        op, "needs " + range(min_out, max_out) + " outputs, got " + std::to_string(out.size()));
  }
  for (size_t i = 0; i < in.size(); ++i) {
    if (i >= min_in && !present(in[i])) continue;
    RETURN_IF_ERROR(
        check_tensor(op, "input " + std::to_string(i), in[i].dtype, in[i].dims, present(in[i])));
  }
  for (size_t i = 0; i < out.size(); ++i) {
    RETURN_IF_ERROR(check_tensor(op, "output " + std::to_string(i), out[i].dtype, out[i].dims,
                                 out[i].data != nullptr));
  }
  return Status::ok();
}

Status check_dtype(const PlanOp& op, const std::string& what, DataType actual, DataType expected) {
  if (actual == expected) return Status::ok();
  return invalid(op, what + " is " + dtype_name(actual) + ", expected " + dtype_name(expected));
}

// ---- strided iteration ---------------------------------------------------------------------

template <size_t N>
using Offsets = std::array<int64_t, N>;

// Calls fn(offsets, count, steps) for every innermost run of the index space `dims`, with each of
// the N views' element offset at the run's start and its stride along the run. Size-1
// dimensions are dropped and dimensions contiguous in every view merged first, so runs are as
// long as the views allow.
template <size_t N, typename Fn>
void for_each_run(DimsView dims, const std::array<DimsView, N>& strides, Fn&& fn) {
  if (std::find(dims.begin(), dims.end(), 0) != dims.end()) return;
  const MergedDims<N> space = merge_contiguous<N>(dims, strides);
  const Dims& merged = space.dims;
  const std::vector<Offsets<N>>& steps = space.strides;
  Offsets<N> offsets{};
  if (merged.empty()) {
    fn(offsets, int64_t(1), Offsets<N>{});
    return;
  }
  const size_t rank = merged.size();
  Dims index(rank, 0);
  while (true) {
    fn(offsets, merged[0], steps[0]);
    size_t k = 1;
    for (; k < rank; ++k) {
      if (++index[k] < merged[k]) {
        for (size_t v = 0; v < N; ++v) offsets[v] += steps[k][v];
        break;
      }
      for (size_t v = 0; v < N; ++v) offsets[v] -= steps[k][v] * (merged[k] - 1);
      index[k] = 0;
    }
    if (k == rank) break;
  }
}

template <size_t kSize>
void copy_elements(std::byte* dst, int64_t dst_step, const std::byte* src, int64_t src_step,
                   int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    std::memcpy(dst + i * dst_step * int64_t(kSize), src + i * src_step * int64_t(kSize), kSize);
  }
}

// Copies a `dims`-shaped block between two strided views (strides in elements, any sign; the
// pointers are each view's element at index 0), innermost contiguous runs with one memcpy.
void copy_view(std::byte* dst, DimsView dst_strides, const std::byte* src, DimsView src_strides,
               DimsView dims, size_t element_size) {
  const auto esize = int64_t(element_size);
  for_each_run<2>(dims, {dst_strides, src_strides},
                  [&](const Offsets<2>& at, int64_t count, const Offsets<2>& step) {
                    std::byte* d = dst + at[0] * esize;
                    const std::byte* s = src + at[1] * esize;
                    if ((step[0] == 1 && step[1] == 1) || count == 1) {
                      std::memcpy(d, s, size_t(count * esize));
                      return;
                    }
                    switch (element_size) {
                      case 1:
                        return copy_elements<1>(d, step[0], s, step[1], count);
                      case 2:
                        return copy_elements<2>(d, step[0], s, step[1], count);
                      case 4:
                        return copy_elements<4>(d, step[0], s, step[1], count);
                      default:
                        return copy_elements<8>(d, step[0], s, step[1], count);
                    }
                  });
}

// Calls fn(Type<T>{}) with T the storage type of `dtype`.
template <typename Fn>
Status visit_dtype(const PlanOp& op, DataType dtype, Fn&& fn) {
  switch (dtype) {
    case DataType::kBool:
      return fn(Type<Bool>{});
    case DataType::kUint8:
      return fn(Type<uint8_t>{});
    case DataType::kUint16:
      return fn(Type<uint16_t>{});
    case DataType::kUint32:
      return fn(Type<uint32_t>{});
    case DataType::kUint64:
      return fn(Type<uint64_t>{});
    case DataType::kInt8:
      return fn(Type<int8_t>{});
    case DataType::kInt16:
      return fn(Type<int16_t>{});
    case DataType::kInt32:
      return fn(Type<int32_t>{});
    case DataType::kInt64:
      return fn(Type<int64_t>{});
    case DataType::kFp16:
      return fn(Type<Fp16>{});
    case DataType::kFp32:
      return fn(Type<float>{});
    case DataType::kFp64:
      return fn(Type<double>{});
    case DataType::kInvalid:
      break;
  }
  return unsupported_dtype(op, dtype);
}

// Only fp16, fp32 and fp64 (the floating dtypes).
template <typename Fn>
Status visit_float(const PlanOp& op, DataType dtype, Fn&& fn) {
  return visit_dtype(op, dtype, [&](auto type) -> Status {
    using T = typename decltype(type)::type;
    if constexpr (kIsFloat<T>) {
      return fn(type);
    } else {
      return unsupported_dtype(op, dtype);
    }
  });
}

// ---- element-wise functions ----------------------------------------------------------------

bool valid_unary(UnaryAlg alg) {
  switch (alg) {
    case UnaryAlg::kRelu:
    case UnaryAlg::kLeakyRelu:
    case UnaryAlg::kClip:
    case UnaryAlg::kSigmoid:
    case UnaryAlg::kHardSigmoid:
    case UnaryAlg::kHardSwish:
    case UnaryAlg::kSwish:
      return true;
  }
  return false;
}

template <typename F>
F unary_value(UnaryAlg alg, F alpha, F beta, F x) {
  switch (alg) {
    case UnaryAlg::kRelu:
      return x > F(0) ? x : F(0);
    case UnaryAlg::kLeakyRelu:
      return x >= F(0) ? x : alpha * x;
    case UnaryAlg::kClip:
      return std::min(std::max(x, alpha), beta);
    case UnaryAlg::kSigmoid:
      return F(1) / (F(1) + std::exp(-x));
    case UnaryAlg::kHardSigmoid:
      return std::max(F(0), std::min(F(1), alpha * x + beta));
    case UnaryAlg::kHardSwish:
      return x * std::max(F(0), std::min(F(1), x / F(6) + F(0.5)));
    case UnaryAlg::kSwish:
      return x / (F(1) + std::exp(-x));
  }
  return x;
}

// Integers wrap around instead of overflowing: the arithmetic is done in uint64_t, whose
// conversion back to T is modular.
template <typename T>
T binary_value(BinaryAlg alg, T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    switch (alg) {
      case BinaryAlg::kAdd:
        return a + b;
      case BinaryAlg::kSub:
        return a - b;
      case BinaryAlg::kMul:
        return a * b;
      case BinaryAlg::kDiv:
        return a / b;
    }
    return a;
  } else {
    switch (alg) {
      case BinaryAlg::kAdd:
        return static_cast<T>(uint64_t(a) + uint64_t(b));
      case BinaryAlg::kSub:
        return static_cast<T>(uint64_t(a) - uint64_t(b));
      case BinaryAlg::kMul:
        return static_cast<T>(uint64_t(a) * uint64_t(b));
      case BinaryAlg::kDiv:
        if (b == 0) return 0;  // defined as 0 rather than a trap
        if constexpr (std::is_signed_v<T>) {
          if (b == T(-1)) return static_cast<T>(uint64_t(0) - uint64_t(a));  // MIN / -1 wraps
        }
        return static_cast<T>(a / b);  // truncates toward zero
    }
    return a;
  }
}

// Post-ops are checked before the op computes anything, so a bad one leaves outputs untouched.
Status check_post_ops(const PlanOp& op, const MutableTensorRef& out, Inputs sums) {
  size_t n_sums = 0;
  for (const PostOp& post : op.post_ops) {
    if (post.kind == PostOp::Kind::kSum) {
      if (n_sums < sums.size()) {
        const TensorRef& s = sums[n_sums];
        const std::string what = "sum operand " + std::to_string(n_sums);
        RETURN_IF_ERROR(check_tensor(op, what, s.dtype, s.dims, present(s)));
        RETURN_IF_ERROR(check_dtype(op, what, s.dtype, out.dtype));
        RETURN_IF_ERROR(check_dims({op, invalid}, what, s.dims, out.dims));
      }
      ++n_sums;
    } else if (post.kind == PostOp::Kind::kUnary) {
      if (!valid_unary(post.unary)) return invalid(op, "unknown post-op unary function");
    } else {
      return invalid(op, "unknown post-op kind");
    }
  }
  if (n_sums != sums.size()) {
    return invalid(op, std::to_string(n_sums) + " sum post-ops but " + std::to_string(sums.size()) +
                           " sum operands");
  }
  return Status::ok();
}

template <typename T>
void apply_post_ops(const PlanOp& op, std::vector<Compute<T>>& values, Inputs sums) {
  using F = Compute<T>;
  size_t next_sum = 0;
  for (const PostOp& post : op.post_ops) {
    if (post.kind == PostOp::Kind::kUnary) {
      const F alpha = F(post.alpha);
      const F beta = F(post.beta);
      for (F& v : values) v = unary_value<F>(post.unary, alpha, beta, v);
    } else {
      const std::byte* s = sums[next_sum++].data;
      for (size_t i = 0; i < values.size(); ++i) values[i] += load_value<T>(s, int64_t(i));
    }
  }
}

// ---- Conv and pooling ----------------------------------------------------------------------

// Fewer than 3 spatial dimensions are padded with trivial outer axes so that one 3-d loop nest
// serves 1-d, 2-d and 3-d.
using Axis = WindowAxis;
using Axes = std::array<Axis, 3>;

int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// Outputs o in [0, out) whose input position o * stride + k * dilation - pad_begin is in [0, in).
std::pair<int64_t, int64_t> valid_outputs(const Axis& a, int64_t k) {
  const int64_t offset = k * a.dilation - a.pad_begin;
  const int64_t lo = std::max<int64_t>(0, -floor_div(offset, a.stride));
  const int64_t hi = std::min(a.out, floor_div(a.in - 1 - offset, a.stride) + 1);
  return {lo, std::max(lo, hi)};
}

// Checks the spatial parameters (strides, dilations and pads may be empty: 1, 1 and 0) and the
// output's spatial dims: exactly the floor formula, or with `allow_ceil` either floor or ceil.
Result<Axes> spatial_axes(const PlanOp& op, DimsView in_dims, DimsView out_dims, DimsView kernel,
                          bool allow_ceil) {
  const size_t spatial = in_dims.size() - 2;
  auto check_size = [&](const std::vector<int64_t>& v, size_t n, const char* name) -> Status {
    if (!v.empty() && v.size() != n) {
      return invalid(op, std::string(name) + " has " + std::to_string(v.size()) +
                             " entries, expected " + std::to_string(n));
    }
    return Status::ok();
  };
  RETURN_IF_ERROR(check_size(op.strides, spatial, "strides"));
  RETURN_IF_ERROR(check_size(op.dilations, spatial, "dilations"));
  RETURN_IF_ERROR(check_size(op.pads, 2 * spatial, "pads"));
  if (kernel.size() != spatial) {
    return invalid(op, "kernel has " + std::to_string(kernel.size()) + " entries, expected " +
                           std::to_string(spatial));
  }
  Axes axes;
  for (size_t i = 0; i < spatial; ++i) {
    Axis& a = axes[3 - spatial + i];
    ASSIGN_OR_RETURN(
        a, window_axis({op, invalid}, i, spatial, kernel[i], in_dims[2 + i], out_dims[2 + i]));
    const WindowOutputs sizes = window_outputs(a);
    if (sizes.floor < 0) {
      return invalid(op, "the window is larger than the padded input in spatial dimension " +
                             std::to_string(i));
    }
    if (a.out != sizes.floor && !(allow_ceil && a.out == sizes.ceil)) {
      return invalid(op, "output spatial dimension " + std::to_string(i) + " is " +
                             std::to_string(a.out) + ", expected " + std::to_string(sizes.floor) +
                             (allow_ceil ? " or " + std::to_string(sizes.ceil) : std::string()));
    }
  }
  return axes;
}

Status run_conv(const PlanOp& op, Inputs in, Outputs out, Inputs sums) {
  RETURN_IF_ERROR(check_io(op, in, out, 2, 3, 1, 1));
  const TensorRef& x = in[0];
  const TensorRef& w = in[1];
  const TensorRef* bias = in.size() > 2 && present(in[2]) ? &in[2] : nullptr;
  const MutableTensorRef& y = out[0];
  for (DataType dtype : {x.dtype, w.dtype, y.dtype, bias ? bias->dtype : DataType::kFp32}) {
    if (dtype != DataType::kFp32) return unsupported_dtype(op, dtype);
  }
  const size_t rank = x.dims.size();
  if (rank < 3 || rank > 5) return invalid(op, "needs 1 to 3 spatial dimensions");
  if (w.dims.size() != rank || y.dims.size() != rank) {
    return invalid(op, "X, W and Y must have the same rank");
  }
  const int64_t n = x.dims[0], c = x.dims[1], m = w.dims[0], group = op.group;
  if (group < 1 || c % group != 0 || m % group != 0 || w.dims[1] * group != c) {
    return invalid(op, "group " + std::to_string(group) + " does not fit X " + dims_string(x.dims) +
                           " and W " + dims_string(w.dims));
  }
  if (y.dims[0] != n || y.dims[1] != m) {
    return invalid(op, "Y " + dims_string(y.dims) + " does not fit X " + dims_string(x.dims) +
                           " and W " + dims_string(w.dims));
  }
  if (bias) RETURN_IF_ERROR(check_dims({op, invalid}, "B", bias->dims, Dims{m}));
  const DimsView w_kernel = w.dims.subspan(2);
  if (!op.kernel.empty()) RETURN_IF_ERROR(check_dims({op, invalid}, "kernel", op.kernel, w_kernel));
  ASSIGN_OR_RETURN(const Axes axes, spatial_axes(op, x.dims, y.dims, w_kernel, false));
  RETURN_IF_ERROR(check_post_ops(op, y, sums));

  const Axis& ad = axes[0];
  const Axis& ah = axes[1];
  const Axis& aw = axes[2];
  const int64_t in_plane = ad.in * ah.in * aw.in;
  const int64_t out_plane = ad.out * ah.out * aw.out;
  const int64_t k_plane = ad.kernel * ah.kernel * aw.kernel;
  const int64_t cg = c / group, mg = m / group;
  const std::vector<float> xv = load_all<float>(x.data, element_count(x.dims));
  const std::vector<float> wv = load_all<float>(w.data, element_count(w.dims));
  std::vector<float> acc(size_t(element_count(y.dims)), 0.0F);

  // Weight-stationary loop order: for each weight, one contiguous run of outputs along the
  // innermost axis accumulates it, the valid run precomputed per kernel position.
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t oc = 0; oc < m; ++oc) {
      float* yp = acc.data() + (b * m + oc) * out_plane;
      if (bias) std::fill(yp, yp + out_plane, load<float>(bias->data, oc));
      const int64_t g = oc / mg;
      for (int64_t ic = 0; ic < cg; ++ic) {
        const float* xp = xv.data() + (b * c + g * cg + ic) * in_plane;
        const float* wp = wv.data() + (oc * cg + ic) * k_plane;
        for (int64_t kd = 0; kd < ad.kernel; ++kd) {
          const auto [od_lo, od_hi] = valid_outputs(ad, kd);
          for (int64_t kh = 0; kh < ah.kernel; ++kh) {
            const auto [oh_lo, oh_hi] = valid_outputs(ah, kh);
            for (int64_t kw = 0; kw < aw.kernel; ++kw) {
              const auto [ow_lo, ow_hi] = valid_outputs(aw, kw);
              const float wval = wp[(kd * ah.kernel + kh) * aw.kernel + kw];
              for (int64_t od = od_lo; od < od_hi; ++od) {
                const int64_t id = od * ad.stride + kd * ad.dilation - ad.pad_begin;
                for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
                  const int64_t ih = oh * ah.stride + kh * ah.dilation - ah.pad_begin;
                  const int64_t x_row = (id * ah.in + ih) * aw.in + kw * aw.dilation - aw.pad_begin;
                  float* y_row = yp + (od * ah.out + oh) * aw.out;
                  for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
                    y_row[ow] += wval * xp[x_row + ow * aw.stride];
                  }
                }
              }
            }
          }
        }
      }
    }
  }
  apply_post_ops<float>(op, acc, sums);
  store_all<float>(y.data, acc);
  return Status::ok();
}

// MaxPool's optional second output, Indices (int64, Y's dims), gets each maximum's position in
// X flattened (N and C included, padding not), the spatial part row-major (ONNX's storage_order
// 0) or column-major (1).
Status run_pool(const PlanOp& op, Inputs in, Outputs out) {
  const bool is_max = op.kind == OpKind::kMaxPool;
  RETURN_IF_ERROR(check_io(op, in, out, 1, 1, 1, is_max ? 2 : 1));
  const TensorRef& x = in[0];
  const MutableTensorRef& y = out[0];
  auto* indices = out.size() > 1 ? reinterpret_cast<int64_t*>(out[1].data) : nullptr;
  if (indices != nullptr) {
    RETURN_IF_ERROR(check_dtype(op, "Indices", out[1].dtype, DataType::kInt64));
    RETURN_IF_ERROR(check_dims({op, invalid}, "Indices", out[1].dims, y.dims));
  }
  RETURN_IF_ERROR(check_dtype(op, "Y", y.dtype, x.dtype));
  const size_t rank = x.dims.size();
  if (rank < 3 || rank > 5) return invalid(op, "needs 1 to 3 spatial dimensions");
  RETURN_IF_ERROR(check_pool_output({op, invalid}, x.dims, y.dims));
  ASSIGN_OR_RETURN(const Axes axes, spatial_axes(op, x.dims, y.dims, op.kernel, true));
  const int64_t planes = x.dims[0] * x.dims[1];
  const int64_t in_plane = axes[0].in * axes[1].in * axes[2].in;
  const int64_t out_plane = axes[0].out * axes[1].out * axes[2].out;

  // Window positions along one axis for one output index: the in-bounds ones, and how many lie
  // inside the padded input (what count_include_pad divides by).
  struct Taps {
    std::vector<int64_t> positions;
    int64_t padded_count = 0;
  };
  std::array<std::vector<Taps>, 3> taps;
  for (size_t a = 0; a < 3; ++a) {
    const Axis& axis = axes[a];
    taps[a].resize(size_t(axis.out));
    for (int64_t o = 0; o < axis.out; ++o) {
      Taps& t = taps[a][size_t(o)];
      for (int64_t k = 0; k < axis.kernel; ++k) {
        const int64_t pos = o * axis.stride + k * axis.dilation - axis.pad_begin;
        if (pos >= 0 && pos < axis.in) t.positions.push_back(pos);
        if (pos >= -axis.pad_begin && pos < axis.in + axis.pad_end) ++t.padded_count;
      }
    }
  }

  auto run = [&](auto type) -> Status {
    using T = typename decltype(type)::type;
    using F = Compute<T>;
    if constexpr (std::is_same_v<T, Bool>) {
      return unsupported_dtype(op, x.dtype);
    } else {
      if (is_max && !(kIsFloat<T> || std::is_same_v<T, int8_t> || std::is_same_v<T, uint8_t>)) {
        return unsupported_dtype(op, x.dtype);
      }
      if (!is_max && !kIsFloat<T>) return unsupported_dtype(op, x.dtype);
      for (int64_t p = 0; p < planes; ++p) {
        const std::byte* xp = x.data + p * in_plane * int64_t(sizeof(T));
        int64_t o = p * out_plane;
        for (const Taps& td : taps[0]) {
          for (const Taps& th : taps[1]) {
            for (const Taps& tw : taps[2]) {
              F best = std::numeric_limits<F>::has_infinity ? -std::numeric_limits<F>::infinity()
                                                            : std::numeric_limits<F>::lowest();
              double sum = 0;
              int64_t best_at = -1;
              for (int64_t d : td.positions) {
                for (int64_t h : th.positions) {
                  const int64_t row = (d * axes[1].in + h) * axes[2].in;
                  for (int64_t w : tw.positions) {
                    const F v = load_value<T>(xp, row + w);
                    if (is_max) {
                      // NaN propagates, like numpy's maximum.
                      if (best_at < 0 || v > best || std::isnan(double(v))) {
                        best = v;
                        best_at = p * in_plane + (op.column_major_indices
                                                      ? (w * axes[1].in + h) * axes[0].in + d
                                                      : row + w);
                      }
                    } else {
                      sum += double(v);
                    }
                  }
                }
              }
              if (is_max) {
                if (indices != nullptr) indices[o] = best_at;
                store_value<T>(y.data, o++, best);
                continue;
              }
              const int64_t count =
                  op.count_include_pad
                      ? td.padded_count * th.padded_count * tw.padded_count
                      : int64_t(td.positions.size() * th.positions.size() * tw.positions.size());
              store_value<T>(y.data, o++, count > 0 ? F(sum / double(count)) : F(0));
            }
          }
        }
      }
      return Status::ok();
    }
  };
  return visit_dtype(op, x.dtype, run);
}

Status run_global_average_pool(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 1, 1, 1, 1));
  const TensorRef& x = in[0];
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dtype(op, "Y", y.dtype, x.dtype));
  RETURN_IF_ERROR(check_global_pool({op, invalid}, x.dims, y.dims));
  const int64_t planes = x.dims[0] * x.dims[1];
  const int64_t plane = element_count(x.dims.subspan(2));
  return visit_float(op, x.dtype, [&](auto type) -> Status {
    using T = typename decltype(type)::type;
    using F = Compute<T>;
    for (int64_t p = 0; p < planes; ++p) {
      double sum = 0;
      for (int64_t i = 0; i < plane; ++i) sum += double(load_value<T>(x.data, p * plane + i));
      const double mean =
          plane > 0 ? sum / double(plane) : std::numeric_limits<double>::quiet_NaN();
      store_value<T>(y.data, p, F(mean));
    }
    return Status::ok();
  });
}

// ---- normalisation -------------------------------------------------------------------------

Status run_batch_norm(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 5, 5, 1, op.training ? 3 : 1));
  const TensorRef& x = in[0];
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dtype(op, "Y", y.dtype, x.dtype));
  if (x.dims.size() < 2) return invalid(op, "needs a rank >= 2 input");
  RETURN_IF_ERROR(check_dims({op, invalid}, "Y", y.dims, x.dims));
  const int64_t c = x.dims[1];
  // scale, bias, mean, var as doubles (each may be fp16, fp32 or fp64).
  std::array<std::vector<double>, 4> params;
  static constexpr const char* kNames[] = {"scale", "bias", "mean", "var"};
  for (size_t i = 0; i < 4; ++i) {
    const TensorRef& t = in[i + 1];
    RETURN_IF_ERROR(check_dims({op, invalid}, kNames[i], t.dims, Dims{c}));
    RETURN_IF_ERROR(visit_float(op, t.dtype, [&](auto type) -> Status {
      using T = typename decltype(type)::type;
      for (int64_t j = 0; j < c; ++j) params[i].push_back(double(load_value<T>(t.data, j)));
      return Status::ok();
    }));
  }
  const int64_t outer = x.dims[0];
  const int64_t inner = element_count(x.dims.subspan(2));
  return visit_float(op, x.dtype, [&](auto type) -> Status {
    using T = typename decltype(type)::type;
    using F = Compute<T>;
    if (op.training) {
      // The batch's statistics normalise; the running ones are updated (outputs 1 and 2).
      for (size_t i = 1; i < 3; ++i) {
        RETURN_IF_ERROR(check_dims({op, invalid}, i == 1 ? "running_mean" : "running_var",
                                   out[i].dims, Dims{c}));
        RETURN_IF_ERROR(check_dtype(op, "running statistics", out[i].dtype, in[i + 2].dtype));
      }
      const double count = double(outer * inner);
      for (int64_t ch = 0; ch < c; ++ch) {
        double sum = 0, squares = 0;
        for (int64_t b = 0; b < outer; ++b) {
          for (int64_t i = 0; i < inner; ++i) {
            const double v = double(load_value<T>(x.data, (b * c + ch) * inner + i));
            sum += v;
            squares += v * v;
          }
        }
        const double mean = count > 0 ? sum / count : 0.0;
        const double var = count > 0 ? std::max(0.0, squares / count - mean * mean) : 0.0;
        const double m = double(op.momentum);
        const double running_mean = params[2][size_t(ch)] * m + mean * (1 - m);
        const double running_var = params[3][size_t(ch)] * m + var * (1 - m);
        RETURN_IF_ERROR(visit_float(op, out[1].dtype, [&](auto stat) -> Status {
          using S = typename decltype(stat)::type;
          store_value<S>(out[1].data, ch, Compute<S>(running_mean));
          store_value<S>(out[2].data, ch, Compute<S>(running_var));
          return Status::ok();
        }));
        params[2][size_t(ch)] = mean;
        params[3][size_t(ch)] = var;
      }
    }
    for (int64_t ch = 0; ch < c; ++ch) {
      const double factor =
          params[0][size_t(ch)] / std::sqrt(params[3][size_t(ch)] + double(op.epsilon));
      const double shift = params[1][size_t(ch)] - params[2][size_t(ch)] * factor;
      for (int64_t b = 0; b < outer; ++b) {
        const int64_t base = (b * c + ch) * inner;
        for (int64_t i = 0; i < inner; ++i) {
          F v = F(double(load_value<T>(x.data, base + i)) * factor + shift);
          for (const PostOp& post : op.post_ops) {  // unary only (checked by the dispatcher)
            v = unary_value<F>(post.unary, F(post.alpha), F(post.beta), v);
          }
          store_value<T>(y.data, base + i, v);
        }
      }
    }
    return Status::ok();
  });
}

Status run_lrn(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 1, 1, 1, 1));
  const TensorRef& x = in[0];
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dtype(op, "Y", y.dtype, x.dtype));
  if (x.dims.size() < 2) return invalid(op, "needs a rank >= 2 input");
  RETURN_IF_ERROR(check_dims({op, invalid}, "Y", y.dims, x.dims));
  if (op.size < 1) return invalid(op, "size must be >= 1, got " + std::to_string(op.size));
  const int64_t n = x.dims[0], c = x.dims[1];
  const int64_t inner = element_count(x.dims.subspan(2));
  const int64_t before = (op.size - 1) / 2;
  const int64_t after = op.size - 1 - before;  // ceil((size - 1) / 2)
  const double scale = double(op.alpha) / double(op.size);
  return visit_float(op, x.dtype, [&](auto type) -> Status {
    using T = typename decltype(type)::type;
    using F = Compute<T>;
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t ch = 0; ch < c; ++ch) {
        const int64_t lo = std::max<int64_t>(0, ch - before);
        const int64_t hi = std::min(c - 1, ch + after);
        for (int64_t i = 0; i < inner; ++i) {
          double square_sum = 0;
          for (int64_t k = lo; k <= hi; ++k) {
            const double v = double(load_value<T>(x.data, (b * c + k) * inner + i));
            square_sum += v * v;
          }
          const int64_t at = (b * c + ch) * inner + i;
          const double v = double(load_value<T>(x.data, at));
          store_value<T>(y.data, at,
                         F(v / std::pow(double(op.bias) + scale * square_sum, double(op.beta))));
        }
      }
    }
    return Status::ok();
  });
}

Status run_softmax(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 1, 1, 1, 1));
  const TensorRef& x = in[0];
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dtype(op, "Y", y.dtype, x.dtype));
  ASSIGN_OR_RETURN(const AxisSplit split, softmax_split({op, invalid}, x.dims, y.dims));
  const int64_t outer = split.outer, len = split.length, inner = split.inner;
  return visit_float(op, x.dtype, [&](auto type) -> Status {
    using T = typename decltype(type)::type;
    using F = Compute<T>;
    std::vector<double> e(static_cast<size_t>(len));
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t i = 0; i < inner; ++i) {
        const int64_t base = o * len * inner + i;
        double max = -std::numeric_limits<double>::infinity();
        for (int64_t k = 0; k < len; ++k) {
          max = std::max(max, double(load_value<T>(x.data, base + k * inner)));
        }
        double sum = 0;
        for (int64_t k = 0; k < len; ++k) {
          e[size_t(k)] = std::exp(double(load_value<T>(x.data, base + k * inner)) - max);
          sum += e[size_t(k)];
        }
        for (int64_t k = 0; k < len; ++k) {
          store_value<T>(y.data, base + k * inner, F(e[size_t(k)] / sum));
        }
      }
    }
    return Status::ok();
  });
}

// ---- element-wise ops ----------------------------------------------------------------------

Status run_unary(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 1, 1, 1, 1));
  const TensorRef& x = in[0];
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dtype(op, "Y", y.dtype, x.dtype));
  RETURN_IF_ERROR(check_dims({op, invalid}, "Y", y.dims, x.dims));
  if (!valid_unary(op.unary)) return invalid(op, "unknown unary function");
  const int64_t count = element_count(x.dims);
  const bool integer = x.dtype != DataType::kFp16 && x.dtype != DataType::kFp32 &&
                       x.dtype != DataType::kFp64 && x.dtype != DataType::kBool;
  if (integer && (op.unary == UnaryAlg::kClip || op.unary == UnaryAlg::kRelu)) {
    // Clip and Relu are defined on integers too (Clip's bounds arrive as floats; the types the
    // engine serves fit them exactly up to 2^24).
    return visit_dtype(op, x.dtype, [&](auto type) -> Status {
      using T = typename decltype(type)::type;
      if constexpr (std::is_integral_v<T>) {
        const double low = op.unary == UnaryAlg::kRelu ? 0.0 : static_cast<double>(op.alpha);
        const double high = op.unary == UnaryAlg::kRelu ? INFINITY : static_cast<double>(op.beta);
        const T* xs = reinterpret_cast<const T*>(x.data);
        T* ys = reinterpret_cast<T*>(y.data);
        for (int64_t i = 0; i < count; ++i) {
          const auto v = static_cast<double>(xs[i]);
          ys[i] = v < low ? static_cast<T>(low) : v > high ? static_cast<T>(high) : xs[i];
        }
        return Status::ok();
      } else {
        return unsupported_dtype(op, x.dtype);
      }
    });
  }
  return visit_float(op, x.dtype, [&](auto type) -> Status {
    using T = typename decltype(type)::type;
    using F = Compute<T>;
    const F alpha = F(op.alpha);
    const F beta = F(op.beta);
    for (int64_t i = 0; i < count; ++i) {
      store_value<T>(y.data, i, unary_value<F>(op.unary, alpha, beta, load_value<T>(x.data, i)));
    }
    return Status::ok();
  });
}

Status run_binary(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 2, 2, 1, 1));
  const TensorRef& a = in[0];
  const TensorRef& b = in[1];
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dtype(op, "B", b.dtype, a.dtype));
  RETURN_IF_ERROR(check_dtype(op, "C", y.dtype, a.dtype));
  switch (op.binary) {
    case BinaryAlg::kAdd:
    case BinaryAlg::kSub:
    case BinaryAlg::kMul:
    case BinaryAlg::kDiv:
      break;
    default:
      return invalid(op, "unknown binary function");
  }
  const std::optional<Dims> broadcast = broadcast_dims(a.dims, b.dims);
  if (!broadcast) {
    return invalid(op, dims_string(a.dims) + " and " + dims_string(b.dims) + " do not broadcast");
  }
  const Dims& expected = *broadcast;
  RETURN_IF_ERROR(check_dims({op, invalid}, "C", y.dims, expected));
  // Both broadcast to `expected`, their broadcast.
  const Dims a_strides = *broadcast_strides(a.dims, expected);
  const Dims b_strides = *broadcast_strides(b.dims, expected);
  const Dims y_strides = dense_strides(expected);
  return visit_dtype(op, a.dtype, [&](auto type) -> Status {
    using T = typename decltype(type)::type;
    if constexpr (std::is_same_v<T, Bool>) {
      return unsupported_dtype(op, a.dtype);
    } else {
      for_each_run<3>(expected, {y_strides, a_strides, b_strides},
                      [&](const Offsets<3>& at, int64_t count, const Offsets<3>& step) {
                        for (int64_t i = 0; i < count; ++i) {
                          store_value<T>(y.data, at[0] + i * step[0],
                                         binary_value<Compute<T>>(
                                             op.binary, load_value<T>(a.data, at[1] + i * step[1]),
                                             load_value<T>(b.data, at[2] + i * step[2])));
                        }
                      });
      return Status::ok();
    }
  });
}

Status run_cast(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 1, 1, 1, 1));
  const TensorRef& x = in[0];
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dims({op, invalid}, "output", y.dims, x.dims));
  const int64_t count = element_count(x.dims);
  return visit_dtype(op, x.dtype, [&](auto from_type) -> Status {
    using From = typename decltype(from_type)::type;
    return visit_dtype(op, y.dtype, [&](auto to_type) -> Status {
      using To = typename decltype(to_type)::type;
      for (int64_t i = 0; i < count; ++i) {
        store<To>(y.data, i, convert<To>(load<From>(x.data, i)));
      }
      return Status::ok();
    });
  });
}

Status run_fill(const PlanOp& op, Inputs in, Outputs out) {
  // Dropout's mask at inference: the data input, if the engine passes it, only gives the shape.
  RETURN_IF_ERROR(check_io(op, in, out, 0, 1, 1, 1));
  const MutableTensorRef& y = out[0];
  const int64_t count = element_count(y.dims);
  return visit_dtype(op, y.dtype, [&](auto type) -> Status {
    using T = typename decltype(type)::type;
    const T one = convert<T>(uint8_t(1));
    for (int64_t i = 0; i < count; ++i) store<T>(y.data, i, one);
    return Status::ok();
  });
}

// ---- Gemm and MatMul -----------------------------------------------------------------------

// Integers accumulate in uint64_t so that products and sums wrap instead of overflowing.
template <typename F>
using Accumulator = std::conditional_t<std::is_integral_v<F>, uint64_t, F>;

Status run_gemm(const PlanOp& op, Inputs in, Outputs out, Inputs sums) {
  RETURN_IF_ERROR(check_io(op, in, out, 2, 3, 1, 1));
  const TensorRef& a = in[0];
  const TensorRef& b = in[1];
  const TensorRef* c = in.size() > 2 && present(in[2]) ? &in[2] : nullptr;
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dtype(op, "B", b.dtype, a.dtype));
  if (c) RETURN_IF_ERROR(check_dtype(op, "C", c->dtype, a.dtype));
  RETURN_IF_ERROR(check_dtype(op, "Y", y.dtype, a.dtype));
  if (a.dims.size() != 2 || b.dims.size() != 2) return invalid(op, "needs rank-2 A and B");
  const int64_t m = op.trans_a ? a.dims[1] : a.dims[0];
  const int64_t k = op.trans_a ? a.dims[0] : a.dims[1];
  const int64_t kb = op.trans_b ? b.dims[1] : b.dims[0];
  const int64_t n = op.trans_b ? b.dims[0] : b.dims[1];
  if (k != kb) {
    return invalid(
        op, "A " + dims_string(a.dims) + " and B " + dims_string(b.dims) + " do not multiply");
  }
  const Dims y_dims{m, n};
  RETURN_IF_ERROR(check_dims({op, invalid}, "Y", y.dims, y_dims));
  const std::optional<Dims> c_strides = c ? broadcast_strides(c->dims, y_dims) : std::nullopt;
  if (c && !c_strides) {
    return invalid(op,
                   "C " + dims_string(c->dims) + " does not broadcast to " + dims_string(y_dims));
  }
  RETURN_IF_ERROR(check_post_ops(op, y, sums));
  return visit_float(op, a.dtype, [&](auto type) -> Status {
    using T = typename decltype(type)::type;
    using F = Compute<T>;
    const std::vector<F> av = load_all<T>(a.data, m * k);
    const std::vector<F> bv = load_all<T>(b.data, k * n);
    // B as [K, N] so that the innermost loop runs along contiguous rows.
    std::vector<F> bt;
    if (op.trans_b) {
      bt.resize(size_t(k * n));
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t l = 0; l < k; ++l) bt[size_t(l * n + j)] = bv[size_t(j * k + l)];
      }
    }
    const std::vector<F>& bk = op.trans_b ? bt : bv;
    std::vector<F> acc(size_t(m * n), F(0));
    for (int64_t i = 0; i < m; ++i) {
      F* row = acc.data() + i * n;
      for (int64_t l = 0; l < k; ++l) {
        const F av_il = op.trans_a ? av[size_t(l * m + i)] : av[size_t(i * k + l)];
        const F* b_row = bk.data() + l * n;
        for (int64_t j = 0; j < n; ++j) row[j] += av_il * b_row[j];
      }
    }
    const F alpha = F(op.alpha);
    const F beta = F(op.beta);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        F v = alpha * acc[size_t(i * n + j)];
        if (c) v += beta * load_value<T>(c->data, i * (*c_strides)[0] + j * (*c_strides)[1]);
        acc[size_t(i * n + j)] = v;
      }
    }
    apply_post_ops<T>(op, acc, sums);
    store_all<T>(y.data, acc);
    return Status::ok();
  });
}

Status run_matmul(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 2, 2, 1, 1));
  const TensorRef& a = in[0];
  const TensorRef& b = in[1];
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dtype(op, "B", b.dtype, a.dtype));
  RETURN_IF_ERROR(check_dtype(op, "Y", y.dtype, a.dtype));
  if (a.dims.empty() || b.dims.empty()) return invalid(op, "needs rank >= 1 operands");
  // Rank-1 operands are promoted to matrices ([K] -> [1, K] for A, [K, 1] for B).
  Dims ad(a.dims.begin(), a.dims.end());
  Dims bd(b.dims.begin(), b.dims.end());
  if (ad.size() == 1) ad.insert(ad.begin(), 1);
  if (bd.size() == 1) bd.push_back(1);
  const int64_t m = ad[ad.size() - 2], k = ad.back(), n = bd.back();
  if (bd[bd.size() - 2] != k) {
    return invalid(
        op, "A " + dims_string(a.dims) + " and B " + dims_string(b.dims) + " do not multiply");
  }
  const DimsView a_batch = DimsView(ad).first(ad.size() - 2);
  const DimsView b_batch = DimsView(bd).first(bd.size() - 2);
  const std::optional<Dims> broadcast = broadcast_dims(a_batch, b_batch);
  if (!broadcast) {
    return invalid(op, "batch dimensions of " + dims_string(a.dims) + " and " +
                           dims_string(b.dims) + " do not broadcast");
  }
  const Dims& batch = *broadcast;
  Dims expected = batch;
  if (a.dims.size() > 1) expected.push_back(m);
  if (b.dims.size() > 1) expected.push_back(n);
  RETURN_IF_ERROR(check_dims({op, invalid}, "Y", y.dims, expected));
  // Both broadcast to `batch`, their broadcast.
  Dims a_strides = *broadcast_strides(a_batch, batch);
  Dims b_strides = *broadcast_strides(b_batch, batch);
  Dims y_strides = dense_strides(batch);
  for (int64_t& s : a_strides) s *= m * k;
  for (int64_t& s : b_strides) s *= k * n;
  for (int64_t& s : y_strides) s *= m * n;
  return visit_dtype(op, a.dtype, [&](auto type) -> Status {
    using T = typename decltype(type)::type;
    if constexpr (std::is_same_v<T, Bool>) {
      return unsupported_dtype(op, a.dtype);
    } else {
      using F = Compute<T>;
      using Acc = Accumulator<F>;
      const std::vector<F> av = load_all<T>(a.data, element_count(a.dims));
      const std::vector<F> bv = load_all<T>(b.data, element_count(b.dims));
      std::vector<Acc> row(static_cast<size_t>(n));
      auto multiply = [&](int64_t a_at, int64_t b_at, int64_t y_at) {
        for (int64_t i = 0; i < m; ++i) {
          std::fill(row.begin(), row.end(), Acc(0));
          for (int64_t l = 0; l < k; ++l) {
            const auto a_il = Acc(av[size_t(a_at + i * k + l)]);
            const F* b_row = bv.data() + b_at + l * n;
            for (int64_t j = 0; j < n; ++j) row[size_t(j)] += a_il * Acc(b_row[j]);
          }
          for (int64_t j = 0; j < n; ++j) {
            store_value<T>(y.data, y_at + i * n + j, static_cast<F>(row[size_t(j)]));
          }
        }
      };
      for_each_run<3>(batch, {a_strides, b_strides, y_strides},
                      [&](const Offsets<3>& at, int64_t count, const Offsets<3>& step) {
                        for (int64_t i = 0; i < count; ++i) {
                          multiply(at[0] + i * step[0], at[1] + i * step[1], at[2] + i * step[2]);
                        }
                      });
      return Status::ok();
    }
  });
}

// ---- data movement -------------------------------------------------------------------------

Status run_copy(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 1, 1, 1, 1));
  const TensorRef& x = in[0];
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dtype(op, "output", y.dtype, x.dtype));
  if (element_count(x.dims) != element_count(y.dims)) {
    return invalid(op, "input " + dims_string(x.dims) + " and output " + dims_string(y.dims) +
                           " differ in size");
  }
  const size_t bytes = size_t(element_count(x.dims)) * shm::data_type_size(x.dtype);
  if (bytes > 0 && y.data != x.data) std::memmove(y.data, x.data, bytes);  // may be in place
  return Status::ok();
}

Status run_transpose(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 1, 1, 1, 1));
  const TensorRef& x = in[0];
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dtype(op, "output", y.dtype, x.dtype));
  ASSIGN_OR_RETURN(const SourceView source, transpose_view({op, invalid}, x.dims, y.dims));
  copy_view(y.data, dense_strides(y.dims), x.data, source.strides, y.dims,
            shm::data_type_size(x.dtype));
  return Status::ok();
}

Status run_concat(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 1, std::numeric_limits<size_t>::max(), 1, 1));
  const MutableTensorRef& y = out[0];
  if (y.dims.empty()) return invalid(op, "needs rank >= 1 tensors");
  ASSIGN_OR_RETURN(const int64_t axis, normalize_axis({op, invalid}, op.axis, y.dims.size()));
  std::vector<DimsView> parts;
  for (size_t i = 0; i < in.size(); ++i) {
    RETURN_IF_ERROR(check_dtype(op, "input " + std::to_string(i), in[i].dtype, y.dtype));
    parts.push_back(in[i].dims);
  }
  ASSIGN_OR_RETURN(const Dims offsets, axis_blocks({op, invalid}, y.dims, parts, axis));
  const size_t esize = shm::data_type_size(y.dtype);
  const Dims y_strides = dense_strides(y.dims);
  for (size_t i = 0; i < in.size(); ++i) {
    copy_view(y.data + offsets[i] * y_strides[size_t(axis)] * int64_t(esize), y_strides, in[i].data,
              dense_strides(in[i].dims), in[i].dims, esize);
  }
  return Status::ok();
}

Status run_split(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 1, 1, 1, std::numeric_limits<size_t>::max()));
  const TensorRef& x = in[0];
  if (x.dims.empty()) return invalid(op, "needs a rank >= 1 input");
  ASSIGN_OR_RETURN(const int64_t axis, normalize_axis({op, invalid}, op.axis, x.dims.size()));
  std::vector<DimsView> parts;
  for (size_t i = 0; i < out.size(); ++i) {
    RETURN_IF_ERROR(check_dtype(op, "output " + std::to_string(i), out[i].dtype, x.dtype));
    parts.push_back(out[i].dims);
  }
  RETURN_IF_ERROR(check_split_sizes({op, invalid}, x.dims, parts, axis));
  ASSIGN_OR_RETURN(const Dims offsets, axis_blocks({op, invalid}, x.dims, parts, axis));
  const size_t esize = shm::data_type_size(x.dtype);
  const Dims x_strides = dense_strides(x.dims);
  for (size_t i = 0; i < out.size(); ++i) {
    copy_view(out[i].data, dense_strides(out[i].dims),
              x.data + offsets[i] * x_strides[size_t(axis)] * int64_t(esize), x_strides,
              out[i].dims, esize);
  }
  return Status::ok();
}

Status run_slice(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 1, 1, 1, 1));
  const TensorRef& x = in[0];
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dtype(op, "output", y.dtype, x.dtype));
  ASSIGN_OR_RETURN(const SourceView source, slice_view({op, invalid}, x.dims, y.dims));
  if (element_count(y.dims) == 0) return Status::ok();
  const size_t esize = shm::data_type_size(x.dtype);
  copy_view(y.data, dense_strides(y.dims), x.data + source.origin * int64_t(esize), source.strides,
            y.dims, esize);
  return Status::ok();
}

Status run_pad(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 1, 1, 1, 1));
  const TensorRef& x = in[0];
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dtype(op, "output", y.dtype, x.dtype));
  ASSIGN_OR_RETURN(const PadGeometry pad, pad_geometry({op, invalid}, x.dims, y.dims));
  const size_t rank = x.dims.size();
  const bool constant = op.pad_mode == PlanOp::PadMode::kConstant;
  const Dims& expected = pad.out_dims;
  const Dims& keep_begin = pad.keep_begin;
  const Dims& kept = pad.kept;
  const Dims& at = pad.at;
  const size_t esize = shm::data_type_size(x.dtype);
  const auto es = int64_t(esize);
  const Dims x_strides = dense_strides(x.dims);
  const Dims y_strides = dense_strides(expected);
  const int64_t y_count = element_count(expected);
  if (y_count == 0) return Status::ok();

  if (constant && element_count(kept) < y_count) {
    RETURN_IF_ERROR(visit_dtype(op, y.dtype, [&](auto type) -> Status {
      using T = typename decltype(type)::type;
      const T value = convert<T>(op.pad_value);
      for (int64_t i = 0; i < y_count; ++i) store<T>(y.data, i, value);
      return Status::ok();
    }));
  }
  int64_t x_origin = 0, y_origin = 0;
  for (size_t i = 0; i < rank; ++i) {
    x_origin += keep_begin[i] * x_strides[i];
    y_origin += at[i] * y_strides[i];
  }
  copy_view(y.data + y_origin * es, y_strides, x.data + x_origin * es, x_strides, kept, esize);
  if (constant) return Status::ok();

  // Reflect / edge, innermost dimension first: when dimension d is padded, every dimension
  // inside it is already complete and the dimensions outside it are still the kept part, so
  // each padded position along d copies one whole inner block from a kept position.
  const bool reflect = op.pad_mode == PlanOp::PadMode::kReflect;
  auto source = [&](int64_t p, int64_t len) -> int64_t {  // p relative to the kept part
    if (!reflect) return std::clamp<int64_t>(p, 0, len - 1);
    if (len == 1) return 0;
    const int64_t period = 2 * (len - 1);
    const int64_t r = ((p % period) + period) % period;
    return r < len ? r : period - r;
  };
  for (size_t d = rank; d-- > 0;) {
    if (expected[d] == kept[d]) continue;
    const int64_t block = y_strides[d] * es;
    int64_t outer_origin = 0;
    for (size_t j = 0; j < d; ++j) outer_origin += at[j] * y_strides[j];
    for_each_run<1>(DimsView(kept).first(d), {DimsView(y_strides).first(d)},
                    [&](const Offsets<1>& o, int64_t count, const Offsets<1>& step) {
                      for (int64_t r = 0; r < count; ++r) {
                        std::byte* base = y.data + (outer_origin + o[0] + r * step[0]) * es;
                        for (int64_t q = 0; q < expected[d]; ++q) {
                          if (q >= at[d] && q < at[d] + kept[d]) continue;
                          const int64_t from = at[d] + source(q - at[d], kept[d]);
                          std::memcpy(base + q * block, base + from * block, size_t(block));
                        }
                      }
                    });
  }
  return Status::ok();
}

Status run_gather(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 2, 2, 1, 1));
  const TensorRef& x = in[0];
  const TensorRef& indices = in[1];
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dtype(op, "output", y.dtype, x.dtype));
  ASSIGN_OR_RETURN(const int64_t axis,
                   gather_axis({op, invalid}, x.dims, indices.dtype, indices.dims, y.dims));
  const int64_t len = x.dims[size_t(axis)];
  const int64_t n_indices = element_count(indices.dims);
  std::vector<int64_t> index(static_cast<size_t>(n_indices));
  for (int64_t i = 0; i < n_indices; ++i) {
    const int64_t v = indices.dtype == DataType::kInt32 ? load<int32_t>(indices.data, i)
                                                        : load<int64_t>(indices.data, i);
    if (v < -len || v >= len) {
      return invalid(op, "index " + std::to_string(v) + " is out of range for axis " +
                             std::to_string(axis) + " of size " + std::to_string(len));
    }
    index[size_t(i)] = v < 0 ? v + len : v;
  }
  const int64_t outer = element_count(x.dims.first(size_t(axis)));
  const auto block =
      element_count(x.dims.subspan(size_t(axis) + 1)) * int64_t(shm::data_type_size(x.dtype));
  if (block == 0) return Status::ok();
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < n_indices; ++i) {
      std::memcpy(y.data + (o * n_indices + i) * block,
                  x.data + (o * len + index[size_t(i)]) * block, size_t(block));
    }
  }
  return Status::ok();
}

Status run_reduce_mean(const PlanOp& op, Inputs in, Outputs out) {
  RETURN_IF_ERROR(check_io(op, in, out, 1, 1, 1, 1));
  const TensorRef& x = in[0];
  const MutableTensorRef& y = out[0];
  RETURN_IF_ERROR(check_dtype(op, "output", y.dtype, x.dtype));
  ASSIGN_OR_RETURN(const Reduction r, reduction({op, invalid}, x.dims));
  RETURN_IF_ERROR(check_dims({op, invalid}, "output", y.dims, r.out_dims));
  const std::vector<bool>& reduced = r.reduced;
  const size_t rank = x.dims.size();
  Dims kept_dims(rank);
  int64_t count = 1;
  for (size_t i = 0; i < rank; ++i) {
    kept_dims[i] = reduced[i] ? 1 : x.dims[i];
    if (reduced[i]) count *= x.dims[i];
  }
  Dims y_strides = dense_strides(kept_dims);
  for (size_t i = 0; i < rank; ++i) {
    if (reduced[i]) y_strides[i] = 0;
  }
  const Dims x_strides = dense_strides(x.dims);
  const int64_t y_count = element_count(kept_dims);
  return visit_dtype(op, x.dtype, [&](auto type) -> Status {
    using T = typename decltype(type)::type;
    if constexpr (std::is_same_v<T, Bool>) {
      return unsupported_dtype(op, x.dtype);
    } else {
      using F = Compute<T>;
      // Floats sum in double; integers in uint64_t, which wraps instead of overflowing.
      using Sum = std::conditional_t<kIsFloat<T>, double, uint64_t>;
      std::vector<Sum> sums(size_t(y_count), Sum(0));
      for_each_run<2>(x.dims, {x_strides, y_strides},
                      [&](const Offsets<2>& at, int64_t n, const Offsets<2>& step) {
                        for (int64_t i = 0; i < n; ++i) {
                          sums[size_t(at[1] + i * step[1])] +=
                              Sum(load_value<T>(x.data, at[0] + i * step[0]));
                        }
                      });
      for (int64_t i = 0; i < y_count; ++i) {
        const Sum s = sums[size_t(i)];
        F mean;
        if constexpr (kIsFloat<T>) {
          mean = F(count > 0 ? s / double(count) : std::numeric_limits<double>::quiet_NaN());
        } else if constexpr (std::is_signed_v<T>) {
          mean = count > 0 ? static_cast<F>(static_cast<int64_t>(s) / count) : F(0);
        } else {
          mean = count > 0 ? static_cast<F>(s / uint64_t(count)) : F(0);
        }
        store_value<T>(y.data, i, mean);
      }
      return Status::ok();
    }
  });
}

}  // namespace

Status run_reference_op(const PlanOp& op, std::span<const TensorRef> inputs,
                        std::span<const MutableTensorRef> outputs,
                        std::span<const TensorRef> sum_operands) {
  const bool has_post_ops = op.kind == OpKind::kConv || op.kind == OpKind::kGemm;
  const bool unary_post_ops =
      op.kind == OpKind::kBatchNorm && sum_operands.empty() &&
      std::all_of(op.post_ops.begin(), op.post_ops.end(),
                  [](const PostOp& p) { return p.kind == PostOp::Kind::kUnary; });
  if (!has_post_ops && !unary_post_ops && (!op.post_ops.empty() || !sum_operands.empty())) {
    return invalid(op, "has post-ops; only Conv and Gemm (and BatchNorm: unary ones) take them");
  }
  switch (op.kind) {
    case OpKind::kConv:
      return run_conv(op, inputs, outputs, sum_operands);
    case OpKind::kBatchNorm:
      return run_batch_norm(op, inputs, outputs);
    case OpKind::kUnary:
      return run_unary(op, inputs, outputs);
    case OpKind::kBinary:
      return run_binary(op, inputs, outputs);
    case OpKind::kMaxPool:
    case OpKind::kAveragePool:
      return run_pool(op, inputs, outputs);
    case OpKind::kGlobalAveragePool:
      return run_global_average_pool(op, inputs, outputs);
    case OpKind::kGemm:
      return run_gemm(op, inputs, outputs, sum_operands);
    case OpKind::kMatMul:
      return run_matmul(op, inputs, outputs);
    case OpKind::kCopy:
      return run_copy(op, inputs, outputs);
    case OpKind::kTranspose:
      return run_transpose(op, inputs, outputs);
    case OpKind::kConcat:
      return run_concat(op, inputs, outputs);
    case OpKind::kSplit:
      return run_split(op, inputs, outputs);
    case OpKind::kSlice:
      return run_slice(op, inputs, outputs);
    case OpKind::kReduceMean:
      return run_reduce_mean(op, inputs, outputs);
    case OpKind::kSoftmax:
      return run_softmax(op, inputs, outputs);
    case OpKind::kLrn:
      return run_lrn(op, inputs, outputs);
    case OpKind::kPad:
      return run_pad(op, inputs, outputs);
    case OpKind::kGather:
      return run_gather(op, inputs, outputs);
    case OpKind::kCast:
      return run_cast(op, inputs, outputs);
    case OpKind::kFill:
      return run_fill(op, inputs, outputs);
  }
  return invalid(op, "unknown op kind");
}

}  // namespace sliceserve::backends
