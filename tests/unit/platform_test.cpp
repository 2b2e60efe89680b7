// tests/unit/platform_test.cpp: the OS layer's own calls (platform/linux.cpp): the clock read
// through the vDSO, the page size, the random bits, and the memory calls made as system calls
// without libc's wrappers (which must leave errno alone).
#include <sys/auxv.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <string>

#include "support.hpp"

using namespace nebula;

namespace {
uint64_t libc_ms(clockid_t id) {
  timespec ts;
  clock_gettime(id, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000u + static_cast<uint64_t>(ts.tv_nsec) / 1000000u;
}
}  // namespace

TEST_CASE("os: the clock reads the kernel's vDSO where the process has one, and agrees with libc's") {
#if defined(__x86_64__) && defined(__linux__) && !defined(__SANITIZE_THREAD__) && \
    !defined(__SANITIZE_ADDRESS__)
  // valgrind hides the vDSO (no AT_SYSINFO_EHDR): the clock is then a system call.
  if (getauxval(AT_SYSINFO_EHDR) != 0) CHECK(os::clock_from_vdso());
#endif
  for (int i = 0; i < 100; ++i) {
    const uint64_t before = libc_ms(CLOCK_MONOTONIC);
    const uint64_t ours = os::clock_ms();
    const uint64_t after = libc_ms(CLOCK_MONOTONIC);
    CHECK(ours >= before);
    CHECK(ours <= after);
    // The coarse clock is the kernel's last tick: behind by a few ms at most, never ahead.
    const uint64_t coarse = os::clock_ms_coarse();
    CHECK(coarse <= libc_ms(CLOCK_MONOTONIC));
    CHECK(coarse + 50 >= before);
  }
}

TEST_CASE("os: clock_read reads the clocks libc's clock_gettime reads, and refuses a bad one") {
  for (clockid_t id : {CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_BOOTTIME}) {
    timespec a, b, ours;
    clock_gettime(id, &a);
    REQUIRE(os::clock_read(id, &ours));
    clock_gettime(id, &b);
    const auto ns = [](const timespec& t) { return t.tv_sec * 1000000000LL + t.tv_nsec; };
    CHECK(ns(ours) >= ns(a));
    CHECK(ns(ours) <= ns(b));
  }
  timespec bad;
  errno = 777;
  CHECK_FALSE(os::clock_read(12345, &bad));
  CHECK(errno == 777);
}

TEST_CASE("os: the page size and the physical memory are the system's, random bits differ from call to call") {
  CHECK(os::page_size() == static_cast<size_t>(sysconf(_SC_PAGESIZE)));
  CHECK(os::physical_memory() ==
        static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)));
  std::set<uint64_t> seen;
  for (int i = 0; i < 10000; ++i) seen.insert(os::random_u64());
  CHECK(seen.size() == 10000);
}

TEST_CASE("os: reserve, purge and release work and leave errno as it was") {
  errno = 12345;
  const size_t size = size_t{4} << 20, align = size_t{4} << 20;
  auto* p = static_cast<unsigned char*>(os::reserve(size, align));
  REQUIRE(p != nullptr);
  CHECK(reinterpret_cast<uintptr_t>(p) % align == 0);
  memset(p, 0xab, 3 * os::page_size());
  CHECK(os::purge(p, 2 * os::page_size()));
  CHECK(p[0] == 0);                        // purged: the OS maps a zero page at the next touch
  CHECK(p[os::page_size()] == 0);
  CHECK(p[2 * os::page_size()] == 0xab);   // past the purged range: kept
  CHECK(os::protect(p + size - os::page_size(), os::page_size(), false));
  CHECK(os::protect(p + size - os::page_size(), os::page_size(), true));
  os::release(p, size);
  // A request the kernel refuses fails without touching errno.
  CHECK_FALSE(os::purge(reinterpret_cast<void*>(uintptr_t{1}), os::page_size()));
  CHECK(errno == 12345);
}

TEST_CASE("os: strict commit's calls: an inaccessible reservation, committed, decommitted, read-only zeros") {
  errno = 12345;
  const size_t size = size_t{8} << 20, align = size_t{4} << 20, half = size / 2;
  auto* p = static_cast<unsigned char*>(os::reserve_inaccessible(size, align));
  REQUIRE(p != nullptr);
  CHECK(reinterpret_cast<uintptr_t>(p) % align == 0);
  CHECK(unit::mapping_perms(p) == "---p");
  CHECK(unit::mapping_perms(p + size - 1) == "---p");
  REQUIRE(os::commit_charged(p, half));
  CHECK(unit::mapping_perms(p) == "rw-p");
  CHECK(unit::mapping_perms(p + half) == "---p");  // only the range asked for
  memset(p, 0xcd, half);
  REQUIRE(os::decommit(p, half));
  CHECK(unit::mapping_perms(p) == "---p");
  REQUIRE(os::commit_charged(p, half));
  CHECK(p[0] == 0);  // decommitted: its pages went back
  CHECK(p[half - 1] == 0);
  memset(p, 0xef, half);
  REQUIRE(os::remap_zero_readonly(p, half));
  CHECK(unit::mapping_perms(p) == "r--p");
  CHECK(p[0] == 0);
  CHECK(p[half - 1] == 0);
  os::release(p, size);
  CHECK(errno == 12345);
}
