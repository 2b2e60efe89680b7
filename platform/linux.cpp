// platform/linux.cpp: the Linux implementation of platform/os.hpp.
#include "platform/os.hpp"

#include <atomic>
#include <cerrno>
#include <dlfcn.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/sysinfo.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

extern char** environ;

namespace nebula::os {
namespace {

// Keeps errno as the caller left it: the engine's OS calls must not change errno on success.
struct ErrnoGuard {
  int saved = errno;
  ~ErrnoGuard() { errno = saved; }
};

// System calls made directly, without libc's wrappers: the return value is the result or
// -errno, and errno stays as it was (the engine's OS calls must not change it). Why not libc's:
// the kernel maps a fault's neighbours in 64 KiB windows, and a wrapper in a stretch of libc's
// code that the program itself never runs puts that whole window in its resident set. glibc
// 2.36's sched_yield sits between the regex and getaddrinfo code: one call from a lock's
// back-off cost every program whose threads ever contended 64 KiB (`cache-thrash`). mmap,
// munmap, madvise and mremap sit beside getauxval, whose window a small program maps for
// nothing else (docs/performance.md, log, stop 44).
// Sanitizer builds call libc's wrappers, which the sanitizers intercept to track mappings (g++
// says so with __SANITIZE_*__, clang with __has_feature).
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define NEBULA_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer) || \
    __has_feature(memory_sanitizer)
#define NEBULA_SANITIZED 1
#endif
#endif
#if (defined(__x86_64__) || defined(__aarch64__)) && !defined(NEBULA_SANITIZED)
#define NEBULA_RAW_SYSCALLS 1
long raw_syscall(long nr, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0,
                 long f = 0) noexcept {
#if defined(__x86_64__)
  long ret;
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "0"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return ret;
#else
  register long x8 __asm__("x8") = nr;
  register long x0 __asm__("x0") = a;
  register long x1 __asm__("x1") = b;
  register long x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d;
  register long x4 __asm__("x4") = e;
  register long x5 __asm__("x5") = f;
  __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                   : "memory");
  return x0;
#endif
}
#else
long raw_syscall(long nr, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0,
                 long f = 0) noexcept {
  ErrnoGuard keep;
  long r = syscall(nr, a, b, c, d, e, f);
  return r == -1 ? -errno : r;
}
#endif

// The memory calls, each true (or the address) on success.
void* sys_mmap(void* addr, size_t size, int prot, int flags) noexcept {
#ifdef NEBULA_RAW_SYSCALLS
  long r = raw_syscall(SYS_mmap, reinterpret_cast<long>(addr), static_cast<long>(size), prot,
                       flags, -1, 0);
  return r < 0 && r > -4096 ? MAP_FAILED : reinterpret_cast<void*>(r);
#else
  ErrnoGuard keep;
  return mmap(addr, size, prot, flags, -1, 0);
#endif
}
// munmap(p, size), madvise(p, size, arg), mprotect(p, size, arg) == 0.
bool range_call(long nr, void* p, size_t size, int arg = 0) noexcept {
#ifdef NEBULA_RAW_SYSCALLS
  return raw_syscall(nr, reinterpret_cast<long>(p), static_cast<long>(size), arg) == 0;
#else
  ErrnoGuard keep;
  if (nr == SYS_munmap) return munmap(p, size) == 0;
  if (nr == SYS_madvise) return madvise(p, size, arg) == 0;
  return mprotect(p, size, arg) == 0;
#endif
}
bool sys_munmap(void* p, size_t size) noexcept { return range_call(SYS_munmap, p, size); }
bool sys_madvise(void* p, size_t size, int advice) noexcept {
  return range_call(SYS_madvise, p, size, advice);
}
bool sys_mprotect(void* p, size_t size, int prot) noexcept {
  return range_call(SYS_mprotect, p, size, prot);
}
// mremap(from, n, n, flags, to) == to.
bool sys_mremap_to(void* from, size_t n, int flags, void* to) noexcept {
#ifdef NEBULA_RAW_SYSCALLS
  return raw_syscall(SYS_mremap, reinterpret_cast<long>(from), static_cast<long>(n),
                     static_cast<long>(n), flags, reinterpret_cast<long>(to)) ==
         reinterpret_cast<long>(to);
#else
  ErrnoGuard keep;
  return mremap(from, n, n, flags, to) == to;
#endif
}

void* map_anonymous(size_t size, int extra_flags, int prot = PROT_READ | PROT_WRITE) noexcept {
  void* p = sys_mmap(nullptr, size, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | extra_flags);
  return p == MAP_FAILED ? nullptr : p;
}

// Map size bytes aligned to align: map size + align and cut off the misaligned head and tail.
void* map_aligned(size_t size, size_t align, int extra_flags, int prot = PROT_READ | PROT_WRITE) noexcept {
  size_t page = page_size();
  if (align <= page) return map_anonymous(size, extra_flags, prot);
  // First try a plain mapping: the kernel often returns an aligned address for big sizes.
  void* p = map_anonymous(size, extra_flags, prot);
  if (p == nullptr) return nullptr;
  if ((reinterpret_cast<uintptr_t>(p) & (align - 1)) == 0) return p;
  sys_munmap(p, size);
  size_t over = size + align;
  if (over < size) return nullptr;
  char* raw = static_cast<char*>(map_anonymous(over, extra_flags, prot));
  if (raw == nullptr) return nullptr;
  uintptr_t start = (reinterpret_cast<uintptr_t>(raw) + align - 1) & ~(uintptr_t)(align - 1);
  size_t head = start - reinterpret_cast<uintptr_t>(raw);
  size_t tail = over - head - size;
  if (head != 0) sys_munmap(raw, head);
  if (tail != 0) sys_munmap(reinterpret_cast<char*>(start) + size, tail);
  return reinterpret_cast<void*>(start);
}

std::atomic<int> g_fault_mode{0};
std::atomic<uint64_t> g_fault_n{0};
std::atomic<uint64_t> g_fault_seed{0};
std::atomic<uint64_t> g_fault_requests{0};
std::atomic<uint64_t> g_fault_injected{0};

// True when this request to the OS must fail (fault injection is on).
bool inject_fault() noexcept {
  int mode = g_fault_mode.load(std::memory_order_relaxed);
  if (__builtin_expect(mode == 0, 1)) return false;
  uint64_t n = g_fault_n.load(std::memory_order_relaxed);
  uint64_t c = g_fault_requests.fetch_add(1, std::memory_order_relaxed) + 1;
  bool fail = false;
  if (mode == static_cast<int>(FaultMode::kNth)) fail = c == n;
  else if (mode == static_cast<int>(FaultMode::kEvery)) fail = n != 0 && c % n == 0;
  else {
    uint64_t x = g_fault_seed.load(std::memory_order_relaxed) ^ (c * 0x9e3779b97f4a7c15ull);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    fail = n != 0 && x % n == 0;
  }
  if (fail) g_fault_injected.fetch_add(1, std::memory_order_relaxed);
  return fail;
}

pthread_key_t g_exit_key;
bool g_exit_key_ok = false;

}  // namespace

size_t page_size() noexcept {
#if defined(__x86_64__)
  return 4096;  // x86-64 has no other base page size (and sysconf's code is a window of libc)
#else
  static size_t cached = 0;  // benign race: every thread computes the same value
  if (cached == 0) {
    long v = sysconf(_SC_PAGESIZE);
    cached = v > 0 ? static_cast<size_t>(v) : 4096;
  }
  return cached;
#endif
}

unsigned features() noexcept {
  return kLazyCommit | kTransparentHuge | kExplicitHuge | kThreadExitHook;
}

void* reserve(size_t size, size_t align) noexcept {
  if (inject_fault()) return nullptr;
  return map_aligned(size, align, 0);
}

void release(void* p, size_t size) noexcept { sys_munmap(p, size); }

bool commit(void*, size_t) noexcept { return !inject_fault(); }

void* reserve_inaccessible(size_t size, size_t align) noexcept {
  if (inject_fault()) return nullptr;
  return map_aligned(size, align, 0, PROT_NONE);
}

bool commit_charged(void* p, size_t size) noexcept {
  if (inject_fault()) return false;
  return sys_mprotect(p, size, PROT_READ | PROT_WRITE);
}

bool decommit(void* p, size_t size) noexcept {
  return sys_mmap(p, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED) == p;
}

bool remap_zero_readonly(void* p, size_t size) noexcept {
  return sys_mmap(p, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED) == p;
}

bool purge(void* p, size_t size) noexcept { return sys_madvise(p, size, MADV_DONTNEED); }

// MREMAP_DONTUNMAP keeps the source mapped, so no hole opens in our reservation for another mmap
// to take. Kernels before 5.7 refuse it (EINVAL): nothing moves, the caller copies.
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
namespace {
// move_pages and swap_pages go 2 MiB at a time: the engine splits its mappings only at 2 MiB
// boundaries (huge_hint's madvise, earlier moves), so each piece lies in one mapping, which a
// move needs before 6.17; and a piece either moves whole or not at all, so what they report is
// exact on any kernel (a single call across mappings, which 6.17 allows, could stop halfway
// without saying where).
constexpr size_t kMoveStep = size_t{2} << 20;
bool move_piece(void* from, size_t n, void* to) {
  return sys_mremap_to(from, n, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, to);
}
}  // namespace

size_t move_pages(void* from, size_t size, void* to) noexcept {
  size_t done = 0;
  while (done < size) {
    size_t n = size - done < kMoveStep ? size - done : kMoveStep;
    if (!move_piece(static_cast<char*>(from) + done, n, static_cast<char*>(to) + done)) break;
    done += n;
  }
  return done;
}

size_t swap_pages(void* a, void* b, size_t size, void* scratch) noexcept {
  size_t done = 0;
  while (done < size) {
    size_t n = size - done < kMoveStep ? size - done : kMoveStep;
    char* pa = static_cast<char*>(a) + done;
    char* pb = static_cast<char*>(b) + done;
    if (!move_piece(pb, n, scratch)) break;  // b's pages aside: nothing has changed where this fails
    if (inject_fault() || !move_piece(pa, n, pb)) {
      // a's pages stay where they are (a piece moves whole or not at all); b's go back.
      if (!move_piece(scratch, n, pb)) sys_madvise(scratch, n, MADV_DONTNEED);
      break;
    }
    if (inject_fault() || !move_piece(scratch, n, pa)) sys_madvise(scratch, n, MADV_DONTNEED);
    done += n;
  }
  return done;
}

bool protect(void* p, size_t size, bool accessible) noexcept {
  // A guard splits a mapping, which the kernel refuses past vm.max_map_count (ENOMEM): fault
  // injection refuses guards too. Taking one away joins mappings and cannot fail so.
  if (!accessible && inject_fault()) return false;
  return sys_mprotect(p, size, accessible ? (PROT_READ | PROT_WRITE) : PROT_NONE);
}

namespace {
// Set (on) or clear a range's request for transparent huge pages.
bool thp_advise(void* p, size_t size, bool on) noexcept {
#if defined(MADV_HUGEPAGE) && defined(MADV_NOHUGEPAGE)
  return sys_madvise(p, size, on ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#else
  (void)p, (void)size, (void)on;
  return false;
#endif
}
}  // namespace

bool huge_hint(void* p, size_t size) noexcept { return thp_advise(p, size, true); }
bool huge_unhint(void* p, size_t size) noexcept { return thp_advise(p, size, false); }

void* reserve_huge(size_t size, size_t align) noexcept {
  if (inject_fault()) return nullptr;
#ifdef MAP_HUGETLB
  return map_aligned(size, align, MAP_HUGETLB);
#else
  (void)size;
  (void)align;
  return nullptr;
#endif
}

bool install_thread_exit_hook(void (*fn)(void*)) noexcept {
  ErrnoGuard keep;
  if (g_exit_key_ok) return true;
  g_exit_key_ok = pthread_key_create(&g_exit_key, fn) == 0;
  return g_exit_key_ok;
}

void arm_thread_exit_hook(void* arg) noexcept {
  ErrnoGuard keep;
  if (g_exit_key_ok) pthread_setspecific(g_exit_key, arg);
}

uint64_t random_u64() noexcept {
  // A secret from the kernel once per process (getrandom, which does not block once the kernel's
  // pool is ready, as it is after boot; AT_RANDOM's 16 bytes where the call fails), then a
  // counter, the stack address and the seed mixed, so that two calls differ.
  static std::atomic<uint64_t> seed{0};
  static std::atomic<uint64_t> counter{0};
  uint64_t s = seed.load(std::memory_order_relaxed);
  if (s == 0) {
    uint64_t got = 0;
    if (raw_syscall(SYS_getrandom, reinterpret_cast<long>(&got), sizeof got, GRND_NONBLOCK) !=
        static_cast<long>(sizeof got)) {
      if (auto* r = reinterpret_cast<const unsigned char*>(getauxval(AT_RANDOM))) {
        for (int i = 0; i < 8; ++i) got = (got << 8) | r[i];
      }
    }
    s = got | 1;
    seed.store(s, std::memory_order_relaxed);  // benign race: a thread keeps the seed it read
  }
  uint64_t x = s ^ reinterpret_cast<uintptr_t>(&s) ^
               (counter.fetch_add(1, std::memory_order_relaxed) * 0x9e3779b97f4a7c15ull);
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 29;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 32;
  return x;
}

namespace {
// The clock, read through the kernel's vDSO directly rather than libc's clock_gettime: that
// wrapper sits in a stretch of libc's code that a small program runs nothing else of, and the
// kernel maps a fault's neighbours in 64 KiB windows (docs/performance.md, log, stop 44). The
// library's constructor finds the vDSO's function through the dynamic loader, whose lookup code
// every program maps already; until then, and where there is no vDSO (valgrind hides it; a
// kernel booted with vdso=0), the clock is a system call.
using ClockFn = int (*)(clockid_t, timespec*);
std::atomic<ClockFn> g_vdso_clock{nullptr};

#if defined(__x86_64__) && defined(NEBULA_RAW_SYSCALLS)
__attribute__((constructor)) void find_vdso_clock() noexcept {
  ErrnoGuard keep;
  void* vdso = dlopen("linux-vdso.so.1", RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD);
  if (vdso == nullptr) return;
  if (void* f = dlvsym(vdso, "__vdso_clock_gettime", "LINUX_2.6")) {
    g_vdso_clock.store(reinterpret_cast<ClockFn>(f), std::memory_order_release);
  }
}

}  // namespace

bool clock_read(int id, timespec* ts) noexcept {
  ClockFn f = g_vdso_clock.load(std::memory_order_acquire);
  if (__builtin_expect(f != nullptr && f(id, ts) == 0, 1)) return true;
  if (raw_syscall(SYS_clock_gettime, id, reinterpret_cast<long>(ts)) == 0) return true;
  *ts = timespec{};
  return false;
}
#else
}  // namespace

bool clock_read(int id, timespec* ts) noexcept {
  ErrnoGuard keep;
  if (clock_gettime(id, ts) == 0) return true;
  *ts = timespec{};
  return false;
}
#endif

bool clock_from_vdso() noexcept { return g_vdso_clock.load(std::memory_order_acquire) != nullptr; }

uint64_t clock_ms() noexcept {
  timespec ts;
  clock_read(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000u + static_cast<uint64_t>(ts.tv_nsec) / 1000000u;
}

uint64_t clock_ms_coarse() noexcept {
  timespec ts;
  clock_read(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000u + static_cast<uint64_t>(ts.tv_nsec) / 1000000u;
}

std::atomic<int> g_stderr_fd{2};

void keep_stderr() noexcept {
  ErrnoGuard keep;
  if (g_stderr_fd.load(std::memory_order_relaxed) != 2) return;
  int fd = fcntl(2, F_DUPFD_CLOEXEC, 100);
  if (fd >= 0) g_stderr_fd.store(fd, std::memory_order_relaxed);
}

void write_stderr(const char* s, size_t n) noexcept {
  ErrnoGuard keep;
  int fd = g_stderr_fd.load(std::memory_order_relaxed);
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;
    }
    s += w;
    n -= static_cast<size_t>(w);
  }
}

[[noreturn]] void abort_process() noexcept {
  // Restore the default action so a handler cannot swallow the abort, then raise.
  signal(SIGABRT, SIG_DFL);
  raise(SIGABRT);
  _exit(134);
}

bool on_fork(void (*prepare)(), void (*parent)(), void (*child)()) noexcept {
  ErrnoGuard keep;
  return pthread_atfork(prepare, parent, child) == 0;
}

char** environment() noexcept { return environ; }

long read_file(const char* path, char* buf, size_t cap) noexcept {
  ErrnoGuard keep;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t got = 0;
  while (got < cap) {
    ssize_t r = read(fd, buf + got, cap - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  close(fd);
  return static_cast<long>(got);
}

uint64_t physical_memory() noexcept {
  struct sysinfo info {};
  if (raw_syscall(SYS_sysinfo, reinterpret_cast<long>(&info)) != 0) return 0;
  return static_cast<uint64_t>(info.totalram) * (info.mem_unit != 0 ? info.mem_unit : 1);
}

uint64_t resident_bytes() noexcept {
  char buf[128];
  long n = read_file("/proc/self/statm", buf, sizeof buf - 1);
  if (n <= 0) return 0;
  buf[n] = 0;
  // second field: resident pages
  const char* s = buf;
  while (*s && *s != ' ') ++s;
  while (*s == ' ') ++s;
  uint64_t v = 0;
  while (*s >= '0' && *s <= '9') v = v * 10 + static_cast<uint64_t>(*s++ - '0');
  return v * page_size();
}

namespace {
uint64_t parse_hex(const char*& s) noexcept {
  uint64_t v = 0;
  for (;; ++s) {
    char c = *s;
    if (c >= '0' && c <= '9') v = v * 16 + static_cast<uint64_t>(c - '0');
    else if (c >= 'a' && c <= 'f') v = v * 16 + static_cast<uint64_t>(c - 'a' + 10);
    else return v;
  }
}
}  // namespace

AddressKind classify(uintptr_t addr) noexcept {
  ErrnoGuard keep;
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return AddressKind::kUnmapped;
  // Stream the file through a fixed buffer, line by line.
  char buf[4096];
  size_t have = 0;
  AddressKind result = AddressKind::kUnmapped;
  bool done = false;
  while (!done) {
    ssize_t r = read(fd, buf + have, sizeof buf - 1 - have);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0 && have == 0) break;
    if (r > 0) have += static_cast<size_t>(r);
    buf[have] = 0;
    char* line = buf;
    for (;;) {
      char* nl = line;
      while (nl < buf + have && *nl != '\n') ++nl;
      if (nl == buf + have && r > 0) break;  // partial line: read more
      *nl = 0;
      const char* s = line;
      uint64_t lo = parse_hex(s);
      if (*s == '-') ++s;
      uint64_t hi = parse_hex(s);
      if (addr >= lo && addr < hi) {
        // fields: perms offset dev inode path
        int field = 0;
        const char* path = s;
        while (*path && field < 5) {
          while (*path == ' ') ++path;
          if (field == 4) break;
          while (*path && *path != ' ') ++path;
          ++field;
        }
        while (*path == ' ') ++path;
        if (path[0] == '[' && path[1] == 's' && path[2] == 't') result = AddressKind::kStack;
        else if (path[0] == '[' && path[1] == 'h' && path[2] == 'e') result = AddressKind::kHeapBrk;
        else if (path[0] == '/') result = AddressKind::kFileImage;
        else result = AddressKind::kAnonymous;
        done = true;
        break;
      }
      line = nl + 1;
      if (line >= buf + have) { have = 0; break; }
    }
    if (!done && have != 0 && line != buf) {
      size_t rest = static_cast<size_t>(buf + have - line);
      for (size_t i = 0; i < rest; ++i) buf[i] = line[i];
      have = rest;
    }
    if (r <= 0) break;
  }
  close(fd);
  return result;
}

namespace {
// futex(word, op, val, no timeout). A wait interrupted by a signal, or on a word that changed
// already, returns at once (-EINTR, -EAGAIN): the lock checks its word again.
void futex_call(std::atomic<uint32_t>* word, int op, uint32_t val) noexcept {
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
  raw_syscall(SYS_futex, reinterpret_cast<long>(word), op, static_cast<long>(val), 0);
}
}  // namespace

// sched_yield cannot fail on Linux.
void yield() noexcept { raw_syscall(SYS_sched_yield); }

void wait_on(std::atomic<uint32_t>* word, uint32_t expected) noexcept {
  futex_call(word, FUTEX_WAIT_PRIVATE, expected);
}

void wake_one(std::atomic<uint32_t>* word) noexcept { futex_call(word, FUTEX_WAKE_PRIVATE, 1); }

void set_fault_injection(FaultMode mode, uint64_t n, uint64_t seed) noexcept {
  g_fault_mode.store(0, std::memory_order_relaxed);
  g_fault_n.store(n, std::memory_order_relaxed);
  g_fault_seed.store(seed, std::memory_order_relaxed);
  g_fault_requests.store(0, std::memory_order_relaxed);
  g_fault_mode.store(static_cast<int>(mode), std::memory_order_release);
}

uint64_t faults_injected() noexcept { return g_fault_injected.load(std::memory_order_relaxed); }

void* next_symbol(const char* name) noexcept {
  ErrnoGuard keep;
  return dlsym(RTLD_NEXT, name);
}

void* library_symbol(const char* library, const char* name) noexcept {
  ErrnoGuard keep;
  void* handle = dlopen(library, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  return handle == nullptr ? nullptr : dlsym(handle, name);
}

}  // namespace nebula::os
