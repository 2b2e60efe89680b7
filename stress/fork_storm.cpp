// stress/fork_storm.cpp: fork() again and again while other threads allocate.
static const char* kAbout =
    "Models a multi-threaded server that spawns helper processes (a shell-out, a pre-fork\n"
    "worker model, a crash reporter): worker threads allocate, realloc and free blocks of\n"
    "every tier without pause, while two forker threads fork as fast as they can. The fork\n"
    "can land while a worker is anywhere inside malloc or free. Each child verifies the\n"
    "blocks it inherited (the workers' shared tables, which a pthread_atfork handler keeps\n"
    "consistent, and the forking thread's own blocks), frees half of them (blocks of heaps\n"
    "whose threads do not exist in the child), reallocs others, allocates in every tier,\n"
    "starts a thread that frees inherited blocks and allocates, and sometimes forks a\n"
    "grandchild that does the same; it exits 0 only if every check passed. A child that\n"
    "hangs (in fork, in an atfork handler, in malloc) is killed after 20 s and counted as an\n"
    "error, so a lock left held across fork shows up as an error, not as a hung test.";

#include "common.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <mutex>
#include <thread>
#include <vector>

using namespace stress;

namespace {

constexpr unsigned kMaxWorkers = 64;

struct Worker {
  pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
  std::vector<Block> shared;    // touched only under m; verified by children
};

struct ChildCounters {          // in a MAP_SHARED page: children report here
  std::atomic<uint64_t> ops;
  std::atomic<uint64_t> blocks_checked;
  std::atomic<uint64_t> grandchildren;
};

Options g_o;
Worker g_workers[kMaxWorkers];
unsigned g_nworkers = 0;
std::atomic<bool> g_stop{false};
std::atomic<uint64_t> g_worker_ops{0};
ChildCounters* g_child = nullptr;

void atfork_prepare() {
  for (unsigned i = 0; i < g_nworkers; ++i) pthread_mutex_lock(&g_workers[i].m);
}
void atfork_parent() {
  for (unsigned i = g_nworkers; i-- > 0;) pthread_mutex_unlock(&g_workers[i].m);
}
void atfork_child() {
  for (unsigned i = g_nworkers; i-- > 0;) pthread_mutex_unlock(&g_workers[i].m);
}

void worker(unsigned id) {
  Rng r(g_o.seed * 5 + id);
  size_t priv_slots = g_o.smoke ? 128 : 512;
  std::vector<Block> priv(priv_slots);
  Worker& w = g_workers[id];
  TierMix mix;
  mix.w[0] = 900; mix.w[1] = 80; mix.w[2] = 19; mix.w[3] = 1;
  size_t huge_max = g_o.huge_max < 16 * MiB ? g_o.huge_max : 16 * MiB;
  uint64_t ops = 0;
  while (!g_stop.load(std::memory_order_relaxed)) {
    if (r.chance(80)) {
      Block& b = priv[r.below(priv_slots)];
      if (b.p) {
        if (b.via == Via::kFree && r.chance(20)) {
          if (!reallocate(b, pick_size(r, mix, huge_max), "fork_storm: worker realloc"))
            error("fork_storm: realloc returned NULL");
        } else {
          release(b, "fork_storm: worker free");
        }
      } else {
        size_t n = pick_size(r, mix, huge_max);
        Api api = pick_api(r);
        if (!allocate(r, api, n, &b, id)) error("fork_storm: %s(%zu) returned NULL", api_name(api), n);
      }
    } else {
      pthread_mutex_lock(&w.m);
      Block& b = w.shared[r.below(w.shared.size())];
      if (b.p) release(b, "fork_storm: worker free (shared table)");
      size_t n = pick_size(r, mix, 4 * MiB);
      if (!allocate(r, Api::kMalloc, n, &b, id)) error("fork_storm: malloc(%zu) returned NULL", n);
      pthread_mutex_unlock(&w.m);
    }
    ++ops;
  }
  for (Block& b : priv)
    if (b.p) release(b, "fork_storm: worker final free");
  g_worker_ops += ops;
}

// What a child (or grandchild) does; its errors go to g_errors (the copy in the child).
void child_body(std::vector<Block>& own, int depth) {
  alarm(30);   // a child that hangs after this point kills itself
  Rng r(static_cast<uint64_t>(getpid()) * 2654435761u);
  uint64_t ops = 0, checked = 0;
  // 1. inherited blocks: the workers' shared tables (consistent: the atfork handler held the
  //    locks) and the forking thread's own blocks
  std::vector<Block> inherited;
  for (unsigned i = 0; i < g_nworkers; ++i)
    for (Block& b : g_workers[i].shared)
      if (b.p) inherited.push_back(b);
  for (Block& b : own)
    if (b.p) inherited.push_back(b);
  // this process frees them: a grandchild must not see them in the tables again
  for (unsigned i = 0; i < g_nworkers; ++i)
    for (Block& b : g_workers[i].shared) b = Block{};
  for (Block& b : own) b = Block{};
  for (Block& b : inherited) {
    check(b, "fork_storm child: inherited block");
    ++checked;
  }
  // 2. free half of them here, realloc a quarter, keep a quarter for the new thread
  std::vector<Block> for_thread;
  for (Block& b : inherited) {
    unsigned k = static_cast<unsigned>(r.below(4));
    if (k < 2) release(b, "fork_storm child: free of an inherited block");
    else if (k == 2) {
      if (!reallocate(b, r.range(1, 300 * KiB), "fork_storm child: realloc of an inherited block"))
        error("fork_storm child: realloc returned NULL");
      release(b, "fork_storm child: free after realloc");
    } else for_thread.push_back(b);
    ++ops;
  }
  // 3. allocate in every tier
  std::vector<Block> fresh;
  for (unsigned t = 0; t < kTierCount; ++t)
    for (int k = 0; k < (t == kHuge ? 1 : 16); ++k) {
      Block b;
      size_t n = size_in_tier(r, t, 8 * MiB);
      if (!allocate(r, pick_api(r), n, &b, 99)) error("fork_storm child: allocation of %zu returned NULL", n);
      else fresh.push_back(b);
      ++ops;
    }
  // 4. a thread that frees inherited and fresh blocks and allocates on its own
  std::atomic<uint64_t> tops{0};
  std::thread t([&] {
    Rng tr(r.next());
    for (Block& b : for_thread) release(b, "fork_storm child thread: free of an inherited block");
    for (size_t k = 0; k < fresh.size(); k += 2) release(fresh[k], "fork_storm child thread: cross-thread free");
    std::vector<Block> mine(64);
    for (int k = 0; k < 2000; ++k) {
      Block& b = mine[tr.below(mine.size())];
      if (b.p) release(b, "fork_storm child thread: free");
      else if (!allocate(tr, pick_api(tr), size_in_tier(tr, tr.chance(90) ? kSmall : kMedium, 8 * MiB), &b, 7))
        error("fork_storm child thread: allocation returned NULL");
    }
    for (Block& b : mine)
      if (b.p) release(b, "fork_storm child thread: final free");
    tops += for_thread.size() + fresh.size() / 2 + 2000;
  });
  t.join();
  ops += tops;
  for (Block& b : fresh)
    if (b.p) release(b, "fork_storm child: free");
  // 5. now and then a grandchild
  if (depth == 0 && r.chance(15)) {
    std::vector<Block> mine;
    for (int k = 0; k < 8; ++k) {
      Block b;
      if (allocate(r, Api::kMalloc, size_in_tier(r, static_cast<unsigned>(k % 3), 8 * MiB), &b, 5)) mine.push_back(b);
    }
    pid_t pid = fork();
    if (pid == 0) {
      uint64_t e0 = g_errors.load();
      child_body(mine, 1);
      _exit(g_errors.load() == e0 ? 0 : 1);
    }
    if (pid < 0) error("fork_storm child: fork failed: %s", strerror(errno));
    else {
      int status = 0;
      if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        error("fork_storm child: grandchild %d failed (status 0x%x)", pid, status);
      g_child->grandchildren++;
    }
    for (Block& b : mine) release(b, "fork_storm child: free after the grandchild");
  }
  g_child->ops += ops;
  g_child->blocks_checked += checked;
}

std::atomic<uint64_t> g_forks{0}, g_fork_errors{0};

void forker(unsigned id, Bound bound) {
  Rng r(g_o.seed * 3 + 1000 + id);
  std::vector<Block> own(16);
  for (uint64_t i = 0; bound.time_left() && (g_o.iters == 0 || g_forks.load() < g_o.iters); ++i) {
    // change some of the forking thread's own blocks between forks
    for (int k = 0; k < 4; ++k) {
      Block& b = own[r.below(own.size())];
      if (b.p) release(b, "fork_storm: forker free");
      if (!allocate(r, pick_api(r), size_in_tier(r, static_cast<unsigned>(r.below(3)), 8 * MiB), &b, 3))
        error("fork_storm: forker allocation returned NULL");
    }
    pid_t pid = fork();
    if (pid == 0) {
      uint64_t e0 = g_errors.load();
      child_body(own, 0);
      _exit(g_errors.load() == e0 ? 0 : 1);
    }
    if (pid < 0) {
      error("fork_storm: fork failed: %s", strerror(errno));
      continue;
    }
    g_forks++;
    // wait at most 20 s
    int status = 0;
    double deadline = now_s() + 20;
    pid_t got = 0;
    while ((got = waitpid(pid, &status, WNOHANG)) == 0 && now_s() < deadline) usleep(500);
    if (got == 0) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      error("fork_storm: child %d hung for 20 s and was killed", pid);
      g_fork_errors++;
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      if (WIFSIGNALED(status))
        error("fork_storm: child %d died of signal %d", pid, WTERMSIG(status));
      else
        error("fork_storm: child %d exited with status %d (its errors are printed above)", pid, WEXITSTATUS(status));
      g_fork_errors++;
    }
  }
  for (Block& b : own)
    if (b.p) release(b, "fork_storm: forker final free");
}

}  // namespace

int main(int argc, char** argv) {
  g_o = parse_standard(argc, argv, kAbout, "fork_storm", 4, 3);
  Run run(g_o);
  g_nworkers = g_o.threads < kMaxWorkers ? g_o.threads : kMaxWorkers;
  void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) {
    perror("mmap");
    return 2;
  }
  g_child = new (page) ChildCounters{};
  size_t shared_slots = g_o.smoke ? 64 : 256;
  for (unsigned i = 0; i < g_nworkers; ++i) g_workers[i].shared.resize(shared_slots);
  pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
  std::vector<std::thread> ws;
  for (unsigned i = 0; i < g_nworkers; ++i) ws.emplace_back(worker, i);
  Bound bound(g_o);
  std::thread second(forker, 1u, bound);
  forker(0, bound);
  second.join();
  g_stop = true;
  for (auto& t : ws) t.join();
  for (unsigned i = 0; i < g_nworkers; ++i)
    for (Block& b : g_workers[i].shared)
      if (b.p) release(b, "fork_storm: final free (shared table)");
  uint64_t ops = g_worker_ops + g_child->ops + g_forks;
  return run.finish(ops, kv("forks", g_forks) + kv("grandchildren", g_child->grandchildren) +
                             kv("inherited_checked", g_child->blocks_checked) + kv("failed_children", g_fork_errors));
}
