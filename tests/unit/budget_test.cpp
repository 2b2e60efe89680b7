// tests/unit/budget_test.cpp: the cgroup limit parser on sample files (v1 and v2), and the
// budget's charge/release accounting.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/stat.h>
#include <unistd.h>

#include "core/budget.hpp"
#include "core/engine.hpp"
#include "support.hpp"

using namespace nebula;

namespace {

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/nebula-cgroup-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
  void write(const std::string& rel, const std::string& text) const {
    std::string full = path + "/" + rel;
    std::system(("mkdir -p \"$(dirname '" + full + "')\"").c_str());
    FILE* f = std::fopen(full.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fputs(text.c_str(), f);
    std::fclose(f);
  }
};

}  // namespace

TEST_CASE("cgroup v2: the limit of the process's own cgroup") {
  TempDir d;
  d.write("proc_cgroup", "0::/user.slice/app.scope\n");
  d.write("root/user.slice/app.scope/memory.max", "268435456\n");
  bool found = false;
  CHECK(cgroup_limit((d.path + "/proc_cgroup").c_str(), (d.path + "/root").c_str(), &found) == 268435456u);
  CHECK(found);
}

TEST_CASE("cgroup v2: 'max' means no limit; the namespace root is tried too") {
  TempDir d;
  d.write("proc_cgroup", "0::/a\n");
  d.write("root/a/memory.max", "max\n");
  bool found = true;
  cgroup_limit((d.path + "/proc_cgroup").c_str(), (d.path + "/root").c_str(), &found);
  CHECK_FALSE(found);
  d.write("root/memory.max", "1073741824\n");  // container: limit at the top
  CHECK(cgroup_limit((d.path + "/proc_cgroup").c_str(), (d.path + "/root").c_str(), &found) == 1073741824u);
  CHECK(found);
}

TEST_CASE("cgroup v1: memory controller among others, and the 'unlimited' value") {
  TempDir d;
  d.write("proc_cgroup", "12:pids:/x\n5:cpu,cpuacct:/x\n4:memory:/docker/abc\n1:name=systemd:/x\n");
  d.write("root/memory/docker/abc/memory.limit_in_bytes", "536870912\n");
  bool found = false;
  CHECK(cgroup_limit((d.path + "/proc_cgroup").c_str(), (d.path + "/root").c_str(), &found) == 536870912u);
  CHECK(found);
  d.write("root/memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n");
  cgroup_limit((d.path + "/proc_cgroup").c_str(), (d.path + "/root").c_str(), &found);
  CHECK_FALSE(found);
}

TEST_CASE("cgroup: missing or malformed files give no limit") {
  TempDir d;
  bool found = true;
  cgroup_limit((d.path + "/nonexistent").c_str(), d.path.c_str(), &found);
  CHECK_FALSE(found);
  d.write("proc_cgroup", "garbage without colons\n");
  cgroup_limit((d.path + "/proc_cgroup").c_str(), d.path.c_str(), &found);
  CHECK_FALSE(found);
  d.write("proc_cgroup", "0::/a\n");
  d.write("root/a/memory.max", "lots\n");
  cgroup_limit((d.path + "/proc_cgroup").c_str(), (d.path + "/root").c_str(), &found);
  CHECK_FALSE(found);
}

TEST_CASE("budget: charges never pass the limit; releases give it back") {
  nebula_mem_collect();
  size_t base = g_counters.committed.load();
  REQUIRE(nebula_mem_set_budget(base + (10u << 20)) == 0);
  CHECK(budget_charge(6u << 20));
  CHECK_FALSE(budget_charge(6u << 20));  // 12 MiB > 10 MiB left
  CHECK(g_counters.committed.load() == base + (6u << 20));
  CHECK(budget_charge(4u << 20));         // exactly at the limit
  CHECK_FALSE(budget_charge(1));
  budget_release(10u << 20);
  CHECK(g_counters.committed.load() == base);
  // An allocation over the budget fails with ENOMEM; under it, it succeeds.
  {
    const unit::CallResult r = unit::call_errno([] { return nebula_malloc(64u << 20); });
    CHECK(r.p == nullptr);
    CHECK(r.err == ENOMEM);
  }
  void* p = nebula_malloc(1u << 20);
  CHECK(p != nullptr);
  nebula_free(p);
  REQUIRE(nebula_mem_set_budget(0) == 0);
  budget_poll_if_needed();
  p = nebula_malloc(64u << 20);
  CHECK(p != nullptr);
  nebula_free(p);
}
