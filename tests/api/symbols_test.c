/* Interposition is complete: every allocation entry point a program or libstdc++ can reach
 * (the C API, the __libc_* aliases, every operator new/delete form) resolves, through the
 * global symbol scope, to a definition inside libnebulamem. A missing export would silently
 * let glibc (or libstdc++) allocate a block that our free later receives. */
#include "../check.h"

static const char *const names[] = {
    "malloc", "free", "calloc", "realloc", "reallocarray", "memalign", "posix_memalign",
    "aligned_alloc", "valloc", "pvalloc", "malloc_usable_size", "free_sized", "free_aligned_sized",
    "cfree", "__libc_malloc", "__libc_free", "__libc_calloc", "__libc_realloc", "__libc_memalign",
    "__libc_valloc", "__libc_pvalloc", "mallinfo", "mallinfo2", "malloc_trim", "mallopt",
    "malloc_stats", "malloc_info", "nebula_mem_is_active",
    /* operator new / delete, Itanium C++ ABI, size_t = unsigned long */
    "_Znwm",                                /* new(size_t) */
    "_Znam",                                /* new[](size_t) */
    "_ZnwmRKSt9nothrow_t",                  /* new(size_t, nothrow_t const&) */
    "_ZnamRKSt9nothrow_t",                  /* new[](size_t, nothrow_t const&) */
    "_ZnwmSt11align_val_t",                 /* new(size_t, align_val_t) */
    "_ZnamSt11align_val_t",                 /* new[](size_t, align_val_t) */
    "_ZnwmSt11align_val_tRKSt9nothrow_t",   /* new(size_t, align_val_t, nothrow_t const&) */
    "_ZnamSt11align_val_tRKSt9nothrow_t",   /* new[](size_t, align_val_t, nothrow_t const&) */
    "_ZdlPv",                               /* delete(void*) */
    "_ZdaPv",                               /* delete[](void*) */
    "_ZdlPvm",                              /* delete(void*, size_t) */
    "_ZdaPvm",                              /* delete[](void*, size_t) */
    "_ZdlPvRKSt9nothrow_t",                 /* delete(void*, nothrow_t const&) */
    "_ZdaPvRKSt9nothrow_t",                 /* delete[](void*, nothrow_t const&) */
    "_ZdlPvSt11align_val_t",                /* delete(void*, align_val_t) */
    "_ZdaPvSt11align_val_t",                /* delete[](void*, align_val_t) */
    "_ZdlPvmSt11align_val_t",               /* delete(void*, size_t, align_val_t) */
    "_ZdaPvmSt11align_val_t",               /* delete[](void*, size_t, align_val_t) */
    "_ZdlPvSt11align_val_tRKSt9nothrow_t",  /* delete(void*, align_val_t, nothrow_t const&) */
    "_ZdaPvSt11align_val_tRKSt9nothrow_t",  /* delete[](void*, align_val_t, nothrow_t const&) */
};

int main(void) {
  CHECK_PRELOAD();
  size_t n = sizeof names / sizeof names[0], found_in_lib = 0;
  for (size_t i = 0; i < n; i++) {
    void *s = dlsym(RTLD_DEFAULT, names[i]);
    if (NT_AGAINST_GLIBC) {
      /* baseline: nothing to interpose; just make sure no symbol claims to be ours */
      if (s) {
        Dl_info info;
        CHECK(dladdr(s, &info) != 0);
        CHECK(info.dli_fname == NULL || strstr(info.dli_fname, "nebulamem") == NULL);
      }
      continue;
    }
    CHECKF(s != NULL, "symbol %s is not exported by any loaded object", names[i]);
    Dl_info info;
    memset(&info, 0, sizeof info);
    CHECKF(dladdr(s, &info) != 0, "dladdr(%s) failed", names[i]);
    CHECKF(info.dli_fname != NULL && strstr(info.dli_fname, "libnebulamem") != NULL,
           "%s resolves to %s, not to libnebulamem", names[i],
           info.dli_fname ? info.dli_fname : "(unknown object)");
    found_in_lib++;
  }
  if (!NT_AGAINST_GLIBC) CHECK(found_in_lib == n);
  printf("symbols_test: ok (%zu entry points resolve to libnebulamem)\n", found_in_lib);
  return 0;
}
