// The CUDA weight store on a real device: a first worker process fills a region and exits, a
// second one maps it through the fd broker and reads back the first one's bytes. Skips without
// a device. The two workers ask for different MPS thread percentages, so run under an MPS
// control daemon (CUDA_MPS_PIPE_DIRECTORY set, as scripts/gpu-check does) the same test checks
// VMM fd sharing between MPS clients of different shares; without MPS the variable is ignored.

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cuda_driver_api.h"
#include "sliceserve/backends/cuda/cuda_driver.h"
#include "sliceserve/backends/cuda/cuda_weight_store.h"
#include "sliceserve/shm/fd_broker.h"
#include "sliceserve/shm/futex.h"

namespace sliceserve::backends {
namespace {

using namespace std::chrono_literals;

constexpr size_t kBytes = (64 << 20) + 123;  // not a multiple of any granularity
constexpr int kSkip = 77;

uint8_t pattern(size_t i) { return uint8_t((i * 31 + 7) ^ (i >> 12)); }

struct Report {
  int shared = -1;
  uint64_t private_bytes = 0;
  int fill_calls = 0;
  int bytes_match = 0;
  uint64_t load_us = 0;
  char message[512] = {};
};

// A child process that loads the driver itself: CUDA must not be initialized before fork().
pid_t spawn(const std::function<int(Report&)>& body, Report* report) {
  const pid_t pid = fork();
  if (pid == 0) _exit(body(*report));
  return pid;
}

int wait_for(pid_t pid) {
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  for (;;) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(5ms);
  }
}

int fail(Report& report, const std::string& what) {
  std::snprintf(report.message, sizeof report.message, "%s", what.c_str());
  return 1;
}

// Loads region "w" in this process and checks its device bytes; the store lives until exit.
int worker(Report& report, const std::string& broker, const char* mps_percentage) {
  setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", mps_percentage, 1);
  auto driver = load_cuda_driver();
  if (!driver.is_ok()) {
    fail(report, driver.status().to_string());
    return kSkip;
  }
  std::vector<std::string> warnings;
  auto store = open_cuda_weight_store(**driver, 0, broker,
                                      [&](const std::string& line) { warnings.push_back(line); });
  if (!store.is_ok()) return fail(report, store.status().to_string());
  const uint64_t start = shm::monotonic_ns();
  auto region = (*store)->get_or_create("w", kBytes, [&](std::span<std::byte> out) {
    ++report.fill_calls;
    for (size_t i = 0; i < out.size(); ++i) out[i] = std::byte(pattern(i));
    return Status::ok();
  });
  report.load_us = (shm::monotonic_ns() - start) / 1000;
  if (!region.is_ok()) return fail(report, region.status().to_string());
  report.shared = region->shared ? 1 : 0;
  report.private_bytes = (*store)->private_bytes();
  if (!warnings.empty()) fail(report, warnings.front());

  // Read the region back through the driver, in the store's (primary) context.
  const CudaDriverApi& api = (*driver)->api();
  CUdevice device = 0;
  CUcontext context = nullptr;
  std::vector<uint8_t> host(kBytes);
  const auto ptr = static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(region->data));
  if (api.cuDeviceGet(&device, 0) != CUDA_SUCCESS ||
      api.cuDevicePrimaryCtxRetain(&context, device) != CUDA_SUCCESS ||
      api.cuCtxSetCurrent(context) != CUDA_SUCCESS ||
      api.cuMemcpyDtoHAsync(host.data(), ptr, kBytes, nullptr) != CUDA_SUCCESS ||
      api.cuStreamSynchronize(nullptr) != CUDA_SUCCESS) {
    return fail(report, "reading the region back failed");
  }
  report.bytes_match = 1;
  for (size_t i = 0; i < kBytes && report.bytes_match; ++i)
    report.bytes_match = host[i] == pattern(i);
  api.cuDevicePrimaryCtxRelease(device);
  return 0;
}

TEST(CudaWeightStoreGpuTest, SecondWorkerReadsTheFirstsBytesAfterItExited) {
  void* shared =
      mmap(nullptr, 2 * sizeof(Report), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(shared, MAP_FAILED);
  auto* reports = static_cast<Report*>(shared);
  new (&reports[0]) Report();
  new (&reports[1]) Report();
  const std::string path = "/tmp/ss_cws_gpu_" + std::to_string(getpid()) + ".sock";
  auto broker = shm::FdBroker::start(path);
  ASSERT_TRUE(broker.is_ok()) << broker.status().to_string();

  const int first = wait_for(spawn([&](Report& r) { return worker(r, path, "40"); }, &reports[0]));
  if (first == kSkip) GTEST_SKIP() << reports[0].message;
  ASSERT_EQ(first, 0) << reports[0].message;
  EXPECT_EQ(reports[0].shared, 0);
  EXPECT_EQ(reports[0].fill_calls, 1);
  EXPECT_EQ(reports[0].bytes_match, 1);
  EXPECT_EQ(reports[0].message[0], '\0') << reports[0].message;  // no fallback warning
  ASSERT_EQ((*broker)->size(), 1u);

  // The first worker exited: only the broker's fd holds the allocation now.
  const int second = wait_for(spawn([&](Report& r) { return worker(r, path, "60"); }, &reports[1]));
  ASSERT_EQ(second, 0) << reports[1].message;
  EXPECT_EQ(reports[1].shared, 1) << reports[1].message;
  EXPECT_EQ(reports[1].fill_calls, 0);
  EXPECT_EQ(reports[1].private_bytes, 0u);
  EXPECT_EQ(reports[1].bytes_match, 1) << "the second worker sees the first one's bytes";
  std::printf("[   INFO   ] %zu bytes: fill + upload + publish %llu us, import + map %llu us\n",
              kBytes, static_cast<unsigned long long>(reports[0].load_us),
              static_cast<unsigned long long>(reports[1].load_us));
  munmap(shared, 2 * sizeof(Report));
}

}  // namespace
}  // namespace sliceserve::backends
