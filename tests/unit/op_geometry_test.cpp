#include "sliceserve/backends/op_geometry.h"

#include <gtest/gtest.h>

#include <array>
#include <string>
#include <vector>

namespace sliceserve::backends {
namespace {

Status test_invalid(const PlanOp& op, const std::string& what) {
  return Status(ErrorCode::kInvalidArgument, op.label + ": test kernel: " + what);
}

class OpGeometryTest : public ::testing::Test {
 protected:
  OpGeometryTest() { op_.label = "node 'n'"; }

  OpCheck check() const { return {op_, test_invalid}; }

  PlanOp op_;
};

TEST_F(OpGeometryTest, ErrorsAreWordedByTheBackend) {
  const Status status = check_dims(check(), "Y", Dims{2, 3}, Dims{3, 2});
  EXPECT_EQ(status.code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "node 'n': test kernel: Y has dims [2,3], expected [3,2]");
}

TEST_F(OpGeometryTest, SliceViewStartsAtTheFirstElementAndStepsBackwards) {
  op_.starts = {1, 3};
  op_.steps = {1, -2};
  const Result<SourceView> view = slice_view(check(), Dims{3, 4}, Dims{2, 2});
  ASSERT_TRUE(view.is_ok()) << view.status().message();
  EXPECT_EQ(view->origin, 1 * 4 + 3);
  EXPECT_EQ(view->strides, (Dims{4, -2}));
}

TEST_F(OpGeometryTest, EmptySliceReadsNothingFromOriginZero) {
  op_.starts = {5};
  op_.steps = {1};
  const Result<SourceView> view = slice_view(check(), Dims{3}, Dims{0});
  ASSERT_TRUE(view.is_ok()) << view.status().message();
  EXPECT_EQ(view->origin, 0);
}

TEST_F(OpGeometryTest, TransposeViewDefaultsToReversedDimensions) {
  const Result<SourceView> view = transpose_view(check(), Dims{2, 3, 4}, Dims{4, 3, 2});
  ASSERT_TRUE(view.is_ok()) << view.status().message();
  EXPECT_EQ(view->strides, (Dims{1, 4, 12}));
}

TEST_F(OpGeometryTest, AxisBlocksGiveEachPartsOffset) {
  std::vector<Dims> owned = {Dims{2, 1}, Dims{2, 3}, Dims{2, 0}};
  const std::vector<DimsView> views(owned.begin(), owned.end());
  const Result<Dims> offsets = axis_blocks(check(), Dims{2, 4}, views, 1);
  ASSERT_TRUE(offsets.is_ok()) << offsets.status().message();
  EXPECT_EQ(*offsets, (Dims{0, 1, 4}));
  const Dims short_whole{2, 5};
  EXPECT_EQ(axis_blocks(check(), short_whole, views, 1).status().message(),
            "node 'n': test kernel: parts add up to 4 along axis 1, expected 5");
}

TEST_F(OpGeometryTest, SplitSizesMustMatchTheOutputs) {
  op_.sizes = {1, 2};
  std::vector<Dims> owned = {Dims{1, 4}, Dims{3, 4}};
  const std::vector<DimsView> outputs(owned.begin(), owned.end());
  EXPECT_EQ(check_split_sizes(check(), Dims{3, 4}, outputs, 0).message(),
            "node 'n': test kernel: output 1 [3,4] does not have size 2 along axis 0");
}

TEST_F(OpGeometryTest, PadGeometryCropsThenPads) {
  op_.pads = {2, -1, 0, 1};  // dim 0: 2 before; dim 1: 1 cropped before, 1 padded after
  const Result<PadGeometry> pad = pad_geometry(check(), Dims{3, 4}, Dims{5, 4});
  ASSERT_TRUE(pad.is_ok()) << pad.status().message();
  EXPECT_EQ(pad->out_dims, (Dims{5, 4}));
  EXPECT_EQ(pad->keep_begin, (Dims{0, 1}));
  EXPECT_EQ(pad->kept, (Dims{3, 3}));
  EXPECT_EQ(pad->at, (Dims{2, 0}));
}

TEST_F(OpGeometryTest, BroadcastStridesAreZeroAlongBroadcastDimensions) {
  EXPECT_EQ(broadcast_dims(Dims{3, 1}, Dims{4}), (Dims{3, 4}));
  EXPECT_EQ(broadcast_strides(Dims{3, 1}, Dims{2, 3, 4}), (Dims{0, 1, 0}));
  EXPECT_FALSE(broadcast_strides(Dims{2}, Dims{3}).has_value());
  EXPECT_FALSE(broadcast_dims(Dims{2}, Dims{3}).has_value());
}

TEST_F(OpGeometryTest, MergeContiguousDropsOnesAndJoinsContiguousDimensions) {
  const Dims dims{2, 1, 3, 4};
  const Dims dense = dense_strides(dims);
  const Dims other{1, 0, 8, 2};  // dims 2 and 3 contiguous in both views, dim 0 not
  const MergedDims<2> merged = merge_contiguous<2>(dims, {dense, other});
  EXPECT_EQ(merged.dims, (Dims{12, 2}));  // innermost first
  ASSERT_EQ(merged.strides.size(), 2u);
  EXPECT_EQ(merged.strides[0], (std::array<int64_t, 2>{1, 2}));
  EXPECT_EQ(merged.strides[1], (std::array<int64_t, 2>{12, 1}));
  const MergedDims<1> dense_only = merge_contiguous<1>(dims, {dense});
  EXPECT_EQ(dense_only.dims, (Dims{24}));
}

TEST_F(OpGeometryTest, WindowOutputsByFloorAndCeil) {
  op_.strides = {2};
  const Result<WindowAxis> axis = window_axis(check(), 0, 1, 3, 6, 2);
  ASSERT_TRUE(axis.is_ok()) << axis.status().message();
  const WindowOutputs sizes = window_outputs(*axis);
  EXPECT_EQ(sizes.floor, 2);
  EXPECT_EQ(sizes.ceil, 3);
  EXPECT_EQ(window_outputs(WindowAxis{2, 1, 3}).floor, -1);  // the window is larger than X
}

TEST_F(OpGeometryTest, ReductionKeepsOnesWithKeepdims) {
  op_.axes = {1};
  op_.keepdims = true;
  const Result<Reduction> r = reduction(check(), Dims{2, 3, 4});
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->out_dims, (Dims{2, 1, 4}));
  EXPECT_EQ(r->reduced, (std::vector<bool>{false, true, false}));
}

}  // namespace
}  // namespace sliceserve::backends
