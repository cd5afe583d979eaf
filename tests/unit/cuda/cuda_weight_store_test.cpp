// The CUDA weight store against a fake driver whose VMM functions are backed by memfds: an
// allocation is a memfd, exporting dups it, importing maps the fd, reserved ranges and mappings
// are host addresses and host-to-device copies are memcpy. So two forked workers really share
// bytes through the fd broker, as two processes share a VMM allocation on a GPU.

#include "sliceserve/backends/cuda/cuda_weight_store.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cuda_driver_api.h"
#include "sliceserve/shm/fd_broker.h"

namespace sliceserve::backends {
namespace {

using namespace std::chrono_literals;

constexpr size_t kGranularity = 64 * 1024;
constexpr size_t kBytes = 100'000;  // rounds up to two granules
constexpr size_t kRounded = 131'072;

// The fake driver's state, one per process (a forked worker starts from a copy of its parent's).
struct FakeCuda {
  std::vector<std::string> calls;
  std::set<std::string> failing;  // calls that return CUDA_ERROR_NOT_SUPPORTED
  int vmm_supported = 1;
  int posix_fd_supported = 1;
  std::map<CUmemGenericAllocationHandle, int> handles;  // -> the memfd
  CUmemGenericAllocationHandle next_handle = 1;
  std::map<CUdeviceptr, size_t> reserved;
  std::set<CUdeviceptr> mapped;
  std::set<CUdeviceptr> allocated;
  int retained = 0;  // primary context references
  CUcontext current = nullptr;
};

FakeCuda& fake() {
  static FakeCuda state;
  return state;
}

CUcontext primary_context() { return reinterpret_cast<CUcontext>(uintptr_t{0x1000}); }

// Records the call; CUDA_ERROR_NOT_SUPPORTED if it is set to fail.
CUresult record(const std::string& name, const std::string& args = "") {
  fake().calls.push_back(name + "(" + args + ")");
  return fake().failing.count(name) != 0 ? CUDA_ERROR_NOT_SUPPORTED : CUDA_SUCCESS;
}

std::string prop_text(const CUmemAllocationProp* prop) {
  std::string text = prop->type == CU_MEM_ALLOCATION_TYPE_PINNED ? "pinned" : "other";
  text += prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE ? ", device " : ", location ";
  text += std::to_string(prop->location.id);
  text += prop->requestedHandleTypes == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR ? ", posix_fd"
                                                                                 : ", other";
  return text;
}

void* at(CUdeviceptr ptr) { return reinterpret_cast<void*>(static_cast<uintptr_t>(ptr)); }

CudaDriverApi fake_api() {
  CudaDriverApi api;
  api.cuGetErrorName = [](CUresult result, const char** name) {
    *name = result == CUDA_ERROR_NOT_SUPPORTED ? "CUDA_ERROR_NOT_SUPPORTED" : "CUDA_ERROR_FAKE";
    return CUDA_SUCCESS;
  };
  api.cuGetErrorString = [](CUresult, const char** text) {
    *text = "operation not supported (fake)";
    return CUDA_SUCCESS;
  };
  api.cuDeviceGetCount = [](int* count) {
    *count = 1;
    return CUDA_SUCCESS;
  };
  api.cuDeviceGet = [](CUdevice* device, int ordinal) {
    *device = ordinal;
    return CUDA_SUCCESS;
  };
  api.cuDeviceGetAttribute = [](int* value, CUdevice_attribute attribute, CUdevice) {
    *value = attribute == CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
                 ? fake().vmm_supported
             : attribute == CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED
                 ? fake().posix_fd_supported
                 : 0;
    return CUDA_SUCCESS;
  };
  api.cuDevicePrimaryCtxRetain = [](CUcontext* context, CUdevice) {
    ++fake().retained;
    *context = primary_context();
    return CUDA_SUCCESS;
  };
  api.cuDevicePrimaryCtxRelease = [](CUdevice) {
    --fake().retained;
    return CUDA_SUCCESS;
  };
  api.cuCtxGetCurrent = [](CUcontext* context) {
    *context = fake().current;
    return CUDA_SUCCESS;
  };
  api.cuCtxSetCurrent = [](CUcontext context) {
    fake().current = context;
    return CUDA_SUCCESS;
  };
  api.cuMemGetAllocationGranularity = [](size_t* granularity, const CUmemAllocationProp* prop,
                                         CUmemAllocationGranularity_flags option) {
    *granularity = kGranularity;
    return record(
        "cuMemGetAllocationGranularity",
        prop_text(prop) + (option == CU_MEM_ALLOC_GRANULARITY_MINIMUM ? ", minimum" : ", other"));
  };
  api.cuMemCreate = [](CUmemGenericAllocationHandle* handle, size_t size,
                       const CUmemAllocationProp* prop, unsigned long long) {
    if (CUresult r = record("cuMemCreate", std::to_string(size) + ", " + prop_text(prop))) return r;
    const int fd = memfd_create("fake_vmm", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, off_t(size)) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    *handle = fake().next_handle++;
    fake().handles[*handle] = fd;
    return CUDA_SUCCESS;
  };
  api.cuMemRelease = [](CUmemGenericAllocationHandle handle) {
    record("cuMemRelease");
    auto it = fake().handles.find(handle);
    if (it == fake().handles.end()) return CUDA_ERROR_INVALID_VALUE;
    close(it->second);
    fake().handles.erase(it);
    return CUDA_SUCCESS;
  };
  api.cuMemExportToShareableHandle = [](void* shareable, CUmemGenericAllocationHandle handle,
                                        CUmemAllocationHandleType type, unsigned long long) {
    if (CUresult r =
            record("cuMemExportToShareableHandle",
                   type == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR ? "posix_fd" : "other")) {
      return r;
    }
    *static_cast<int*>(shareable) = fcntl(fake().handles.at(handle), F_DUPFD_CLOEXEC, 0);
    return CUDA_SUCCESS;
  };
  api.cuMemImportFromShareableHandle = [](CUmemGenericAllocationHandle* handle, void* os_handle,
                                          CUmemAllocationHandleType type) {
    if (CUresult r =
            record("cuMemImportFromShareableHandle",
                   type == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR ? "posix_fd" : "other")) {
      return r;
    }
    const int fd = fcntl(int(reinterpret_cast<uintptr_t>(os_handle)), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return CUDA_ERROR_INVALID_VALUE;
    *handle = fake().next_handle++;
    fake().handles[*handle] = fd;
    return CUDA_SUCCESS;
  };
  api.cuMemAddressReserve = [](CUdeviceptr* ptr, size_t size, size_t alignment, CUdeviceptr,
                               unsigned long long) {
    if (CUresult r = record("cuMemAddressReserve",
                            std::to_string(size) + ", align " + std::to_string(alignment))) {
      return r;
    }
    void* base = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    *ptr = CUdeviceptr(reinterpret_cast<uintptr_t>(base));
    fake().reserved[*ptr] = size;
    return CUDA_SUCCESS;
  };
  api.cuMemAddressFree = [](CUdeviceptr ptr, size_t size) {
    record("cuMemAddressFree", std::to_string(size));
    munmap(at(ptr), size);
    fake().reserved.erase(ptr);
    return CUDA_SUCCESS;
  };
  api.cuMemMap = [](CUdeviceptr ptr, size_t size, size_t offset,
                    CUmemGenericAllocationHandle handle, unsigned long long) {
    if (CUresult r =
            record("cuMemMap", std::to_string(size) + ", offset " + std::to_string(offset))) {
      return r;
    }
    void* base = mmap(at(ptr), size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                      fake().handles.at(handle), off_t(offset));
    if (base == MAP_FAILED) return CUDA_ERROR_INVALID_VALUE;
    fake().mapped.insert(ptr);
    return CUDA_SUCCESS;
  };
  api.cuMemUnmap = [](CUdeviceptr ptr, size_t size) {
    record("cuMemUnmap", std::to_string(size));
    // Back to a reservation: inaccessible, still ours until cuMemAddressFree.
    mmap(at(ptr), size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    fake().mapped.erase(ptr);
    return CUDA_SUCCESS;
  };
  api.cuMemSetAccess = [](CUdeviceptr, size_t size, const CUmemAccessDesc* desc, size_t count) {
    std::string args = std::to_string(size) + ", ";
    args += desc->location.type == CU_MEM_LOCATION_TYPE_DEVICE ? "device " : "location ";
    args += std::to_string(desc->location.id);
    args += desc->flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE ? ", readwrite" : ", other";
    return record("cuMemSetAccess", args + ", " + std::to_string(count) + " desc");
  };
  api.cuMemAlloc = [](CUdeviceptr* ptr, size_t size) {
    if (CUresult r = record("cuMemAlloc", std::to_string(size))) return r;
    *ptr = CUdeviceptr(reinterpret_cast<uintptr_t>(std::malloc(size)));
    fake().allocated.insert(*ptr);
    return CUDA_SUCCESS;
  };
  api.cuMemFree = [](CUdeviceptr ptr) {
    record("cuMemFree");
    std::free(at(ptr));
    fake().allocated.erase(ptr);
    return CUDA_SUCCESS;
  };
  api.cuMemcpyHtoDAsync = [](CUdeviceptr dst, const void* src, size_t bytes, CUstream) {
    if (CUresult r = record("cuMemcpyHtoDAsync", std::to_string(bytes))) return r;
    std::memcpy(at(dst), src, bytes);
    return CUDA_SUCCESS;
  };
  api.cuStreamSynchronize = [](CUstream) { return record("cuStreamSynchronize"); };
  return api;
}

const CudaDriverApi& api() {
  static const CudaDriverApi table = fake_api();
  return table;
}

bool called(const std::string& call) {
  const auto& calls = fake().calls;
  return std::find(calls.begin(), calls.end(), call) != calls.end();
}

bool called_name(const std::string& name) {
  return std::any_of(fake().calls.begin(), fake().calls.end(),
                     [&](const std::string& c) { return c.rfind(name + "(", 0) == 0; });
}

std::function<Status(std::span<std::byte>)> pattern_fill(uint8_t seed, int* calls = nullptr) {
  return [seed, calls](std::span<std::byte> out) {
    if (calls != nullptr) ++*calls;
    for (size_t i = 0; i < out.size(); ++i) out[i] = std::byte(uint8_t(i * 13 + seed));
    return Status::ok();
  };
}

// The seed whose pattern the region holds, or -1.
int seed_of(const WeightRegion& region) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(region.data);
  const int seed = bytes[0];
  for (size_t i = 0; i < region.bytes; ++i) {
    if (bytes[i] != uint8_t(i * 13 + seed)) return -1;
  }
  return seed;
}

// What a forked worker reports through shared memory.
struct WorkerReport {
  int done = 0;
  int shared = -1;
  int seed = -1;
  uint64_t private_bytes = 0;
  uint64_t mapped_bytes = 0;
  int fill_calls = 0;
  int imported = 0;  // called cuMemImportFromShareableHandle
  int created = 0;   // called cuMemCreate with the rounded size and a POSIX fd handle
  int dropped = 0;   // released an allocation of its own
  int leaks = 0;     // handles, mappings or allocations left after the store was destroyed
  std::atomic<int> arrived{0};  // barrier for the race
  char error[256] = {};
};
static_assert(std::atomic<int>::is_always_lock_free);

class CudaWeightStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fake() = FakeCuda{};
    auto broker = shm::FdBroker::start(broker_path_);
    ASSERT_TRUE(broker.is_ok()) << broker.status().to_string();
    broker_ = std::move(broker).value();
    void* shared = mmap(nullptr, sizeof(WorkerReport) * 2, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(shared, MAP_FAILED);
    reports_ = static_cast<WorkerReport*>(shared);
    for (int i = 0; i < 2; ++i) new (&reports_[i]) WorkerReport();
  }
  void TearDown() override { munmap(reports_, sizeof(WorkerReport) * 2); }

  // A worker process: opens a store, loads region "conv1" filled with `seed`, reports, exits.
  // With `race`, the fill waits until both workers are in it (both found nothing to fetch).
  pid_t spawn_worker(int index, uint8_t seed, bool race) {
    const pid_t pid = fork();
    if (pid != 0) return pid;
    WorkerReport& report = reports_[index];
    {
      auto store = open_cuda_weight_store(api(), 0, broker_path_);
      if (!store.is_ok()) {
        std::snprintf(report.error, sizeof report.error, "%s", store.status().to_string().c_str());
        _exit(1);
      }
      auto fill = [&](std::span<std::byte> out) {
        ++report.fill_calls;
        if (race) {
          reports_[0].arrived.fetch_add(1);
          const auto deadline = std::chrono::steady_clock::now() + 5s;
          while (reports_[0].arrived.load() < 2 && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(1ms);
          }
        }
        return pattern_fill(seed)(out);
      };
      auto region = (*store)->get_or_create("conv1", kBytes, fill);
      if (!region.is_ok()) {
        std::snprintf(report.error, sizeof report.error, "%s", region.status().to_string().c_str());
        _exit(1);
      }
      report.shared = region->shared ? 1 : 0;
      report.seed = seed_of(*region);
      report.private_bytes = (*store)->private_bytes();
      report.mapped_bytes = (*store)->mapped_bytes();
      report.imported = called("cuMemImportFromShareableHandle(posix_fd)") &&
                        called("cuMemAddressReserve(131072, align 65536)") &&
                        called("cuMemMap(131072, offset 0)") &&
                        called("cuMemSetAccess(131072, device 0, readwrite, 1 desc)");
      report.created = called("cuMemCreate(131072, pinned, device 0, posix_fd)") &&
                       called("cuMemExportToShareableHandle(posix_fd)");
      report.dropped = called_name("cuMemRelease");
    }
    report.leaks = int(fake().handles.size() + fake().mapped.size() + fake().reserved.size() +
                       fake().allocated.size()) +
                   fake().retained;
    report.done = 1;
    _exit(0);
  }

  static int wait_for(pid_t pid) {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    for (;;) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid)
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        return -1;
      }
      std::this_thread::sleep_for(2ms);
    }
  }

  std::string broker_path_ = "/tmp/ss_cws_" + std::to_string(getpid()) + "_" +
                             ::testing::UnitTest::GetInstance()->current_test_info()->name() +
                             ".sock";
  std::unique_ptr<shm::FdBroker> broker_;
  WorkerReport* reports_ = nullptr;
};

TEST_F(CudaWeightStoreTest, SecondWorkerMapsTheFirstsBytesAfterItExited) {
  const pid_t first = spawn_worker(0, 5, false);
  ASSERT_EQ(wait_for(first), 0) << reports_[0].error;
  const WorkerReport& a = reports_[0];
  EXPECT_EQ(a.shared, 0);
  EXPECT_EQ(a.fill_calls, 1);
  EXPECT_EQ(a.seed, 5);
  EXPECT_TRUE(a.created) << "cuMemCreate of the rounded size with a POSIX fd handle, exported";
  EXPECT_FALSE(a.imported);
  EXPECT_EQ(a.private_bytes, kBytes);  // it filled the region itself
  EXPECT_EQ(a.leaks, 0);
  EXPECT_EQ(broker_->keys(), std::vector<std::string>{"conv1"});

  // The first worker, and every descriptor it had, is gone: the broker's fd keeps the memory.
  const pid_t second = spawn_worker(1, 9, false);
  ASSERT_EQ(wait_for(second), 0) << reports_[1].error;
  const WorkerReport& b = reports_[1];
  EXPECT_EQ(b.shared, 1);
  EXPECT_EQ(b.fill_calls, 0);
  EXPECT_EQ(b.seed, 5) << "the first worker's bytes";
  EXPECT_TRUE(b.imported) << "import + reserve + map + read-write access, rounded sizes";
  EXPECT_FALSE(b.created);
  EXPECT_EQ(b.private_bytes, 0u);
  EXPECT_EQ(b.mapped_bytes, kBytes);
  EXPECT_EQ(b.leaks, 0);
}

TEST_F(CudaWeightStoreTest, TwoWorkersThatRaceEndWithOneCopy) {
  const pid_t first = spawn_worker(0, 3, true);
  const pid_t second = spawn_worker(1, 4, true);
  ASSERT_EQ(wait_for(first), 0) << reports_[0].error;
  ASSERT_EQ(wait_for(second), 0) << reports_[1].error;
  const WorkerReport& a = reports_[0];
  const WorkerReport& b = reports_[1];
  // Both created and filled; exactly one published, the other imported it and dropped its own.
  EXPECT_EQ(a.fill_calls + b.fill_calls, 2);
  EXPECT_TRUE(a.created && b.created);
  ASSERT_EQ(a.shared + b.shared, 1);
  const WorkerReport& winner = a.shared == 0 ? a : b;
  const WorkerReport& loser = a.shared == 0 ? b : a;
  EXPECT_EQ(loser.seed, winner.seed) << "the loser maps the winner's bytes";
  EXPECT_TRUE(loser.imported);
  EXPECT_TRUE(loser.dropped);
  EXPECT_EQ(loser.private_bytes, 0u);
  EXPECT_EQ(winner.private_bytes, kBytes);
  EXPECT_EQ(a.leaks + b.leaks, 0);
  EXPECT_EQ(broker_->stats().duplicates, 1u);
  EXPECT_EQ(broker_->size(), 1u);
}

TEST_F(CudaWeightStoreTest, ImportFailureFallsBackToAPrivateCopyThatIsReported) {
  const pid_t first = spawn_worker(0, 5, false);
  ASSERT_EQ(wait_for(first), 0) << reports_[0].error;

  fake().failing = {"cuMemImportFromShareableHandle"};
  std::vector<std::string> warnings;
  {
    auto store = open_cuda_weight_store(api(), 0, broker_path_,
                                        [&](const std::string& line) { warnings.push_back(line); });
    ASSERT_TRUE(store.is_ok()) << store.status().to_string();
    int fills = 0;
    auto region = (*store)->get_or_create("conv1", kBytes, pattern_fill(7, &fills));
    ASSERT_TRUE(region.is_ok()) << region.status().to_string();
    EXPECT_FALSE(region->shared);
    EXPECT_EQ(fills, 1);
    EXPECT_EQ(seed_of(*region), 7);
    EXPECT_EQ((*store)->private_bytes(), kBytes);
    EXPECT_EQ((*store)->mapped_bytes(), kBytes);
    EXPECT_TRUE(called("cuMemAlloc(100000)"));
    EXPECT_FALSE(called_name("cuMemCreate"));
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_NE(warnings[0].find("private copy of 100000 bytes"), std::string::npos) << warnings[0];
    EXPECT_NE(warnings[0].find("cuMemImportFromShareableHandle"), std::string::npos) << warnings[0];
    EXPECT_NE(warnings[0].find("CUDA_ERROR_NOT_SUPPORTED"), std::string::npos) << warnings[0];
  }
  EXPECT_TRUE(fake().handles.empty() && fake().allocated.empty() && fake().reserved.empty());
  EXPECT_EQ(fake().retained, 0);
}

TEST_F(CudaWeightStoreTest, MappingFailureUndoesTheImportAndFallsBack) {
  const pid_t first = spawn_worker(0, 5, false);
  ASSERT_EQ(wait_for(first), 0) << reports_[0].error;
  fake().failing = {"cuMemMap"};
  std::vector<std::string> warnings;
  auto store = open_cuda_weight_store(api(), 0, broker_path_,
                                      [&](const std::string& line) { warnings.push_back(line); });
  ASSERT_TRUE(store.is_ok());
  auto region = (*store)->get_or_create("conv1", kBytes, pattern_fill(7));
  ASSERT_TRUE(region.is_ok()) << region.status().to_string();
  EXPECT_FALSE(region->shared);
  EXPECT_EQ((*store)->private_bytes(), kBytes);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("cuMemMap"), std::string::npos) << warnings[0];
  // The imported handle and the reserved range were given back before the private copy.
  EXPECT_TRUE(called("cuMemAddressFree(131072)"));
  EXPECT_TRUE(called("cuMemRelease()"));
  EXPECT_TRUE(fake().handles.empty());
  EXPECT_TRUE(fake().reserved.empty());
}

TEST_F(CudaWeightStoreTest, CreateFailureFallsBackAndPublishesNothing) {
  fake().failing = {"cuMemCreate"};
  std::vector<std::string> warnings;
  auto store = open_cuda_weight_store(api(), 0, broker_path_,
                                      [&](const std::string& line) { warnings.push_back(line); });
  ASSERT_TRUE(store.is_ok());
  auto region = (*store)->get_or_create("conv1", kBytes, pattern_fill(2));
  ASSERT_TRUE(region.is_ok()) << region.status().to_string();
  EXPECT_FALSE(region->shared);
  EXPECT_EQ(seed_of(*region), 2);
  EXPECT_EQ((*store)->private_bytes(), kBytes);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("cuMemCreate"), std::string::npos) << warnings[0];
  EXPECT_EQ(broker_->size(), 0u);
}

TEST_F(CudaWeightStoreTest, EntryOfAnotherFormatOrSizeIsNotMapped) {
  shm::UniqueFd memfd(memfd_create("other", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(memfd.get(), kRounded), 0);
  ASSERT_TRUE(shm::publish_fd(broker_path_, "conv1", kRounded,
                              "sliceserve-cuda-vmm/1 device=0 bytes=99999", memfd.get())
                  .is_ok());
  std::vector<std::string> warnings;
  auto store = open_cuda_weight_store(api(), 0, broker_path_,
                                      [&](const std::string& line) { warnings.push_back(line); });
  ASSERT_TRUE(store.is_ok());
  auto region = (*store)->get_or_create("conv1", kBytes, pattern_fill(2));
  ASSERT_TRUE(region.is_ok()) << region.status().to_string();
  EXPECT_FALSE(region->shared);
  EXPECT_FALSE(called_name("cuMemImportFromShareableHandle"));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("bytes=99999"), std::string::npos) << warnings[0];
}

TEST_F(CudaWeightStoreTest, UnreachableBrokerFallsBackWithTheReason) {
  std::vector<std::string> warnings;
  auto store = open_cuda_weight_store(api(), 0, broker_path_ + ".nobody",
                                      [&](const std::string& line) { warnings.push_back(line); });
  ASSERT_TRUE(store.is_ok());
  auto region = (*store)->get_or_create("conv1", kBytes, pattern_fill(2));
  ASSERT_TRUE(region.is_ok()) << region.status().to_string();
  EXPECT_EQ((*store)->private_bytes(), kBytes);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("no fd broker listens"), std::string::npos) << warnings[0];
}

TEST_F(CudaWeightStoreTest, DeviceWithoutPosixFdHandlesKeepsReportedPrivateCopies) {
  fake().posix_fd_supported = 0;
  std::vector<std::string> warnings;
  auto store = open_cuda_weight_store(api(), 0, broker_path_,
                                      [&](const std::string& line) { warnings.push_back(line); });
  ASSERT_TRUE(store.is_ok());
  ASSERT_TRUE((*store)->get_or_create("a", 10, pattern_fill(1)).is_ok());
  ASSERT_TRUE((*store)->get_or_create("b", 20, pattern_fill(1)).is_ok());
  EXPECT_EQ((*store)->private_bytes(), 30u);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_NE(warnings[1].find("no POSIX fd handles"), std::string::npos) << warnings[1];
  EXPECT_FALSE(called_name("cuMemCreate"));
  EXPECT_EQ(broker_->stats().not_found + broker_->stats().fetched, 0u) << "broker not asked";
}

TEST_F(CudaWeightStoreTest, StandaloneStoreKeepsPrivateCopiesSilently) {
  std::vector<std::string> warnings;
  auto store = open_cuda_weight_store(api(), 0, "",
                                      [&](const std::string& line) { warnings.push_back(line); });
  ASSERT_TRUE(store.is_ok());
  auto region = (*store)->get_or_create("conv1", kBytes, pattern_fill(4));
  ASSERT_TRUE(region.is_ok());
  EXPECT_FALSE(region->shared);
  EXPECT_EQ(seed_of(*region), 4);
  EXPECT_EQ((*store)->private_bytes(), kBytes);
  EXPECT_TRUE(warnings.empty());
  EXPECT_TRUE(called("cuMemAlloc(100000)"));
  EXPECT_TRUE(called("cuMemcpyHtoDAsync(100000)"));
  EXPECT_TRUE(called("cuStreamSynchronize()"));
  EXPECT_FALSE(called_name("cuMemGetAllocationGranularity"));
}

TEST_F(CudaWeightStoreTest, FillFailureIsAnErrorAndLeavesNothing) {
  auto store = open_cuda_weight_store(api(), 0, broker_path_);
  ASSERT_TRUE(store.is_ok());
  auto region = (*store)->get_or_create("conv1", kBytes, [](std::span<std::byte>) {
    return Status(ErrorCode::kModelError, "tensor conv1.weight is truncated");
  });
  ASSERT_FALSE(region.is_ok());
  EXPECT_EQ(region.status().code(), ErrorCode::kModelError);
  EXPECT_NE(region.status().message().find("filling the weights"), std::string::npos);
  EXPECT_EQ(broker_->size(), 0u);
  EXPECT_TRUE(fake().handles.empty() && fake().mapped.empty() && fake().reserved.empty());
  EXPECT_EQ((*store)->mapped_bytes(), 0u);
}

TEST_F(CudaWeightStoreTest, SameKeyGivesTheSameRegionAndTheCallersContextIsKept) {
  const CUcontext callers = reinterpret_cast<CUcontext>(uintptr_t{0x2000});
  fake().current = callers;
  auto store = open_cuda_weight_store(api(), 0, broker_path_);
  ASSERT_TRUE(store.is_ok());
  auto first = (*store)->get_or_create("conv1", kBytes, pattern_fill(1));
  ASSERT_TRUE(first.is_ok());
  EXPECT_EQ(fake().current, callers);
  int fills = 0;
  auto again = (*store)->get_or_create("conv1", kBytes, pattern_fill(1, &fills));
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(again->data, first->data);
  EXPECT_EQ(fills, 0);
  EXPECT_EQ((*store)->get_or_create("conv1", kBytes + 1, pattern_fill(1)).status().code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ((*store)->get_or_create("bad key", 8, pattern_fill(1)).status().code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(open_cuda_weight_store(api(), 1, broker_path_).status().code(),
            ErrorCode::kInvalidArgument);
  store->reset();
  EXPECT_EQ(fake().current, callers);
  EXPECT_EQ(fake().retained, 0);
  EXPECT_TRUE(called("cuMemUnmap(131072)"));
  EXPECT_TRUE(called("cuMemAddressFree(131072)"));
  EXPECT_TRUE(fake().handles.empty() && fake().mapped.empty() && fake().reserved.empty());
}

}  // namespace
}  // namespace sliceserve::backends
