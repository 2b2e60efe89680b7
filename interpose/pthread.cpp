// interpose/pthread.cpp: pthread_join and the condition-variable waits, wrapped so that a
// thread about to wait first returns its free memory (core: heap_before_wait,
// heap_before_cond_wait). glibc only: the real function is the next definition in the lookup
// order (libc.so.6 since glibc 2.34, libpthread before), found once with dlsym(RTLD_NEXT, ...),
// which gives the default version (pthread_cond_wait@@GLIBC_2.3.2, the condition variables of
// every program built since 2003). The wrappers are cancellation points as the real functions
// are: a cancellation unwinds through them (no noexcept).
#include <atomic>
#include <cerrno>
#include <pthread.h>
#include <time.h>

#include "interpose/export.hpp"
#include "platform/os.hpp"

using namespace nebula;

namespace {
using JoinFn = int (*)(pthread_t, void**);
using CondWaitFn = int (*)(pthread_cond_t*, pthread_mutex_t*);
using CondTimedWaitFn = int (*)(pthread_cond_t*, pthread_mutex_t*, const struct timespec*);
using CondClockWaitFn = int (*)(pthread_cond_t*, pthread_mutex_t*, clockid_t, const struct timespec*);
std::atomic<JoinFn> g_real_join{nullptr};
std::atomic<CondWaitFn> g_real_cond_wait{nullptr};
std::atomic<CondTimedWaitFn> g_real_cond_timedwait{nullptr};
std::atomic<CondClockWaitFn> g_real_cond_clockwait{nullptr};  // (each nullptr only until found)
}  // namespace

NEBULA_API int pthread_join(pthread_t thread, void** result) {
  JoinFn join = os::next_symbol_cached(g_real_join, "pthread_join");
  if (join == nullptr) return ENOSYS;
  heap_before_wait();
  return join(thread, result);
}

NEBULA_API int pthread_cond_wait(pthread_cond_t* cond, pthread_mutex_t* mutex) {
  CondWaitFn wait = os::next_symbol_cached(g_real_cond_wait, "pthread_cond_wait");
  if (wait == nullptr) return ENOSYS;
  heap_before_cond_wait();
  return wait(cond, mutex);
}

NEBULA_API int pthread_cond_timedwait(pthread_cond_t* cond, pthread_mutex_t* mutex, const struct timespec* abstime) {
  CondTimedWaitFn wait = os::next_symbol_cached(g_real_cond_timedwait, "pthread_cond_timedwait");
  if (wait == nullptr) return ENOSYS;
  heap_before_cond_wait();
  return wait(cond, mutex, abstime);
}

NEBULA_API int pthread_cond_clockwait(pthread_cond_t* cond, pthread_mutex_t* mutex, clockid_t clock,
                                      const struct timespec* abstime) {
  CondClockWaitFn wait = os::next_symbol_cached(g_real_cond_clockwait, "pthread_cond_clockwait");
  if (wait == nullptr) return ENOSYS;
  heap_before_cond_wait();
  return wait(cond, mutex, clock, abstime);
}
