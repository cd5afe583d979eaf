#include "sliceserve/backends/cpu/cpu_topology.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>

#include <string>
#include <vector>

namespace sliceserve::backends {
namespace {

using Cpus = std::vector<unsigned>;

TEST(CpuTopologyTest, ParsesIdsAndRanges) {
  auto cpus = parse_cpu_list("0-3,6");
  ASSERT_TRUE(cpus.is_ok()) << cpus.status().to_string();
  EXPECT_EQ(*cpus, (Cpus{0, 1, 2, 3, 6}));
  EXPECT_EQ(*parse_cpu_list("2"), (Cpus{2}));
  EXPECT_EQ(*parse_cpu_list("0-1,4-5"), (Cpus{0, 1, 4, 5}));
  EXPECT_EQ(*parse_cpu_list("7-7"), (Cpus{7}));
}

TEST(CpuTopologyTest, AcceptsSurroundingWhitespaceAndEmptyList) {
  EXPECT_EQ(*parse_cpu_list("0-1\n"), (Cpus{0, 1}));
  EXPECT_EQ(*parse_cpu_list(" 3 "), (Cpus{3}));
  EXPECT_TRUE(parse_cpu_list("").value().empty());
  EXPECT_TRUE(parse_cpu_list("\n").value().empty());
}

TEST(CpuTopologyTest, SortsAndDeduplicates) {
  EXPECT_EQ(*parse_cpu_list("5,1-3,2,0"), (Cpus{0, 1, 2, 3, 5}));
}

TEST(CpuTopologyTest, RejectsMalformedLists) {
  for (const char* bad : {"1-", "-1", "3-1", "1,,2", ",", "1,", "x", "1 2", "0-3;6", "1-2-3", "0x1",
                          "70000", "0-70000", "+1"}) {
    auto cpus = parse_cpu_list(bad);
    ASSERT_FALSE(cpus.is_ok()) << "accepted \"" << bad << "\"";
    EXPECT_EQ(cpus.status().code(), ErrorCode::kInvalidArgument) << bad;
    EXPECT_NE(cpus.status().message().find("bad cpu list"), std::string::npos);
  }
}

TEST(CpuTopologyTest, FormatCollapsesRuns) {
  EXPECT_EQ(format_cpu_list(Cpus{0, 1, 2, 3, 6}), "0-3,6");
  EXPECT_EQ(format_cpu_list(Cpus{6, 0, 1, 1}), "0-1,6");
  EXPECT_EQ(format_cpu_list(Cpus{4}), "4");
  EXPECT_EQ(format_cpu_list(Cpus{}), "");
  EXPECT_EQ(*parse_cpu_list(format_cpu_list(Cpus{0, 2, 3, 4, 9})), (Cpus{0, 2, 3, 4, 9}));
}

TEST(CpuTopologyTest, ProcessCpusAreTheProcessAffinity) {
  auto cpus = process_cpus();
  ASSERT_TRUE(cpus.is_ok()) << cpus.status().to_string();
  ASSERT_FALSE(cpus->empty());
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  EXPECT_EQ(unsigned(CPU_COUNT(&set)), cpus->size());
  for (unsigned cpu : *cpus) EXPECT_TRUE(CPU_ISSET(cpu, &set)) << cpu;
}

TEST(CpuTopologyTest, PinsAndRestoresTheCallingThread) {
  auto before = current_thread_cpus();
  ASSERT_TRUE(before.is_ok());
  const unsigned target = before->back();
  ASSERT_TRUE(pin_thread(pthread_self(), target).is_ok());
  EXPECT_EQ(*current_thread_cpus(), (Cpus{target}));
  EXPECT_EQ(unsigned(sched_getcpu()), target);
  ASSERT_TRUE(set_thread_cpus(pthread_self(), *before).is_ok());
  EXPECT_EQ(*current_thread_cpus(), *before);
}

TEST(CpuTopologyTest, PinningToAMissingCpuReportsErrno) {
  Status status = pin_thread(pthread_self(), kMaxCpuId);  // no such cpu here
  ASSERT_FALSE(status.is_ok());
  EXPECT_EQ(status.code(), ErrorCode::kInternal);
  EXPECT_NE(status.message().find("pthread_setaffinity_np"), std::string::npos);
  EXPECT_NE(status.message().find("Invalid argument"), std::string::npos) << status.message();
  EXPECT_FALSE(set_thread_cpus(pthread_self(), Cpus{}).is_ok());
}

}  // namespace
}  // namespace sliceserve::backends
