#include "sliceserve/backends/slice.h"

namespace sliceserve::backends {

Status resize_in_place(Slice& slice, double percent) {
  ASSIGN_OR_RETURN(size_t index, slice.prepare(percent));
  return slice.select(index);
}

}  // namespace sliceserve::backends
