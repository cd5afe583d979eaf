#include "device_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "sliceserve/backends/op_geometry.h"
#include "sliceserve/shm/element_conversions.h"
#include "sliceserve/shm/tensor_spec.h"

namespace sliceserve::backends {
namespace {

namespace k = kernels;

Status invalid(const PlanOp& op, const std::string& what) {
  return Status(ErrorCode::kInvalidArgument, op.label + ": device kernel: " + what);
}

template <typename T>
T* device_pointer(DeviceAddress address) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(address));
}

// Blocks for a grid-stride loop over `count` items, a thread each.
unsigned blocks_for(int64_t count) {
  if (count <= 0) return 0;
  const int64_t blocks = (count + k::kThreadsPerBlock - 1) / k::kThreadsPerBlock;
  return unsigned(std::min<int64_t>(blocks, kDeviceMaxBlocks));
}

// Blocks for a block per row.
unsigned blocks_for_rows(int64_t rows) {
  return rows <= 0 ? 0 : unsigned(std::min<int64_t>(rows, kDeviceMaxBlocks));
}

Status check_fp32(const PlanOp& op, const char* what, const DeviceTensor& t) {
  if (t.dtype == DataType::kFp32) return Status::ok();
  return invalid(op, std::string(what) + " is " + std::string(shm::data_type_name(t.dtype)) +
                         ", the kernel computes FP32 only");
}

// Data movement: y's dtype is x's, of a size the kernels copy.
Result<int32_t> movable_element_size(const PlanOp& op, const DeviceTensor& x,
                                     const DeviceTensor& y) {
  if (y.dtype != x.dtype) {
    return invalid(op, "output is " + std::string(shm::data_type_name(y.dtype)) + ", input " +
                           std::string(shm::data_type_name(x.dtype)));
  }
  const size_t size = shm::data_type_size(x.dtype);
  if (size != 1 && size != 2 && size != 4 && size != 8) {
    return invalid(op, "unsupported dtype " + std::string(shm::data_type_name(x.dtype)));
  }
  return int32_t(size);
}

Result<k::KernelUnary> kernel_unary(const PlanOp& op, UnaryAlg alg) {
  switch (alg) {
    case UnaryAlg::kRelu:
      return k::KernelUnary::kRelu;
    case UnaryAlg::kLeakyRelu:
      return k::KernelUnary::kLeakyRelu;
    case UnaryAlg::kClip:
      return k::KernelUnary::kClip;
    case UnaryAlg::kSigmoid:
      return k::KernelUnary::kSigmoid;
    case UnaryAlg::kHardSigmoid:
      return k::KernelUnary::kHardSigmoid;
    case UnaryAlg::kHardSwish:
      return k::KernelUnary::kHardSwish;
    case UnaryAlg::kSwish:
      return k::KernelUnary::kSwish;
  }
  return invalid(op, "unknown unary function");
}

Result<k::KernelDtype> kernel_dtype(const PlanOp& op, DataType dtype) {
  switch (dtype) {
    case DataType::kFp32:
      return k::KernelDtype::kFp32;
    case DataType::kFp16:
      return k::KernelDtype::kFp16;
    case DataType::kInt32:
      return k::KernelDtype::kInt32;
    case DataType::kInt64:
      return k::KernelDtype::kInt64;
    case DataType::kInt8:
      return k::KernelDtype::kInt8;
    case DataType::kUint8:
      return k::KernelDtype::kUint8;
    case DataType::kBool:
      return k::KernelDtype::kBool;
    default:
      return invalid(op, "Cast does not convert " + std::string(shm::data_type_name(dtype)));
  }
}

// The little-endian bytes of `value` converted to `dtype` as the reference converts Pad's value
// (integers saturate, fp16 rounds to nearest even, bool is != 0).
uint64_t value_bits(DataType dtype, double value) {
  auto bits_of = [](auto v) {
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof v);
    return bits;
  };
  switch (dtype) {
    case DataType::kBool:
      return value != 0.0 ? 1 : 0;  // NaN is true
    case DataType::kUint8:
      return bits_of(shm::saturate<uint8_t>(value));
    case DataType::kUint16:
      return bits_of(shm::saturate<uint16_t>(value));
    case DataType::kUint32:
      return bits_of(shm::saturate<uint32_t>(value));
    case DataType::kUint64:
      return bits_of(shm::saturate<uint64_t>(value));
    case DataType::kInt8:
      return bits_of(shm::saturate<int8_t>(value));
    case DataType::kInt16:
      return bits_of(shm::saturate<int16_t>(value));
    case DataType::kInt32:
      return bits_of(shm::saturate<int32_t>(value));
    case DataType::kInt64:
      return bits_of(shm::saturate<int64_t>(value));
    case DataType::kFp16:
      return shm::double_to_half(value);
    case DataType::kFp32:
      return bits_of(shm::to_float(value));
    case DataType::kFp64:
      return bits_of(value);
    case DataType::kInvalid:
      break;
  }
  return 0;
}

// An index space with N strided views of it as the kernels take it: merge_contiguous's (so most
// tensors are rank 1 to 3 here), outermost first.
template <size_t N>
struct MergedSpace {
  int32_t rank = 0;
  int64_t dims[k::kMaxRank] = {};
  int64_t strides[N][k::kMaxRank] = {};
};

template <size_t N>
Result<MergedSpace<N>> merge_dims(const PlanOp& op, DimsView dims,
                                  const std::array<DimsView, N>& strides) {
  const MergedDims<N> inner_first = merge_contiguous<N>(dims, strides);
  const Dims& merged = inner_first.dims;
  const std::vector<std::array<int64_t, N>>& steps = inner_first.strides;
  if (merged.size() > size_t(k::kMaxRank)) {
    return invalid(op, "the index space " + dims_string(dims) + " has more than " +
                           std::to_string(k::kMaxRank) + " non-contiguous dimensions");
  }
  MergedSpace<N> space;
  space.rank = int32_t(merged.size());
  for (size_t d = 0; d < merged.size(); ++d) {
    const size_t from = merged.size() - 1 - d;
    space.dims[d] = merged[from];
    for (size_t v = 0; v < N; ++v) space.strides[v][d] = steps[from][v];
  }
  return space;
}

template <size_t N>
void copy_space(const MergedSpace<N>& space, size_t view, int64_t* dims, int64_t* strides) {
  std::copy(std::begin(space.dims), std::end(space.dims), dims);
  std::copy(std::begin(space.strides[view]), std::end(space.strides[view]), strides);
}

// A strided copy of the index space `dims`, dst and src given by their element-0 addresses and
// strides.
Result<KernelLaunch<k::StridedCopyParams>> strided_copy(const PlanOp& op, DimsView dims,
                                                        DeviceAddress dst, DimsView dst_strides,
                                                        DeviceAddress src, DimsView src_strides,
                                                        int32_t element_size) {
  ASSIGN_OR_RETURN(const MergedSpace<2> space, merge_dims<2>(op, dims, {dst_strides, src_strides}));
  k::StridedCopyParams p{};
  p.src = device_pointer<const void>(src);
  p.dst = device_pointer<void>(dst);
  p.count = element_count(dims);
  p.element_size = element_size;
  p.rank = space.rank;
  std::copy(std::begin(space.dims), std::end(space.dims), p.dims);
  std::copy(std::begin(space.strides[0]), std::end(space.strides[0]), p.dst_strides);
  std::copy(std::begin(space.strides[1]), std::end(space.strides[1]), p.src_strides);
  return KernelLaunch<k::StridedCopyParams>{DeviceKernel::ss_strided_copy, blocks_for(p.count), p};
}

Result<int32_t> fill_post_ops(const PlanOp& op, std::span<const PostOp> post_ops,
                              std::span<const DeviceAddress> sums, bool allow_sums,
                              k::KernelPostOp* out) {
  if (post_ops.size() > size_t(k::kMaxPostOps)) {
    return invalid(op, std::to_string(post_ops.size()) + " post-ops, the kernel applies up to " +
                           std::to_string(k::kMaxPostOps));
  }
  size_t next_sum = 0;
  for (size_t i = 0; i < post_ops.size(); ++i) {
    const PostOp& post = post_ops[i];
    k::KernelPostOp& kp = out[i];
    kp = k::KernelPostOp{k::KernelPostOpKind::kUnary, k::KernelUnary::kRelu, post.alpha, post.beta,
                         nullptr};
    if (post.kind == PostOp::Kind::kSum) {
      if (!allow_sums) return invalid(op, "a sum post-op, where only unary ones apply");
      if (next_sum >= sums.size() || sums[next_sum] == 0) {
        return invalid(op, "sum post-op " + std::to_string(next_sum) + " has no operand");
      }
      kp.kind = k::KernelPostOpKind::kSum;
      kp.sum = device_pointer<const float>(sums[next_sum++]);
    } else if (post.kind == PostOp::Kind::kUnary) {
      ASSIGN_OR_RETURN(kp.unary, kernel_unary(op, post.unary));
    } else {
      return invalid(op, "unknown post-op kind");
    }
  }
  if (next_sum != sums.size()) {
    return invalid(op, std::to_string(next_sum) + " sum post-ops but " +
                           std::to_string(sums.size()) + " sum operands");
  }
  return int32_t(post_ops.size());
}

// Inner size and channel count of dimension 1 (rank >= 2).
void channel_layout(DimsView dims, k::ChannelEpilogueParams* p) {
  p->channels = dims.size() >= 2 ? dims[1] : 1;
  p->inner = dims.size() >= 2 ? element_count(dims.subspan(2)) : 1;
}

Result<k::PoolAxis> pool_axis(const PlanOp& op, size_t i, size_t spatial, int64_t in, int64_t out) {
  ASSIGN_OR_RETURN(const WindowAxis a,
                   window_axis({op, invalid}, i, spatial, op.kernel[i], in, out));
  const WindowOutputs sizes = window_outputs(a);
  if (sizes.floor < 0 || (a.out != sizes.floor && a.out != sizes.ceil)) {
    return invalid(op, "output spatial dimension " + std::to_string(i) + " is " +
                           std::to_string(a.out) + ", the window gives " +
                           std::to_string(sizes.floor) + " (or " + std::to_string(sizes.ceil) +
                           ")");
  }
  return k::PoolAxis{a.in, a.out, a.kernel, a.stride, a.dilation, a.pad_begin, a.pad_end};
}

// ReduceMean over `reduced` dimensions of x (flags per dimension), y dense over the others.
Result<KernelLaunch<k::ReduceMeanParams>> reduce_mean(const PlanOp& op, const DeviceTensor& x,
                                                      const DeviceTensor& y,
                                                      const std::vector<bool>& reduced) {
  const Dims x_strides = dense_strides(x.dims);
  Dims kept_dims, kept_strides, reduced_dims, reduced_strides;
  int64_t row_length = 1;
  for (size_t i = 0; i < x.dims.size(); ++i) {
    if (reduced[i]) {
      reduced_dims.push_back(x.dims[i]);
      reduced_strides.push_back(x_strides[i]);
      row_length *= x.dims[i];
    } else {
      kept_dims.push_back(x.dims[i]);
      kept_strides.push_back(x_strides[i]);
    }
  }
  ASSIGN_OR_RETURN(const MergedSpace<1> kept, merge_dims<1>(op, kept_dims, {kept_strides}));
  ASSIGN_OR_RETURN(const MergedSpace<1> red, merge_dims<1>(op, reduced_dims, {reduced_strides}));
  k::ReduceMeanParams p{};
  p.x = device_pointer<const float>(x.data);
  p.y = device_pointer<float>(y.data);
  p.rows = element_count(kept_dims);
  p.row_length = row_length;
  p.kept_rank = kept.rank;
  p.reduced_rank = red.rank;
  copy_space(kept, 0, p.kept_dims, p.kept_strides);
  copy_space(red, 0, p.reduced_dims, p.reduced_strides);
  const bool by_block = row_length >= kBlockRowLength;
  return KernelLaunch<k::ReduceMeanParams>{
      by_block ? DeviceKernel::ss_reduce_mean_block : DeviceKernel::ss_reduce_mean_rows,
      by_block ? blocks_for_rows(p.rows) : blocks_for(p.rows), p};
}

}  // namespace

const char* device_kernel_name(DeviceKernel kernel) {
  switch (kernel) {
#define SS_DEVICE_KERNEL_NAME(name) \
  case DeviceKernel::name:          \
    return #name;
    SS_DEVICE_KERNELS(SS_DEVICE_KERNEL_NAME)
#undef SS_DEVICE_KERNEL_NAME
  }
  return "unknown kernel";
}

void fold_batch_norm(float epsilon, std::span<const float> gamma, std::span<const float> beta,
                     std::span<const float> mean, std::span<const float> var,
                     std::span<float> scale, std::span<float> shift) {
  for (size_t c = 0; c < scale.size(); ++c) {
    const double factor = double(gamma[c]) / std::sqrt(double(var[c]) + double(epsilon));
    scale[c] = float(factor);
    shift[c] = float(double(beta[c]) - double(mean[c]) * factor);
  }
}

Result<KernelLaunch<k::UnaryParams>> unary_launch(const PlanOp& op, const DeviceTensor& x,
                                                  const DeviceTensor& y) {
  RETURN_IF_ERROR(check_fp32(op, "X", x));
  RETURN_IF_ERROR(check_fp32(op, "Y", y));
  RETURN_IF_ERROR(check_dims({op, invalid}, "Y", y.dims, x.dims));
  ASSIGN_OR_RETURN(const k::KernelUnary alg, kernel_unary(op, op.unary));
  const k::UnaryParams p{device_pointer<const float>(x.data),
                         device_pointer<float>(y.data),
                         element_count(x.dims),
                         alg,
                         op.alpha,
                         op.beta};
  return KernelLaunch<k::UnaryParams>{DeviceKernel::ss_unary, blocks_for(p.count), p};
}

Result<KernelLaunch<k::ChannelEpilogueParams>> epilogue_launch(std::span<const PostOp> post_ops,
                                                               DeviceAddress bias,
                                                               std::span<const DeviceAddress> sums,
                                                               const DeviceTensor& y) {
  // For the messages (the executor adds the op's label), built once: this runs per launch.
  static const PlanOp op = [] {
    PlanOp epilogue;
    epilogue.label = "epilogue";
    return epilogue;
  }();
  RETURN_IF_ERROR(check_fp32(op, "Y", y));
  if (bias != 0 && y.dims.size() < 2) return invalid(op, "a bias needs a rank >= 2 result");
  k::ChannelEpilogueParams p{};
  p.x = device_pointer<const float>(y.data);
  p.y = device_pointer<float>(y.data);
  p.shift = device_pointer<const float>(bias);
  p.count = element_count(y.dims);
  channel_layout(y.dims, &p);
  ASSIGN_OR_RETURN(p.post_op_count, fill_post_ops(op, post_ops, sums, true, p.post_ops));
  return KernelLaunch<k::ChannelEpilogueParams>{DeviceKernel::ss_channel_epilogue,
                                                blocks_for(p.count), p};
}

Result<KernelLaunch<k::ChannelEpilogueParams>> batch_norm_launch(const PlanOp& op,
                                                                 DeviceAddress scale,
                                                                 DeviceAddress shift,
                                                                 const DeviceTensor& x,
                                                                 const DeviceTensor& y) {
  RETURN_IF_ERROR(check_fp32(op, "X", x));
  RETURN_IF_ERROR(check_fp32(op, "Y", y));
  RETURN_IF_ERROR(check_dims({op, invalid}, "Y", y.dims, x.dims));
  if (x.dims.size() < 2) return invalid(op, "needs a rank >= 2 input");
  if (scale == 0 || shift == 0) return invalid(op, "needs the folded scale and shift");
  k::ChannelEpilogueParams p{};
  p.x = device_pointer<const float>(x.data);
  p.y = device_pointer<float>(y.data);
  p.scale = device_pointer<const float>(scale);
  p.shift = device_pointer<const float>(shift);
  p.count = element_count(x.dims);
  channel_layout(x.dims, &p);
  ASSIGN_OR_RETURN(p.post_op_count, fill_post_ops(op, op.post_ops, {}, false, p.post_ops));
  return KernelLaunch<k::ChannelEpilogueParams>{DeviceKernel::ss_channel_epilogue,
                                                blocks_for(p.count), p};
}

Result<KernelLaunch<k::BinaryParams>> binary_launch(const PlanOp& op, const DeviceTensor& a,
                                                    const DeviceTensor& b, const DeviceTensor& y) {
  RETURN_IF_ERROR(check_fp32(op, "A", a));
  RETURN_IF_ERROR(check_fp32(op, "B", b));
  RETURN_IF_ERROR(check_fp32(op, "C", y));
  k::KernelBinary alg = k::KernelBinary::kAdd;
  switch (op.binary) {
    case BinaryAlg::kAdd:
      alg = k::KernelBinary::kAdd;
      break;
    case BinaryAlg::kSub:
      alg = k::KernelBinary::kSub;
      break;
    case BinaryAlg::kMul:
      alg = k::KernelBinary::kMul;
      break;
    case BinaryAlg::kDiv:
      alg = k::KernelBinary::kDiv;
      break;
    default:
      return invalid(op, "unknown binary function");
  }
  // Each operand's strides as broadcast (numpy, right-aligned) to y: 0 along broadcast dims.
  const size_t rank = y.dims.size();
  auto broadcast = [&](const DeviceTensor& t, const char* what) -> Result<Dims> {
    if (t.dims.size() > rank) {
      return invalid(op, std::string(what) + " " + dims_string(t.dims) +
                             " has a higher rank than C " + dims_string(y.dims));
    }
    std::optional<Dims> strides = broadcast_strides(t.dims, y.dims);
    if (!strides) {
      return invalid(op, std::string(what) + " " + dims_string(t.dims) +
                             " does not broadcast to C " + dims_string(y.dims));
    }
    return *std::move(strides);
  };
  ASSIGN_OR_RETURN(const Dims a_strides, broadcast(a, "A"));
  ASSIGN_OR_RETURN(const Dims b_strides, broadcast(b, "B"));
  // C must be exactly the broadcast shape (numpy's, as the reference computes it).
  for (size_t i = 0; i < rank; ++i) {
    const size_t from_end = rank - i;
    const int64_t da = from_end <= a.dims.size() ? a.dims[a.dims.size() - from_end] : 1;
    const int64_t db = from_end <= b.dims.size() ? b.dims[b.dims.size() - from_end] : 1;
    if (y.dims[i] != (da == 1 ? db : da)) {
      return invalid(op, "C " + dims_string(y.dims) + " is not the broadcast of A " +
                             dims_string(a.dims) + " and B " + dims_string(b.dims));
    }
  }
  const Dims y_strides = dense_strides(y.dims);
  ASSIGN_OR_RETURN(const MergedSpace<3> space,
                   merge_dims<3>(op, y.dims, {y_strides, a_strides, b_strides}));
  k::BinaryParams p{};
  p.a = device_pointer<const float>(a.data);
  p.b = device_pointer<const float>(b.data);
  p.y = device_pointer<float>(y.data);
  p.count = element_count(y.dims);
  p.alg = alg;
  p.rank = space.rank;
  std::copy(std::begin(space.dims), std::end(space.dims), p.dims);
  std::copy(std::begin(space.strides[1]), std::end(space.strides[1]), p.a_strides);
  std::copy(std::begin(space.strides[2]), std::end(space.strides[2]), p.b_strides);
  return KernelLaunch<k::BinaryParams>{DeviceKernel::ss_binary, blocks_for(p.count), p};
}

Result<KernelLaunch<k::Pool2dParams>> pool_launch(const PlanOp& op, const DeviceTensor& x,
                                                  const DeviceTensor& y) {
  const bool is_max = op.kind == OpKind::kMaxPool;
  if (!is_max && op.kind != OpKind::kAveragePool)
    return invalid(op, "is not a MaxPool or AveragePool");
  RETURN_IF_ERROR(check_fp32(op, "X", x));
  RETURN_IF_ERROR(check_fp32(op, "Y", y));
  const size_t rank = x.dims.size();
  if (rank != 3 && rank != 4) return invalid(op, "pools 1 or 2 spatial dimensions only");
  RETURN_IF_ERROR(check_pool_output({op, invalid}, x.dims, y.dims));
  const size_t spatial = rank - 2;
  if (op.kernel.size() != spatial || (!op.strides.empty() && op.strides.size() != spatial) ||
      (!op.dilations.empty() && op.dilations.size() != spatial) ||
      (!op.pads.empty() && op.pads.size() != 2 * spatial)) {
    return invalid(op,
                   "kernel, strides, dilations or pads do not have one entry per spatial "
                   "dimension (pads two)");
  }
  k::Pool2dParams p{};
  p.x = device_pointer<const float>(x.data);
  p.y = device_pointer<float>(y.data);
  p.count = element_count(y.dims);
  p.h = k::PoolAxis{1, 1, 1, 1, 1, 0, 0};  // 1-d pooling: a trivial H
  if (spatial == 2) {
    ASSIGN_OR_RETURN(p.h, pool_axis(op, 0, spatial, x.dims[2], y.dims[2]));
  }
  ASSIGN_OR_RETURN(p.w, pool_axis(op, spatial - 1, spatial, x.dims[rank - 1], y.dims[rank - 1]));
  p.count_include_pad = op.count_include_pad ? 1 : 0;
  return KernelLaunch<k::Pool2dParams>{
      is_max ? DeviceKernel::ss_max_pool : DeviceKernel::ss_average_pool, blocks_for(p.count), p};
}

Result<KernelLaunch<k::ReduceMeanParams>> global_average_pool_launch(const PlanOp& op,
                                                                     const DeviceTensor& x,
                                                                     const DeviceTensor& y) {
  RETURN_IF_ERROR(check_fp32(op, "X", x));
  RETURN_IF_ERROR(check_fp32(op, "Y", y));
  RETURN_IF_ERROR(check_global_pool({op, invalid}, x.dims, y.dims));
  std::vector<bool> reduced(x.dims.size(), true);
  reduced[0] = reduced[1] = false;
  return reduce_mean(op, x, y, reduced);
}

Result<KernelLaunch<k::ReduceMeanParams>> reduce_mean_launch(const PlanOp& op,
                                                             const DeviceTensor& x,
                                                             const DeviceTensor& y) {
  RETURN_IF_ERROR(check_fp32(op, "X", x));
  RETURN_IF_ERROR(check_fp32(op, "Y", y));
  ASSIGN_OR_RETURN(const Reduction r, reduction({op, invalid}, x.dims));
  RETURN_IF_ERROR(check_dims({op, invalid}, "Y", y.dims, r.out_dims));
  return reduce_mean(op, x, y, r.reduced);
}

Result<KernelLaunch<k::SoftmaxParams>> softmax_launch(const PlanOp& op, const DeviceTensor& x,
                                                      const DeviceTensor& y) {
  RETURN_IF_ERROR(check_fp32(op, "X", x));
  RETURN_IF_ERROR(check_fp32(op, "Y", y));
  ASSIGN_OR_RETURN(const AxisSplit split, softmax_split({op, invalid}, x.dims, y.dims));
  k::SoftmaxParams p{};
  p.x = device_pointer<const float>(x.data);
  p.y = device_pointer<float>(y.data);
  p.length = split.length;
  p.inner = split.inner;
  p.rows = split.outer * p.inner;
  if (p.length == 0) p.rows = 0;  // nothing to write
  const bool by_block = p.length >= kBlockRowLength;
  return KernelLaunch<k::SoftmaxParams>{
      by_block ? DeviceKernel::ss_softmax_block : DeviceKernel::ss_softmax_rows,
      by_block ? blocks_for_rows(p.rows) : blocks_for(p.rows), p};
}

Result<KernelLaunch<k::LrnParams>> lrn_launch(const PlanOp& op, const DeviceTensor& x,
                                              const DeviceTensor& y) {
  RETURN_IF_ERROR(check_fp32(op, "X", x));
  RETURN_IF_ERROR(check_fp32(op, "Y", y));
  RETURN_IF_ERROR(check_dims({op, invalid}, "Y", y.dims, x.dims));
  if (x.dims.size() < 2) return invalid(op, "needs a rank >= 2 input");
  if (op.size < 1) return invalid(op, "size must be >= 1, got " + std::to_string(op.size));
  k::LrnParams p{};
  p.x = device_pointer<const float>(x.data);
  p.y = device_pointer<float>(y.data);
  p.count = element_count(x.dims);
  p.channels = x.dims[1];
  p.inner = element_count(x.dims.subspan(2));
  p.before = (op.size - 1) / 2;
  p.after = op.size - 1 - p.before;  // ceil((size - 1) / 2)
  p.scale = float(double(op.alpha) / double(op.size));
  p.beta = op.beta;
  p.bias = op.bias;
  return KernelLaunch<k::LrnParams>{DeviceKernel::ss_lrn, blocks_for(p.count), p};
}

Result<KernelLaunch<k::StridedCopyParams>> transpose_launch(const PlanOp& op, const DeviceTensor& x,
                                                            const DeviceTensor& y) {
  ASSIGN_OR_RETURN(const int32_t esize, movable_element_size(op, x, y));
  ASSIGN_OR_RETURN(const SourceView source, transpose_view({op, invalid}, x.dims, y.dims));
  return strided_copy(op, y.dims, y.data, dense_strides(y.dims), x.data, source.strides, esize);
}

Result<KernelLaunch<k::StridedCopyParams>> slice_launch(const PlanOp& op, const DeviceTensor& x,
                                                        const DeviceTensor& y) {
  ASSIGN_OR_RETURN(const int32_t esize, movable_element_size(op, x, y));
  ASSIGN_OR_RETURN(const SourceView source, slice_view({op, invalid}, x.dims, y.dims));
  return strided_copy(op, y.dims, y.data, dense_strides(y.dims),
                      x.data + DeviceAddress(source.origin * esize), source.strides, esize);
}

namespace {

// Concat's and Split's shared part: `parts` along op.axis make up `whole` (Split: of op.sizes);
// the copy of part `part` between its own dense layout and its block of the whole.
Result<KernelLaunch<k::StridedCopyParams>> axis_part_copy(const PlanOp& op,
                                                          const DeviceTensor& whole,
                                                          std::span<const DeviceTensor> parts,
                                                          size_t part, bool into_whole) {
  if (whole.dims.empty()) return invalid(op, "needs rank >= 1 tensors");
  if (part >= parts.size()) {
    return invalid(op, "part " + std::to_string(part) + " of " + std::to_string(parts.size()));
  }
  ASSIGN_OR_RETURN(const int64_t axis, normalize_axis({op, invalid}, op.axis, whole.dims.size()));
  std::vector<DimsView> part_dims;
  for (const DeviceTensor& t : parts) {
    RETURN_IF_ERROR(movable_element_size(op, whole, t).status());
    part_dims.push_back(t.dims);
  }
  if (!into_whole) RETURN_IF_ERROR(check_split_sizes({op, invalid}, whole.dims, part_dims, axis));
  ASSIGN_OR_RETURN(const Dims offsets, axis_blocks({op, invalid}, whole.dims, part_dims, axis));
  const DeviceTensor& t = parts[part];
  const auto esize = int32_t(shm::data_type_size(whole.dtype));
  const Dims whole_strides = dense_strides(whole.dims);
  const DeviceAddress block =
      whole.data + DeviceAddress(offsets[part] * whole_strides[size_t(axis)] * esize);
  const Dims part_strides = dense_strides(t.dims);
  if (into_whole)
    return strided_copy(op, t.dims, block, whole_strides, t.data, part_strides, esize);
  return strided_copy(op, t.dims, t.data, part_strides, block, whole_strides, esize);
}

}  // namespace

Result<KernelLaunch<k::StridedCopyParams>> concat_launch(const PlanOp& op,
                                                         std::span<const DeviceTensor> inputs,
                                                         size_t part, const DeviceTensor& y) {
  return axis_part_copy(op, y, inputs, part, true);
}

Result<KernelLaunch<k::StridedCopyParams>> split_launch(const PlanOp& op, const DeviceTensor& x,
                                                        std::span<const DeviceTensor> outputs,
                                                        size_t part) {
  return axis_part_copy(op, x, outputs, part, false);
}

Result<KernelLaunch<k::PadParams>> pad_launch(const PlanOp& op, const DeviceTensor& x,
                                              const DeviceTensor& y) {
  ASSIGN_OR_RETURN(const int32_t esize, movable_element_size(op, x, y));
  ASSIGN_OR_RETURN(const PadGeometry pad, pad_geometry({op, invalid}, x.dims, y.dims));
  const size_t rank = x.dims.size();
  if (rank > size_t(k::kMaxRank)) {
    return invalid(op, "pads rank " + std::to_string(rank) + " tensors, the kernel up to " +
                           std::to_string(k::kMaxRank));
  }
  k::PadParams p{};
  // pad_geometry accepted the mode: one of these.
  p.mode = op.pad_mode == PlanOp::PadMode::kConstant  ? k::KernelPadMode::kConstant
           : op.pad_mode == PlanOp::PadMode::kReflect ? k::KernelPadMode::kReflect
                                                      : k::KernelPadMode::kEdge;
  const Dims x_strides = dense_strides(x.dims);
  for (size_t i = 0; i < rank; ++i) {
    p.out_dims[i] = pad.out_dims[i];
    p.x_strides[i] = x_strides[i];
    p.keep_begin[i] = pad.keep_begin[i];
    p.kept[i] = pad.kept[i];
    p.at[i] = pad.at[i];
  }
  p.x = device_pointer<const void>(x.data);
  p.y = device_pointer<void>(y.data);
  p.count = element_count(pad.out_dims);
  p.element_size = esize;
  p.rank = int32_t(rank);
  p.value_bits = value_bits(x.dtype, op.pad_value);
  return KernelLaunch<k::PadParams>{DeviceKernel::ss_pad, blocks_for(p.count), p};
}

Result<KernelLaunch<k::GatherParams>> gather_launch(const PlanOp& op, const DeviceTensor& x,
                                                    const DeviceTensor& indices,
                                                    const DeviceTensor& y) {
  ASSIGN_OR_RETURN(const int32_t esize, movable_element_size(op, x, y));
  ASSIGN_OR_RETURN(const int64_t axis,
                   gather_axis({op, invalid}, x.dims, indices.dtype, indices.dims, y.dims));
  k::GatherParams p{};
  p.x = device_pointer<const void>(x.data);
  p.indices = device_pointer<const void>(indices.data);
  p.y = device_pointer<void>(y.data);
  p.count = element_count(y.dims);
  p.element_size = esize;
  p.indices_are_int64 = indices.dtype == DataType::kInt64 ? 1 : 0;
  p.index_count = element_count(indices.dims);
  p.axis_length = x.dims[size_t(axis)];
  p.inner = element_count(x.dims.subspan(size_t(axis) + 1));
  return KernelLaunch<k::GatherParams>{DeviceKernel::ss_gather, blocks_for(p.count), p};
}

Result<KernelLaunch<k::CastParams>> cast_launch(const PlanOp& op, const DeviceTensor& x,
                                                const DeviceTensor& y) {
  RETURN_IF_ERROR(check_dims({op, invalid}, "output", y.dims, x.dims));
  ASSIGN_OR_RETURN(const k::KernelDtype from, kernel_dtype(op, x.dtype));
  ASSIGN_OR_RETURN(const k::KernelDtype to, kernel_dtype(op, y.dtype));
  const k::CastParams p{device_pointer<const void>(x.data), device_pointer<void>(y.data),
                        element_count(x.dims), from, to};
  return KernelLaunch<k::CastParams>{DeviceKernel::ss_cast, blocks_for(p.count), p};
}

Result<KernelLaunch<k::FillParams>> fill_launch(const PlanOp& op, const DeviceTensor& y) {
  ASSIGN_OR_RETURN(const int32_t esize, movable_element_size(op, y, y));
  const k::FillParams p{device_pointer<void>(y.data), element_count(y.dims), esize,
                        value_bits(y.dtype, 1.0)};
  return KernelLaunch<k::FillParams>{DeviceKernel::ss_fill, blocks_for(p.count), p};
}

// ---- convolution and GEMM (the kernel library's own, for devices without vendor libraries) ----

Result<KernelLaunch<k::ConvParams>> conv_launch(const PlanOp& op, const DeviceTensor& x,
                                                const DeviceTensor& w, DeviceAddress bias,
                                                std::span<const DeviceAddress> sums,
                                                const DeviceTensor& y) {
  for (const auto* t : {&x, &w, &y}) {
    if (t->dtype != DataType::kFp32) return invalid(op, "Conv computes FP32 only");
  }
  const size_t rank = x.dims.size();
  const size_t spatial = rank >= 2 ? rank - 2 : 0;
  if (spatial < 1 || spatial > size_t(k::kConvSpatial) || w.dims.size() != rank ||
      y.dims.size() != rank) {
    return invalid(op, "X " + dims_string(x.dims) + ", W " + dims_string(w.dims) + " and Y " +
                           dims_string(y.dims) + " are not a 1-D to 3-D convolution");
  }
  if (op.kernel.size() != spatial || op.strides.size() != spatial ||
      op.dilations.size() != spatial || op.pads.size() != 2 * spatial) {
    return invalid(op,
                   "kernel, strides, dilations or pads do not have one entry per spatial "
                   "dimension (pads two)");
  }
  const int64_t groups = op.group;
  const int64_t out_channels = y.dims[1];
  if (groups < 1 || x.dims[1] % groups != 0 || out_channels % groups != 0 ||
      w.dims[0] != out_channels || w.dims[1] != x.dims[1] / groups || y.dims[0] != x.dims[0]) {
    return invalid(op, "X " + dims_string(x.dims) + ", W " + dims_string(w.dims) + " and Y " +
                           dims_string(y.dims) + " do not match " + std::to_string(groups) +
                           " groups");
  }
  k::ConvParams p{};
  p.x = device_pointer<const float>(x.data);
  p.w = device_pointer<const float>(w.data);
  p.bias = device_pointer<const float>(bias);
  p.y = device_pointer<float>(y.data);
  p.count = element_count(y.dims);
  p.out_channels = out_channels;
  p.group_in = w.dims[1];
  p.group_out = out_channels / groups;
  for (size_t d = 0; d < spatial; ++d) {
    if (op.pads[d] != op.pads[d + spatial]) return invalid(op, "asymmetric padding");
  }
  const size_t lead = size_t(k::kConvSpatial) - spatial;  // unit leading dimensions
  for (size_t d = 0; d < size_t(k::kConvSpatial); ++d) {
    p.in[d] = p.out[d] = p.kernel[d] = p.stride[d] = p.dilation[d] = 1;
    p.pad[d] = 0;
  }
  for (size_t d = 0; d < spatial; ++d) {
    const size_t at = lead + d;
    p.in[at] = x.dims[2 + d];
    p.out[at] = y.dims[2 + d];
    p.kernel[at] = op.kernel[d];
    p.stride[at] = op.strides[d];
    p.dilation[at] = op.dilations[d];
    p.pad[at] = op.pads[d];
    if (w.dims[2 + d] != op.kernel[d] || op.strides[d] < 1 || op.dilations[d] < 1) {
      return invalid(op, "kernel, stride or dilation of spatial dimension " + std::to_string(d) +
                             " does not fit W " + dims_string(w.dims));
    }
    const int64_t reach = (op.kernel[d] - 1) * op.dilations[d] + 1;
    const int64_t want = (x.dims[2 + d] + 2 * op.pads[d] - reach) / op.strides[d] + 1;
    if (y.dims[2 + d] != want) {
      return invalid(op, "output spatial dimension " + std::to_string(d) + " is " +
                             std::to_string(y.dims[2 + d]) + ", the window gives " +
                             std::to_string(want));
    }
  }
  ASSIGN_OR_RETURN(p.post_op_count, fill_post_ops(op, op.post_ops, sums, true, p.post_ops));
  return KernelLaunch<k::ConvParams>{DeviceKernel::ss_conv, blocks_for(p.count), p};
}

namespace {

unsigned gemm_blocks(const k::GemmParams& p) { return blocks_for(p.count); }

int64_t gemm_tiles(int64_t batch, int64_t m, int64_t n) {
  return batch * ((m + k::kGemmTile - 1) / k::kGemmTile) * ((n + k::kGemmTile - 1) / k::kGemmTile);
}

}  // namespace

Result<KernelLaunch<k::GemmParams>> gemm_launch(const PlanOp& op, const DeviceTensor& a,
                                                const DeviceTensor& b, float beta,
                                                std::span<const DeviceAddress> sums,
                                                const DeviceTensor& y) {
  for (const auto* t : {&a, &b, &y}) {
    if (t->dtype != DataType::kFp32) return invalid(op, "Gemm computes FP32 only");
  }
  if (a.dims.size() != 2 || b.dims.size() != 2 || y.dims.size() != 2) {
    return invalid(op, "Gemm takes matrices, got A " + dims_string(a.dims) + ", B " +
                           dims_string(b.dims) + ", Y " + dims_string(y.dims));
  }
  k::GemmParams p{};
  p.m = op.trans_a ? a.dims[1] : a.dims[0];
  p.k = op.trans_a ? a.dims[0] : a.dims[1];
  p.n = op.trans_b ? b.dims[0] : b.dims[1];
  const int64_t b_k = op.trans_b ? b.dims[1] : b.dims[0];
  if (b_k != p.k || y.dims[0] != p.m || y.dims[1] != p.n) {
    return invalid(op, "A " + dims_string(a.dims) + " times B " + dims_string(b.dims) +
                           " (transposed: " + std::to_string(op.trans_a) + ", " +
                           std::to_string(op.trans_b) + ") is not Y " + dims_string(y.dims));
  }
  p.batch = 1;
  // Row-major A [m, k], or [k, m] read transposed; B likewise.
  p.a_row = op.trans_a ? 1 : p.k;
  p.a_col = op.trans_a ? p.m : 1;
  p.b_row = op.trans_b ? 1 : p.n;
  p.b_col = op.trans_b ? p.k : 1;
  p.a = device_pointer<const float>(a.data);
  p.b = device_pointer<const float>(b.data);
  p.y = device_pointer<float>(y.data);
  p.alpha = op.alpha;
  p.beta = beta;
  p.count = gemm_tiles(1, p.m, p.n);
  ASSIGN_OR_RETURN(p.post_op_count, fill_post_ops(op, op.post_ops, sums, true, p.post_ops));
  return KernelLaunch<k::GemmParams>{DeviceKernel::ss_gemm, gemm_blocks(p), p};
}

Result<KernelLaunch<k::GemmParams>> matmul_launch(const PlanOp& op, int64_t m, int64_t n, int64_t k,
                                                  int64_t batch, int64_t stride_a, int64_t stride_b,
                                                  const DeviceTensor& a, const DeviceTensor& b,
                                                  const DeviceTensor& y) {
  for (const auto* t : {&a, &b, &y}) {
    if (t->dtype != DataType::kFp32) return invalid(op, "MatMul computes FP32 only");
  }
  if (m < 0 || n < 0 || k < 0 || batch < 1 || element_count(y.dims) != batch * m * n ||
      element_count(a.dims) < (batch - 1) * stride_a + m * k ||
      element_count(b.dims) < (batch - 1) * stride_b + k * n) {
    return invalid(op, "A " + dims_string(a.dims) + ", B " + dims_string(b.dims) + " and Y " +
                           dims_string(y.dims) + " are not " + std::to_string(batch) +
                           " products of " + std::to_string(m) + "x" + std::to_string(k) + " and " +
                           std::to_string(k) + "x" + std::to_string(n));
  }
  k::GemmParams p{};
  p.a = device_pointer<const float>(a.data);
  p.b = device_pointer<const float>(b.data);
  p.y = device_pointer<float>(y.data);
  p.m = m;
  p.n = n;
  p.k = k;
  p.batch = batch;
  p.a_row = k;
  p.a_col = 1;
  p.a_batch = stride_a;
  p.b_row = n;
  p.b_col = 1;
  p.b_batch = stride_b;
  p.alpha = 1.0F;
  p.beta = 0.0F;
  p.count = gemm_tiles(batch, m, n);
  return KernelLaunch<k::GemmParams>{DeviceKernel::ss_gemm, gemm_blocks(p), p};
}

}  // namespace sliceserve::backends
