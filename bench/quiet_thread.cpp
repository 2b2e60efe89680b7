// quiet_thread: does the memory a thread freed go back to the OS while that thread waits?
//
// Each of `workers` workers (one by default) allocates `mib` MiB of small blocks (64 to 664
// bytes), frees them all but one in `keep` (0: all), then waits on a condition variable, as a
// pool worker between jobs does. The main thread goes on allocating and freeing (blocks of about
// 100 KB, `ops` per 200 ms tick) and prints the process's resident set every tick, for `ticks`
// ticks. Run it under each allocator with LD_PRELOAD (docs/performance.md, log of changes and
// "On 64 cores").
//
//   build/bench/quiet-thread [--mib 160] [--keep 0] [--ticks 10] [--ops 1000] [--workers 1]
#include <condition_variable>
#include <mutex>

#include "workloads/common.hpp"

int main(int argc, char** argv) {
  wl::Args a(argc, argv);
  const long mib = a.num("mib", 160, 16);
  const long keep = a.num("keep", 0, 0);
  const long ticks = a.num("ticks", 10, 3);
  const long ops = a.num("ops", 1000, 100);
  const long workers = a.num("workers", 1, 1);
  a.done("quiet-thread [--mib 160] [--keep 0] [--ticks 10] [--ops 1000] [--workers 1] [--smoke]");
  if (mib < 1 || keep < 0 || ticks < 1 || ops < 0 || workers < 1) wl::usage_error("bad parameters");

  std::mutex mu;
  std::condition_variable cv;
  long freed = 0;  // workers that have freed their blocks
  int phase = 0;   // 2: the workers may exit
  auto work = [&] {
    std::vector<void*> v;
    size_t bytes = 0;
    for (long i = 0; bytes < static_cast<size_t>(mib) << 20; i++) {
      size_t n = 64 + static_cast<size_t>(i % 7) * 100;
      void* p = malloc(n);
      if (p == nullptr) wl::fail("malloc(%zu) failed", n);
      memset(p, 1, n);
      v.push_back(p);
      bytes += n;
    }
    for (size_t i = 0; i < v.size(); i++)
      if (keep == 0 || i % static_cast<size_t>(keep) != 0) free(v[i]);
    std::unique_lock<std::mutex> lk(mu);
    freed++;
    cv.notify_all();
    cv.wait(lk, [&] { return phase == 2; });
    for (size_t i = 0; keep != 0 && i < v.size(); i += static_cast<size_t>(keep)) free(v[i]);
  };
  std::vector<std::thread> pool;
  for (long w = 0; w < workers; w++) pool.emplace_back(work);
  {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return freed == workers; });
  }
  printf("rss_after_free_kib=%ld\n", wl::status_kib("VmRSS"));
  for (long t = 1; t <= ticks; t++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    for (long k = 0; k < ops; k++) {
      void* volatile p = malloc(static_cast<size_t>(100000 + k * 64));
      if (p == nullptr) wl::fail("malloc failed");
      free(p);
    }
    printf("rss_at_%ldms_kib=%ld\n", t * 200, wl::status_kib("VmRSS"));
  }
  {
    std::lock_guard<std::mutex> lk(mu);
    phase = 2;
    cv.notify_all();
  }
  for (auto& t : pool) t.join();
  return 0;
}
