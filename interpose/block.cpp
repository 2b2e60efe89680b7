// interpose/block.cpp: the calls in which a thread blocks until an event or a time, wrapped so
// that the free memory whose purge time has come goes back first (core: heap_before_block), and
// the semaphore waits, which get what the condition-variable waits get (heap_before_cond_wait).
// An event loop blocked in epoll_wait, or a worker in nanosleep between polls, calls no slow
// path of the allocator, where its maintenance runs. glibc only, as interpose/pthread.cpp.
//
// - A call with a zero timeout (a poll that does not block) is passed straight on.
// - A wait that outlasts the moment more freed memory falls due is split there (wait_split,
//   wait_split_ts, sleep_split), with the results of the one call; select is not split (it
//   writes the time left into its argument). sleep and usleep are made on the split nanosleep.
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
#include <semaphore.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include "interpose/export.hpp"
#include "platform/os.hpp"

using namespace nebula;

namespace {

// One slot per wrapped function, filled by resolve_all (the library's constructor) and, should a
// call come first (a constructor of a library loaded before ours), at that call.
template <class Fn>
struct Real {
  const char* name;
  std::atomic<Fn> fn{nullptr};
  Fn get() noexcept { return os::next_symbol_cached(fn, name); }
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

__attribute__((constructor)) void resolve_all() {
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

bool blocks(const timespec* t) noexcept { return t == nullptr || t->tv_sec != 0 || t->tv_nsec != 0; }
bool blocks(const timeval* t) noexcept { return t == nullptr || t->tv_sec != 0 || t->tv_usec != 0; }

// A wait of `timeout` ms (-1: no limit) that outlasts the moment more free memory is due to be
// purged becomes two or more: the real call until then, the purge, then the rest. An event or a
// signal ends it as the one call would (the first non-zero result is returned); zero is returned
// only once the whole timeout has passed. `call(ms)` is the real function with that timeout.
template <class Call>
int wait_split(int timeout, Call call) {
  for (;;) {
    const int pending = heap_before_block();
    if (pending < 0 || (timeout >= 0 && timeout <= pending)) return call(timeout);
    const uint64_t start = os::clock_ms();
    const int r = call(pending);
    if (r != 0) return r;
    if (timeout > 0) {
      const uint64_t spent = os::clock_ms() - start;
      if (spent >= static_cast<uint64_t>(timeout)) return 0;
      timeout -= static_cast<int>(spent);
    }
  }
}

// The same for a timeout given as a timespec (nullptr: no limit). A timeout the real function
// would refuse, or one of over a year, goes to it whole. `call(t)` is the real function.
template <class Call>
int wait_split_ts(const timespec* timeout, Call call) {
  constexpr int64_t kNs = 1000000000;
  if (timeout != nullptr && (timeout->tv_nsec < 0 || timeout->tv_nsec >= kNs || timeout->tv_sec < 0 ||
                             timeout->tv_sec > 366 * 86400))
    return call(timeout);
  int64_t left = timeout == nullptr ? -1 : timeout->tv_sec * kNs + timeout->tv_nsec;
  bool split = false;
  for (;;) {
    const int pending = heap_before_block();
    if (pending < 0 || (left >= 0 && left <= pending * int64_t{1000000})) {
      if (!split || left < 0) return call(left < 0 ? nullptr : timeout);
      const timespec rest = {left / kNs, left % kNs};
      return call(&rest);
    }
    const timespec part = {pending / 1000, (pending % 1000) * 1000000L};
    const uint64_t start = os::clock_ms();
    const int r = call(&part);
    if (r != 0) return r;
    split = true;
    if (left > 0) {
      const int64_t spent = static_cast<int64_t>(os::clock_ms() - start) * 1000000;
      if (spent >= left) return 0;
      left -= spent;
    }
  }
}

}  // namespace

NEBULA_API int epoll_wait(int epfd, epoll_event* events, int max, int timeout) {
  auto fn = r_epoll_wait.get();
  if (fn == nullptr) return missing();
  if (timeout == 0) return fn(epfd, events, max, timeout);
  return wait_split(timeout, [&](int ms) { return fn(epfd, events, max, ms); });
}

NEBULA_API int epoll_pwait(int epfd, epoll_event* events, int max, int timeout, const sigset_t* mask) {
  auto fn = r_epoll_pwait.get();
  if (fn == nullptr) return missing();
  if (timeout == 0) return fn(epfd, events, max, timeout, mask);
  return wait_split(timeout, [&](int ms) { return fn(epfd, events, max, ms, mask); });
}

NEBULA_API int epoll_pwait2(int epfd, epoll_event* events, int max, const timespec* timeout, const sigset_t* mask) {
  auto fn = r_epoll_pwait2.get();
  if (fn == nullptr) return missing();
  if (!blocks(timeout)) return fn(epfd, events, max, timeout, mask);
  return wait_split_ts(timeout, [&](const timespec* t) { return fn(epfd, events, max, t, mask); });
}

NEBULA_API int poll(pollfd* fds, nfds_t n, int timeout) {
  auto fn = r_poll.get();
  if (fn == nullptr) return missing();
  if (timeout == 0) return fn(fds, n, timeout);
  return wait_split(timeout, [&](int ms) { return fn(fds, n, ms); });
}

// _FORTIFY_SOURCE's poll and ppoll, where the compiler knows the array's size.
NEBULA_API int __poll_chk(pollfd* fds, nfds_t n, int timeout, size_t fds_len) {
  auto fn = r_poll_chk.get();
  if (fn == nullptr) return missing();
  if (timeout == 0) return fn(fds, n, timeout, fds_len);
  return wait_split(timeout, [&](int ms) { return fn(fds, n, ms, fds_len); });
}

NEBULA_API int ppoll(pollfd* fds, nfds_t n, const timespec* timeout, const sigset_t* mask) {
  auto fn = r_ppoll.get();
  if (fn == nullptr) return missing();
  if (!blocks(timeout)) return fn(fds, n, timeout, mask);
  return wait_split_ts(timeout, [&](const timespec* t) { return fn(fds, n, t, mask); });
}

NEBULA_API int __ppoll_chk(pollfd* fds, nfds_t n, const timespec* timeout, const sigset_t* mask, size_t fds_len) {
  auto fn = r_ppoll_chk.get();
  if (fn == nullptr) return missing();
  if (!blocks(timeout)) return fn(fds, n, timeout, mask, fds_len);
  return wait_split_ts(timeout, [&](const timespec* t) { return fn(fds, n, t, mask, fds_len); });
}

NEBULA_API int select(int n, fd_set* r, fd_set* w, fd_set* e, timeval* timeout) {
  auto fn = r_select.get();
  if (fn == nullptr) return missing();
  if (blocks(timeout)) heap_before_block();
  return fn(n, r, w, e, timeout);
}

NEBULA_API int pselect(int n, fd_set* r, fd_set* w, fd_set* e, const timespec* timeout, const sigset_t* mask) {
  auto fn = r_pselect.get();
  if (fn == nullptr) return missing();
  if (!blocks(timeout)) return fn(n, r, w, e, timeout, mask);
  // A wait that times out clears the sets: each part starts from the caller's.
  fd_set sets[3];
  fd_set* given[3] = {r, w, e};
  for (int i = 0; i < 3; ++i)
    if (given[i] != nullptr) sets[i] = *given[i];
  bool first = true;
  return wait_split_ts(timeout, [&](const timespec* t) {
    if (!first)
      for (int i = 0; i < 3; ++i)
        if (given[i] != nullptr) *given[i] = sets[i];
    first = false;
    return fn(n, r, w, e, t, mask);
  });
}

namespace {

// A relative sleep of *req (valid, not zero), split as wait_split does: a long sleep (sleep_for
// of a minute between batches) purges what falls due during it. `call(t, r)` sleeps t and returns
// 0 or the error (EINTR: *r holds what was left of t). Returns 0 or the error; interrupted, *rem
// (if given) holds the time left of the whole sleep.
template <class Call>
int sleep_split(const timespec* req, timespec* rem, Call call) {
  constexpr long kNs = 1000000000L;
  timespec left = *req;
  for (;;) {
    const int pending = heap_before_block();
    if (pending < 0 || left.tv_sec > INT32_MAX / 1000 || left.tv_sec * 1000 + left.tv_nsec / 1000000 <= pending)
      return call(&left, rem);
    const timespec part = {pending / 1000, (pending % 1000) * 1000000L};
    timespec part_rem = {0, 0};
    const int err = call(&part, &part_rem);
    left.tv_sec -= part.tv_sec;
    left.tv_nsec -= part.tv_nsec;
    if (left.tv_nsec < 0) {
      left.tv_nsec += kNs;
      left.tv_sec -= 1;
    }
    if (err != 0) {
      if (err == EINTR && rem != nullptr) {
        left.tv_sec += part_rem.tv_sec;
        left.tv_nsec += part_rem.tv_nsec;
        if (left.tv_nsec >= kNs) {
          left.tv_nsec -= kNs;
          left.tv_sec += 1;
        }
        *rem = left;
      }
      return err;
    }
  }
}

bool valid_sleep(const timespec* t) noexcept {
  return t != nullptr && blocks(t) && t->tv_sec >= 0 && t->tv_nsec >= 0 && t->tv_nsec < 1000000000L;
}

// nanosleep through the real function, reporting 0 or the error.
int real_nanosleep(const timespec* t, timespec* r) noexcept {
  auto fn = r_nanosleep.get();
  if (fn == nullptr) return ENOSYS;
  return fn(t, r) == 0 ? 0 : errno;
}

}  // namespace

NEBULA_API int nanosleep(const timespec* req, timespec* rem) {
  auto fn = r_nanosleep.get();
  if (fn == nullptr) return missing();
  if (!valid_sleep(req)) return fn(req, rem);
  const int err = sleep_split(req, rem, real_nanosleep);
  if (err == 0) return 0;
  errno = err;
  return -1;
}

// Relative sleeps as nanosleep's; a sleep until a time of the wall or monotonic clock wakes at the
// next purge time first, purges and sleeps on until the time asked. Others (CPU-time clocks)
// only purge first.
NEBULA_API int clock_nanosleep(clockid_t clock, int flags, const timespec* req, timespec* rem) {
  auto fn = r_clock_nanosleep.get();
  if (fn == nullptr) return ENOSYS;  // (returns the error, as the real one does)
  const bool wall = clock == CLOCK_MONOTONIC || clock == CLOCK_REALTIME || clock == CLOCK_BOOTTIME;
  if (req == nullptr || req->tv_nsec < 0 || req->tv_nsec >= 1000000000L) return fn(clock, flags, req, rem);
  if (!wall) {
    heap_before_block();
    return fn(clock, flags, req, rem);
  }
  if ((flags & TIMER_ABSTIME) == 0) {
    if (!valid_sleep(req)) return fn(clock, flags, req, rem);
    return sleep_split(req, rem, [&](const timespec* t, timespec* r) { return fn(clock, 0, t, r); });
  }
  for (;;) {
    const int pending = heap_before_block();
    timespec now;
    if (pending < 0 || clock_gettime(clock, &now) != 0) return fn(clock, flags, req, rem);
    timespec mid = {now.tv_sec + pending / 1000, now.tv_nsec + (pending % 1000) * 1000000L};
    if (mid.tv_nsec >= 1000000000L) {
      mid.tv_nsec -= 1000000000L;
      mid.tv_sec += 1;
    }
    if (mid.tv_sec > req->tv_sec || (mid.tv_sec == req->tv_sec && mid.tv_nsec >= req->tv_nsec))
      return fn(clock, flags, req, rem);
    const int err = fn(clock, flags, &mid, rem);
    if (err != 0) return err;
  }
}

// sleep and usleep as glibc makes them, on nanosleep (split): the whole seconds left when
// interrupted; -1 with EINTR.
NEBULA_API unsigned sleep(unsigned seconds) {
  auto fn = r_sleep.get();
  if (fn == nullptr) return seconds;
  if (seconds == 0 || r_nanosleep.get() == nullptr) return fn(seconds);
  const int saved = errno;
  const timespec req = {static_cast<time_t>(seconds), 0};
  timespec left = {0, 0};
  const int err = sleep_split(&req, &left, real_nanosleep);
  if (err == EINTR) return static_cast<unsigned>(left.tv_sec);
  if (err != 0) return seconds;
  errno = saved;
  return 0;
}

NEBULA_API int usleep(useconds_t usec) {
  auto fn = r_usleep.get();
  if (fn == nullptr) return missing();
  if (usec == 0 || r_nanosleep.get() == nullptr) return fn(usec);
  const timespec req = {static_cast<time_t>(usec / 1000000), static_cast<long>(usec % 1000000) * 1000L};
  const int err = sleep_split(&req, nullptr, real_nanosleep);
  if (err == 0) return 0;
  errno = err;
  return -1;
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
