// thread_churn: a thread per task. `tasks` threads run one after another (created, joined), or
// `--parallel` at a time; each allocates `blocks` blocks of 64 to 64 + 32 * (blocks - 1) bytes,
// writes them, checks and frees them, and exits: a server that starts a thread for each
// request, or a pool that retires its idle workers. What it measures is what a thread's exit
// leaves for the next thread: memory given back to the OS at each exit comes back as page
// faults in the next thread. Prints the usual lines (time, peak RSS) and the minor page faults.
// The threads are plain pthreads, so that the main thread allocates nothing itself (glibc
// allocates each new thread's TLS vector, the DTV, in it), as in a C server's accept loop; a
// std::thread's state would be one more block made by the main thread and freed by the task.
// Run it under each allocator with LD_PRELOAD (docs/performance.md, log of changes).
//
//   build/bench/thread-churn [--tasks 5000] [--blocks 64] [--parallel 1]
#include <pthread.h>
#include <sys/resource.h>

#include "workloads/common.hpp"

namespace {
long g_blocks;
std::atomic<long> g_bad{0};

void* task(void* arg) {
  const long id = static_cast<long>(reinterpret_cast<intptr_t>(arg));
  void* v[1024];
  for (long i = 0; i < g_blocks; i++) {
    size_t n = 64 + static_cast<size_t>(i) * 32;
    v[i] = malloc(n);
    if (v[i] == nullptr) wl::fail("malloc(%zu) failed", n);
    wl::fill(v[i], n, static_cast<uint64_t>(id * g_blocks + i));
  }
  for (long i = 0; i < g_blocks; i++) {
    size_t n = 64 + static_cast<size_t>(i) * 32;
    if (!wl::check(v[i], n, static_cast<uint64_t>(id * g_blocks + i))) g_bad++;
    free(v[i]);
  }
  return nullptr;
}
}  // namespace

int main(int argc, char** argv) {
  wl::Args a(argc, argv);
  const long tasks = a.num("tasks", 5000, 200);
  const long blocks = a.num("blocks", 64, 16);
  const long parallel = a.num("parallel", 1, 1);
  a.done("thread-churn [--tasks 5000] [--blocks 64] [--parallel 1] [--smoke]");
  if (tasks < 1 || blocks < 1 || blocks > 1024 || parallel < 1 || parallel > 64) wl::usage_error("bad parameters");

  g_blocks = blocks;
  struct rusage r0, r1;
  getrusage(RUSAGE_SELF, &r0);
  double t0 = wl::now();
  for (long done = 0; done < tasks; done += parallel) {
    long n = tasks - done < parallel ? tasks - done : parallel;
    pthread_t th[64];
    for (long t = 0; t < n; t++)
      if (pthread_create(&th[t], nullptr, task, reinterpret_cast<void*>(static_cast<intptr_t>(done + t))) != 0)
        wl::fail("pthread_create failed");
    for (long t = 0; t < n; t++) pthread_join(th[t], nullptr);
  }
  double t1 = wl::now();
  getrusage(RUSAGE_SELF, &r1);
  if (g_bad.load() != 0) wl::fail("%ld blocks changed between their writing and their free", g_bad.load());
  printf("tasks=%ld\nminor_faults=%ld\n", tasks, r1.ru_minflt - r0.ru_minflt);
  wl::report(t1 - t0);
  return 0;
}
