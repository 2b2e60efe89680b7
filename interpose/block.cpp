// interpose/block.cpp: the calls in which a thread blocks until an event or a time, wrapped so
// that the free memory whose purge time has come goes back first (core: heap_before_block), and
// the semaphore waits, which get what the condition-variable waits get (heap_before_cond_wait).
// An event loop blocked in epoll_wait, or a worker in nanosleep between polls, calls no slow
// path of the allocator, where its maintenance runs. glibc only, as interpose/pthread.cpp.
//
// - A call with a zero timeout (a poll that does not block) is passed straight on.
// - A wait that outlasts the moment more freed memory falls due is split there (wait_split),
//   with the results of the one call (select's timeout left holding the time left, as Linux's
//   does). sleep and usleep are made on the split nanosleep.
// - NEBULA_MEM_WAIT_HOOKS=0 makes every wrapper a plain call (heap_before_block returns -1).
// - The real functions are looked up when the library is loaded, not at their first call:
//   poll, select, nanosleep and the like may be called from a signal handler, where dlsym, which
//   allocates, may not run. heap_before_block is safe there (see core/heap.cpp).
// - Each wrapper is a cancellation point as the real function is: nothing here is noexcept.
// - Calls that libc makes to these internally (sleep to nanosleep, usleep to nanosleep) never
//   reach the wrappers, so each entry point is wrapped on its own.
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include "core/config.hpp"
#include "interpose/export.hpp"
#include "platform/os.hpp"

using namespace nebula;

namespace {

// One slot per wrapped function, filled by resolve_all (the library's constructor) and, should a
// call come first (a constructor of a library loaded before ours), at that call. The slot holds
// an untyped pointer so that one resolve serves every wrapper: a copy per function type was 16
// functions that every process runs at start, 0.7 KiB of the code window (stop 47).
struct RealSlot {
  const char* name;
  std::atomic<void*> fn{nullptr};
  constexpr explicit RealSlot(const char* n) : name(n) {}
};

__attribute__((noinline, cold)) void* resolve(RealSlot& slot) noexcept {
  return os::next_symbol_cached(slot.fn, slot.name);
}

template <class Fn>
struct Real : RealSlot {
  using RealSlot::RealSlot;
  __attribute__((always_inline)) Fn get() noexcept {
    void* f = fn.load(std::memory_order_acquire);
    return reinterpret_cast<Fn>(f != nullptr ? f : resolve(*this));
  }
};

Real<int (*)(int, epoll_event*, int, int)> r_epoll_wait{"epoll_wait"};
Real<int (*)(int, epoll_event*, int, int, const sigset_t*)> r_epoll_pwait{"epoll_pwait"};
Real<int (*)(int, epoll_event*, int, const timespec*, const sigset_t*)> r_epoll_pwait2{"epoll_pwait2"};
Real<int (*)(pollfd*, nfds_t, int)> r_poll{"poll"};
Real<int (*)(pollfd*, nfds_t, int, size_t)> r_poll_chk{"__poll_chk"};
Real<int (*)(pollfd*, nfds_t, const timespec*, const sigset_t*)> r_ppoll{"ppoll"};
Real<int (*)(pollfd*, nfds_t, const timespec*, const sigset_t*, size_t)> r_ppoll_chk{"__ppoll_chk"};
Real<int (*)(int, fd_set*, fd_set*, fd_set*, timeval*)> r_select{"select"};
Real<int (*)(int, fd_set*, fd_set*, fd_set*, const timespec*, const sigset_t*)> r_pselect{"pselect"};
Real<int (*)(const timespec*, timespec*)> r_nanosleep{"nanosleep"};
Real<int (*)(clockid_t, int, const timespec*, timespec*)> r_clock_nanosleep{"clock_nanosleep"};
Real<unsigned (*)(unsigned)> r_sleep{"sleep"};
Real<int (*)(useconds_t)> r_usleep{"usleep"};
Real<int (*)(sem_t*)> r_sem_wait{"sem_wait"};
Real<int (*)(sem_t*, const timespec*)> r_sem_timedwait{"sem_timedwait"};
Real<int (*)(sem_t*, clockid_t, const timespec*)> r_sem_clockwait{"sem_clockwait"};

__attribute__((constructor)) NEBULA_SMALL void resolve_all() {  // (once, at load: compiled for size)
  r_epoll_wait.get();
  r_epoll_pwait.get();
  r_epoll_pwait2.get();
  r_poll.get();
  r_poll_chk.get();
  r_ppoll.get();
  r_ppoll_chk.get();
  r_select.get();
  r_pselect.get();
  r_nanosleep.get();
  r_clock_nanosleep.get();
  r_sleep.get();
  r_usleep.get();
  r_sem_wait.get();
  r_sem_timedwait.get();
  r_sem_clockwait.get();
}

// A missing function (an older libc without epoll_pwait2 or sem_clockwait) fails as it would
// there: -1 with ENOSYS.
int missing() noexcept {
  errno = ENOSYS;
  return -1;
}

constexpr int64_t kNs = 1000000000;
constexpr int64_t kMs = 1000000;
constexpr time_t kMaxSplitSec = 366 * 86400;  // longer timeouts go to the real call whole

int64_t mono_ns() noexcept {
  timespec t;
  os::clock_read(CLOCK_MONOTONIC, &t);
  return static_cast<int64_t>(t.tv_sec) * kNs + t.tv_nsec;
}

timespec to_ts(int64_t ns) noexcept { return {static_cast<time_t>(ns / kNs), static_cast<long>(ns % kNs)}; }

// A timespec timeout in ns (-1: none, no limit); -2 if the real function would refuse it or it
// is too long to split.
int64_t ts_ns(const timespec* t) noexcept {
  if (t == nullptr) return -1;
  if (t->tv_sec < 0 || t->tv_nsec < 0 || t->tv_nsec >= kNs || t->tv_sec > kMaxSplitSec) return -2;
  return static_cast<int64_t>(t->tv_sec) * kNs + t->tv_nsec;
}

// Milliseconds for a part given as a timespec (nullptr: -1), rounded up.
int ms_of(const timespec* t) noexcept {
  if (t == nullptr) return -1;
  const int64_t ms = (static_cast<int64_t>(t->tv_sec) * kNs + t->tv_nsec + kMs - 1) / kMs;
  return ms > INT32_MAX ? INT32_MAX : static_cast<int>(ms);
}

// A wait of `left` ns (-1: no limit) that outlasts the moment more freed memory falls due is
// split there: parts of the wait, each until the next purge time, with the purge between them.
// `whole()` is the one real call, made when nothing falls due before the wait would end;
// `part(t, mask)` waits t (nullptr: no limit) with that signal mask in force and returns as the
// real function does. An event or a signal ends the wait as the one call would (the first
// non-zero result is returned); 0 is returned only once the whole timeout has passed.
//
// Between the parts every signal is blocked, and each part sets the caller's mask (the one it
// passed, or the thread's) atomically for its wait, as ppoll does: a signal that comes while
// the wrapper purges stays pending and ends the next part with EINTR. Were it delivered there,
// its handler would run outside any wait and the wait would go on: a program in poll(-1) told to
// stop by a signal would not wake.
//
// `*left_out`: -1 if the wait was not split, else the time left of it (for nanosleep's rem).
template <class Part>
__attribute__((noinline)) int wait_parts(int64_t left, const sigset_t* mask, int64_t* left_out, int pending, Part part);

template <class Whole, class Part>
int wait_split(int64_t left, const sigset_t* mask, int64_t* left_out, Whole whole, Part part) {
  if (left_out != nullptr) *left_out = -1;
  const int pending = heap_before_block();
  if (pending < 0 || (left >= 0 && left <= pending * kMs)) return whole();
  return wait_parts(left, mask, left_out, pending, part);
}

// The split itself (out of line: the wrappers' common case is the one real call).
template <class Part>
int wait_parts(int64_t left, const sigset_t* mask, int64_t* left_out, int pending, Part part) {
  const bool limited = left >= 0;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  const sigset_t* during = mask != nullptr ? mask : &old;
  int r;
  for (;;) {
    const bool last = pending < 0 || (limited && left <= pending * kMs);
    const timespec t = to_ts(last ? (limited ? left : 0) : pending * kMs);
    const int64_t start = mono_ns();
    r = part(last && !limited ? nullptr : &t, during);
    if (limited) left -= mono_ns() - start;
    if (r != 0 || last) break;
    if (limited && left <= 0) break;  // (r == 0: the whole timeout has passed)
    pending = heap_before_block();
  }
  if (left_out != nullptr) *left_out = left < 0 ? 0 : left;
  const int saved = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  errno = saved;
  return r;
}

// A part of a split sleep: ppoll on nothing, which takes a signal mask (0, or -1 with EINTR).
int sleep_part(const timespec* t, const sigset_t* mask) noexcept {
  auto fn = r_ppoll.get();
  if (fn == nullptr) return missing();
  return fn(nullptr, 0, t, mask);
}

// The waits whose timeout is in ms (negative: no limit): `whole()` is the real call, `part(t,
// mask)` the one that takes a signal mask.
template <class Whole, class Part>
int ms_wait(int timeout, const sigset_t* mask, Whole whole, Part part) {
  if (timeout == 0) return whole();
  return wait_split(timeout < 0 ? -1 : timeout * kMs, mask, nullptr, whole, part);
}

// The waits whose timeout is a timespec (nullptr: no limit), made by `real(t, mask)` whole or in
// parts; one that does not block or cannot be split goes to it as given.
template <class Real>
int ts_wait(const timespec* timeout, const sigset_t* mask, Real real) {
  const int64_t left = ts_ns(timeout);
  if (left == 0 || left == -2) return real(timeout, mask);
  return wait_split(left, mask, nullptr, [=] { return real(timeout, mask); }, real);
}

}  // namespace

NEBULA_API int epoll_wait(int epfd, epoll_event* events, int max, int timeout) {
  auto fn = r_epoll_wait.get();
  auto pfn = r_epoll_pwait.get();
  if (fn == nullptr) return missing();
  if (pfn == nullptr) return fn(epfd, events, max, timeout);
  return ms_wait(
      timeout, nullptr, [=] { return fn(epfd, events, max, timeout); },
      [=](const timespec* t, const sigset_t* m) { return pfn(epfd, events, max, ms_of(t), m); });
}

NEBULA_API int epoll_pwait(int epfd, epoll_event* events, int max, int timeout, const sigset_t* mask) {
  auto fn = r_epoll_pwait.get();
  if (fn == nullptr) return missing();
  return ms_wait(
      timeout, mask, [=] { return fn(epfd, events, max, timeout, mask); },
      [=](const timespec* t, const sigset_t* m) { return fn(epfd, events, max, ms_of(t), m); });
}

NEBULA_API int epoll_pwait2(int epfd, epoll_event* events, int max, const timespec* timeout, const sigset_t* mask) {
  auto fn = r_epoll_pwait2.get();
  if (fn == nullptr) return missing();
  return ts_wait(timeout, mask, [=](const timespec* t, const sigset_t* m) { return fn(epfd, events, max, t, m); });
}

NEBULA_API int poll(pollfd* fds, nfds_t n, int timeout) {
  auto fn = r_poll.get();
  auto pfn = r_ppoll.get();
  if (fn == nullptr) return missing();
  if (pfn == nullptr) return fn(fds, n, timeout);
  return ms_wait(
      timeout, nullptr, [=] { return fn(fds, n, timeout); },
      [=](const timespec* t, const sigset_t* m) { return pfn(fds, n, t, m); });
}

// _FORTIFY_SOURCE's poll and ppoll, where the compiler knows the array's size.
NEBULA_API int __poll_chk(pollfd* fds, nfds_t n, int timeout, size_t fds_len) {
  auto fn = r_poll_chk.get();
  auto pfn = r_ppoll_chk.get();
  if (fn == nullptr) return missing();
  if (pfn == nullptr) return fn(fds, n, timeout, fds_len);
  return ms_wait(
      timeout, nullptr, [=] { return fn(fds, n, timeout, fds_len); },
      [=](const timespec* t, const sigset_t* m) { return pfn(fds, n, t, m, fds_len); });
}

NEBULA_API int ppoll(pollfd* fds, nfds_t n, const timespec* timeout, const sigset_t* mask) {
  auto fn = r_ppoll.get();
  if (fn == nullptr) return missing();
  return ts_wait(timeout, mask, [=](const timespec* t, const sigset_t* m) { return fn(fds, n, t, m); });
}

NEBULA_API int __ppoll_chk(pollfd* fds, nfds_t n, const timespec* timeout, const sigset_t* mask, size_t fds_len) {
  auto fn = r_ppoll_chk.get();
  if (fn == nullptr) return missing();
  return ts_wait(timeout, mask, [=](const timespec* t, const sigset_t* m) { return fn(fds, n, t, m, fds_len); });
}

namespace {
// Each part of a split select or pselect starts from the caller's sets: a part that times out
// clears them.
struct SavedSets {
  fd_set copy[3];
  fd_set* given[3];
  bool first = true;
  SavedSets(fd_set* r, fd_set* w, fd_set* e) noexcept : given{r, w, e} {
    for (int i = 0; i < 3; ++i)
      if (given[i] != nullptr) copy[i] = *given[i];
  }
  void before_part() noexcept {
    if (!first)
      for (int i = 0; i < 3; ++i)
        if (given[i] != nullptr) *given[i] = copy[i];
    first = false;
  }
};
}  // namespace

// Split through pselect; as Linux's select does, the timeout is left holding the time left.
NEBULA_API int select(int n, fd_set* r, fd_set* w, fd_set* e, timeval* timeout) {
  auto fn = r_select.get();
  auto pfn = r_pselect.get();
  if (fn == nullptr) return missing();
  timespec ts = {0, 0};
  const bool usec_ok = timeout == nullptr || (timeout->tv_usec >= 0 && timeout->tv_usec < 1000000);
  if (timeout != nullptr) ts = {timeout->tv_sec, usec_ok ? timeout->tv_usec * 1000L : 0};
  const int64_t total = ts_ns(timeout == nullptr ? nullptr : &ts);
  if (pfn == nullptr || !usec_ok || total == 0 || total == -2) return fn(n, r, w, e, timeout);
  SavedSets sets(r, w, e);
  int64_t left = -1;
  const int res = wait_split(
      total, nullptr, &left, [=] { return fn(n, r, w, e, timeout); },
      [=, &sets](const timespec* t, const sigset_t* m) {
        sets.before_part();
        return pfn(n, r, w, e, t, m);
      });
  if (left >= 0 && timeout != nullptr) {
    if (res == 0) left = 0;
    timeout->tv_sec = static_cast<time_t>(left / kNs);
    timeout->tv_usec = static_cast<suseconds_t>(left % kNs / 1000);
  }
  return res;
}

NEBULA_API int pselect(int n, fd_set* r, fd_set* w, fd_set* e, const timespec* timeout, const sigset_t* mask) {
  auto fn = r_pselect.get();
  if (fn == nullptr) return missing();
  SavedSets sets(r, w, e);
  return ts_wait(timeout, mask, [=, &sets](const timespec* t, const sigset_t* m) {
    sets.before_part();
    return fn(n, r, w, e, t, m);
  });
}

namespace {
bool valid_sleep(const timespec* t) noexcept {
  const int64_t ns = ts_ns(t);
  return ns > 0;
}
}  // namespace

// Split as the waits are: a long sleep (sleep_for of a minute between batches) purges what falls
// due during it. Interrupted, it reports the time left of the whole sleep.
NEBULA_API int nanosleep(const timespec* req, timespec* rem) {
  auto fn = r_nanosleep.get();
  if (fn == nullptr) return missing();
  if (!valid_sleep(req)) return fn(req, rem);
  int64_t left = -1;
  const int r = wait_split(ts_ns(req), nullptr, &left, [=] { return fn(req, rem); }, sleep_part);
  if (r != 0 && left >= 0 && errno == EINTR && rem != nullptr) *rem = to_ts(left);
  return r;
}

// Relative sleeps on a wall or monotonic clock as nanosleep's; a sleep until a time of such a
// clock the same, for the time from now to then (the parts are relative: a change of the wall
// clock during the sleep moves its end only in the part under way). CPU-time clocks only purge
// first.
NEBULA_API int clock_nanosleep(clockid_t clock, int flags, const timespec* req, timespec* rem) {
  auto fn = r_clock_nanosleep.get();
  if (fn == nullptr) return ENOSYS;  // (returns the error, as the real one does)
  const bool wall = clock == CLOCK_MONOTONIC || clock == CLOCK_REALTIME || clock == CLOCK_BOOTTIME;
  if (!wall || ts_ns(req) < 0) {
    if (wall) heap_before_block();
    return fn(clock, flags, req, rem);
  }
  int64_t total = ts_ns(req);
  if ((flags & TIMER_ABSTIME) != 0) {
    timespec now;
    if (!os::clock_read(clock, &now)) return fn(clock, flags, req, rem);
    total -= static_cast<int64_t>(now.tv_sec) * kNs + now.tv_nsec;
  }
  if (total <= 0) return fn(clock, flags, req, rem);
  int64_t left = -1;
  const int r = wait_split(total, nullptr, &left, [=] { return fn(clock, flags, req, rem); }, sleep_part);
  if (left < 0) return r;  // (the real call: its own result)
  if (r == 0) return 0;
  const int err = errno;
  if (err == EINTR && rem != nullptr && (flags & TIMER_ABSTIME) == 0) *rem = to_ts(left);
  return err;
}

// sleep and usleep as glibc makes them, split as nanosleep: the whole seconds left when
// interrupted; -1 with EINTR.
NEBULA_API unsigned sleep(unsigned seconds) {
  auto fn = r_sleep.get();
  if (fn == nullptr) return seconds;
  if (seconds == 0 || seconds > kMaxSplitSec) return fn(seconds);
  const int saved = errno;
  int64_t left = -1;
  const int r = wait_split(static_cast<int64_t>(seconds) * kNs, nullptr, &left, [=] { return static_cast<int>(fn(seconds)); },
                           sleep_part);
  if (left < 0) return static_cast<unsigned>(r);  // (the real sleep's result)
  if (r != 0) return static_cast<unsigned>(left / kNs);
  errno = saved;
  return 0;
}

NEBULA_API int usleep(useconds_t usec) {
  auto fn = r_usleep.get();
  if (fn == nullptr) return missing();
  if (usec == 0) return fn(usec);
  return wait_split(static_cast<int64_t>(usec) * 1000, nullptr, nullptr, [=] { return fn(usec); }, sleep_part);
}

// A pool whose workers wait on a semaphore for their next job: as a condition variable's.
NEBULA_API int sem_wait(sem_t* sem) {
  auto fn = r_sem_wait.get();
  if (fn == nullptr) return missing();
  heap_before_cond_wait();
  return fn(sem);
}

NEBULA_API int sem_timedwait(sem_t* sem, const timespec* abstime) {
  auto fn = r_sem_timedwait.get();
  if (fn == nullptr) return missing();
  heap_before_cond_wait();
  return fn(sem, abstime);
}

NEBULA_API int sem_clockwait(sem_t* sem, clockid_t clock, const timespec* abstime) {
  auto fn = r_sem_clockwait.get();
  if (fn == nullptr) return missing();
  heap_before_cond_wait();
  return fn(sem, clock, abstime);
}
