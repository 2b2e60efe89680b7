/* nebula/mem.h: the C API of nebula-memory (stable ABI, prefix nebula_mem_ / nebula_).
 *
 * Programs that run under the drop-in library (LD_PRELOAD or -lnebulamem) allocate with the
 * ordinary malloc/free/new. This header adds what the standard API lacks: statistics, a check
 * that the allocator is active, and prefixed entry points (nebula_malloc, ...) that reach the
 * engine even when another malloc is the process's default (link libnebulacore.a).
 */
#ifndef NEBULA_MEM_H
#define NEBULA_MEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NEBULA_MEM_VERSION_MAJOR 0
#define NEBULA_MEM_VERSION_MINOR 1
#define NEBULA_MEM_VERSION_PATCH 0

/* Statistics of the whole process. Byte counts are exact at the moment of the call, except
 * live_bytes, which is summed page by page without stopping other threads. */
typedef struct nebula_mem_stats {
  uint64_t live_bytes;        /* bytes in blocks handed out and not freed (rounded to classes) */
  uint64_t committed_bytes;   /* bytes the allocator holds from the OS that may be resident */
  uint64_t committed_peak;    /* highest committed_bytes so far */
  uint64_t reserved_bytes;    /* address space reserved from the OS */
  uint64_t purged_bytes;      /* bytes given back to the OS (madvise) so far */
  uint64_t purge_calls;
  uint64_t segments;          /* live 4 MiB segments of small, medium and large pages */
  uint64_t huge_bytes;        /* bytes in live huge blocks (> 2 MiB) */
  uint64_t heaps;             /* thread heaps in use */
  uint64_t abandoned_segments;/* segments left by exited threads (or by threads entering
                                 pthread_join), so far */
  uint64_t reclaimed_segments;/* of those, taken over by other threads */
  uint64_t foreign_frees;     /* pointers passed on to glibc's free */
  uint64_t pages_made[4];     /* small, medium, large, huge: spans taken for pages (an empty
                                 page kept as a spare and taken again counts neither here nor
                                 in pages_freed) */
  uint64_t pages_freed[4];
  uint64_t slow_path_calls;   /* allocations that missed the fast path */
  uint64_t remote_frees;      /* frees of blocks owned by another thread */
  uint64_t budget;            /* the budget in bytes, 0 = none */
  uint64_t budget_peak;       /* highest committed_bytes while a budget was set */
  uint64_t pressure_level;    /* last level reported to the callbacks (nebula_mem_pressure_level) */
  uint64_t level_crossings[5];/* upward crossings per level; [4]: allocations that hit the limit */
  uint64_t budget_failures;   /* allocations that failed (NULL / bad_alloc) after purge and callbacks */
} nebula_mem_stats;

/* 1 when this allocator serves the process's malloc (the drop-in library is loaded). */
int nebula_mem_is_active(void);
/* "0.1.0" */
const char* nebula_mem_version(void);
/* Fill *out; returns 0. */
int nebula_mem_get_stats(nebula_mem_stats* out);
/* Print the summary that NEBULA_MEM_STATS=1 prints at exit, to stderr. */
void nebula_mem_print_stats(void);
/* Return free memory to the OS now (what malloc_trim does): the free spans of every thread's
   heap (those of a thread at work in the allocator at that moment are left for it) and the
   free chunks; 1 if some was released. */
int nebula_mem_collect(void);

/* ---- Budget and pressure ----------------------------------------------------------------
 * The budget bounds the bytes the allocator holds from the OS (committed memory, which is what
 * becomes resident). Set it with NEBULA_MEM_BUDGET (512M, 50%, cgroup) or at run time. As the
 * committed bytes cross NEBULA_MEM_PRESSURE_LOW/MEDIUM/HIGH percent of it, the registered
 * callbacks are called, once per crossing, up and down (down with a 2-point hysteresis). When an
 * allocation would exceed the budget the allocator purges its own caches, calls the callbacks
 * with NEBULA_MEM_PRESSURE_CRITICAL (they may free memory), retries, and only then fails:
 * malloc returns NULL with errno ENOMEM, operator new calls the new-handler and throws
 * std::bad_alloc (NEBULA_MEM_ON_OOM=abort aborts instead).
 * Callbacks run on the allocating or freeing thread, with no allocator lock held: they may
 * allocate and free. An allocation made inside a callback does not call callbacks again. */
typedef enum nebula_mem_pressure_level {
  NEBULA_MEM_PRESSURE_NONE = 0,
  NEBULA_MEM_PRESSURE_LOW = 1,
  NEBULA_MEM_PRESSURE_MEDIUM = 2,
  NEBULA_MEM_PRESSURE_HIGH = 3,
  NEBULA_MEM_PRESSURE_CRITICAL = 4
} nebula_mem_pressure_level;

typedef struct nebula_mem_pressure_event {
  int level;            /* the level entered */
  int previous;         /* the level left */
  uint64_t committed;   /* committed bytes now */
  uint64_t budget;      /* the budget in bytes (0 = none: critical events from OS refusals) */
  uint64_t requested;   /* critical: size of the allocation that cannot be served */
} nebula_mem_pressure_event;

typedef void (*nebula_mem_pressure_fn)(const nebula_mem_pressure_event* event, void* ctx);

/* Register a callback; returns a handle (never 0), or 0 if fn is NULL or 64 are registered. */
uint64_t nebula_mem_pressure_register(nebula_mem_pressure_fn fn, void* ctx);
/* Unregister; once it returns the callback is not running and will not run again (unless it
 * is the caller itself). Returns 0, or -1 for an unknown handle. */
int nebula_mem_pressure_unregister(uint64_t handle);
/* Set the budget in bytes (0: no budget); 0 on success, -1 for a value over 1 PiB. */
int nebula_mem_set_budget(uint64_t bytes);
/* The budget in bytes, 0 if none. */
uint64_t nebula_mem_get_budget(void);
/* The current pressure level (nebula_mem_pressure_level). */
int nebula_mem_pressure_level_now(void);

/* ---- Test hooks ---------------------------------------------------------------------------
 * Make the allocator's requests to the OS for memory (and, in secure mode, for guard pages)
 * fail on purpose, as if the OS refused: "nth:N" (the N-th request from now), "every:N", "random:N[:SEED]" (chance 1/N), or "off".
 * Also settable at start with NEBULA_MEM_FAULT_INJECT. Returns 0, or -1 for a bad spec. */
int nebula_mem_fault_inject(const char* spec);
/* Requests failed on purpose so far. */
uint64_t nebula_mem_faults_injected(void);

/* Prefixed entry points: the engine without interposition. */
void* nebula_malloc(size_t n);
void* nebula_calloc(size_t count, size_t size);
void* nebula_realloc(void* p, size_t n);
void* nebula_aligned_alloc(size_t align, size_t n);
int nebula_posix_memalign(void** out, size_t align, size_t n);
void nebula_free(void* p);
size_t nebula_usable_size(const void* p);

#ifdef __cplusplus
}
#endif

#endif /* NEBULA_MEM_H */
