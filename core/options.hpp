// core/options.hpp: the one table of run-time options.
//
// Each option has a name, an environment variable NEBULA_MEM_<NAME>, a type, a default, a unit
// and one doc line. They are read once, lazily, without allocating: from the environment, and
// from the file named by NEBULA_MEM_CONF (`name = value` lines, `#` comments; the environment
// wins). Unknown names and bad values are reported once on stderr, naming the option and the
// value, and the default stays. `nebulamem options` prints this table.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nebula {

enum class Option : unsigned {
  kStats,
  kVerbose,
  kPurgeDelay,
  kRetain,
  kHugePages,
  kBudget,
  kPressureLow,
  kPressureMedium,
  kPressureHigh,
  kOnOom,
  kCgroupRoot,
  kFaultInject,
  kSecure,
  kZeroOnFree,
  kWaitHooks,
  kMediumRuns,
  kCommit,
  kCount
};

// kBudget: bytes with K/M/G/T suffixes, a percentage of physical memory ("50%"), or "cgroup";
//          stored as bytes, as -(percent) for a percentage, or kBudgetCgroup.
// kChoice: one of the words in OptionDesc::choices ("a|b"), stored as its index.
// kPath:   a file system path, kept as text (option_text()).
enum class OptionType : uint8_t { kBool, kInt, kBytes, kMillis, kBudget, kChoice, kPath };
inline constexpr int64_t kBudgetCgroup = INT64_MIN;

struct OptionDesc {
  Option id;
  const char* name;      // lower case; env var is NEBULA_MEM_ + upper case
  OptionType type;
  int64_t def;
  int64_t min;
  int64_t max;
  const char* doc;
  const char* choices = nullptr;  // kChoice: "word0|word1|..."; kPath: the default text
};

inline constexpr OptionDesc kOptions[] = {
  {Option::kStats, "stats", OptionType::kBool, 0, 0, 1,
   "print a summary of the allocator's activity to stderr at exit"},
  {Option::kVerbose, "verbose", OptionType::kBool, 0, 0, 1,
   "print the options in force to stderr when the allocator starts"},
  {Option::kPurgeDelay, "purge_delay", OptionType::kMillis, 250, 0, 3600000,
   "milliseconds a free span stays resident before its memory is returned to the OS"},
  {Option::kRetain, "retain", OptionType::kBytes, 32ll << 20, 0, 1ll << 40,
   "free memory kept resident beyond the recent peak of use (until purge_delay); beyond, purged at once"},
  {Option::kHugePages, "huge_pages", OptionType::kBool, 1, 0, 1,
   "ask for transparent huge pages (madvise) on huge blocks of 2 MiB and more; the rest of our memory "
   "refuses them (MADV_NOHUGEPAGE) on any kernel mode, and with this off all of it does"},
  {Option::kBudget, "budget", OptionType::kBudget, 0, INT64_MIN, 1ll << 50,
   "limit on the bytes the allocator holds from the OS: 512M, 50% (of physical memory), cgroup; 0 = none"},
  {Option::kPressureLow, "pressure_low", OptionType::kInt, 70, 1, 100,
   "percent of the budget at which pressure callbacks are told level low"},
  {Option::kPressureMedium, "pressure_medium", OptionType::kInt, 85, 1, 100,
   "percent of the budget at which pressure callbacks are told level medium"},
  {Option::kPressureHigh, "pressure_high", OptionType::kInt, 95, 1, 100,
   "percent of the budget at which pressure callbacks are told level high"},
  {Option::kOnOom, "on_oom", OptionType::kChoice, 0, 0, 1,
   "at the budget or when the OS refuses: null (malloc returns NULL, new throws) or abort", "null|abort"},
  {Option::kCgroupRoot, "cgroup_root", OptionType::kPath, 0, 0, 0,
   "where the cgroup file system is mounted, for budget=cgroup", "/sys/fs/cgroup"},
  {Option::kFaultInject, "fault_inject", OptionType::kPath, 0, 0, 0,
   "tests: make requests to the OS fail: off, nth:N, every:N, random:N[:SEED]", "off"},
#if defined(NEBULA_SECURE_DEFAULT)
  {Option::kSecure, "secure", OptionType::kBool, 1, 0, 1,
#else
  {Option::kSecure, "secure", OptionType::kBool, 0, 0, 1,
#endif
   "secure mode: encoded free lists, random order in pages, guard pages, every double free caught"},
  {Option::kZeroOnFree, "zero_on_free", OptionType::kBool, 0, 0, 1,
   "in secure mode, overwrite every freed block with zeros"},
  {Option::kWaitHooks, "wait_hooks", OptionType::kBool, 1, 0, 1,
   "before a thread blocks (pthread_join, condition variables, semaphores, epoll_wait, poll, "
   "select, sleeps), give back its free memory; off: those calls go straight to libc"},
  {Option::kMediumRuns, "medium_runs", OptionType::kBool, 0, 0, 1,
   "serve requests of 4.5-32 KiB from pages shared by every size in that range: less memory where "
   "many of those sizes are live, more time per call (not in secure mode); off: a page queue per "
   "size class"},
  {Option::kCommit, "commit", OptionType::kChoice, 0, 0, 1,
   "auto: arenas mapped inaccessible, 4 MiB made accessible (charged) at a time, where the kernel "
   "charges all writable memory (vm.overcommit_memory = 2); strict: so on any kernel", "auto|strict"},
};
static_assert(sizeof(kOptions) / sizeof(kOptions[0]) == static_cast<size_t>(Option::kCount),
              "options: one table row per Option");
consteval bool options_in_enum_order() {
  for (unsigned i = 0; i < static_cast<unsigned>(Option::kCount); ++i)
    if (static_cast<unsigned>(kOptions[i].id) != i) return false;
  return true;
}
static_assert(options_in_enum_order(), "options: table rows must follow the Option enum order");

// The value in force (reads the environment on first use).
int64_t option(Option o) noexcept;
const char* option_text(Option o) noexcept;  // kPath options
inline bool option_bool(Option o) noexcept { return option(o) != 0; }
void options_init() noexcept;
// Where each value came from, for `nebulamem options` and verbose output.
enum class OptionSource : uint8_t { kDefault, kEnvironment, kFile };
OptionSource option_source(Option o) noexcept;
void options_print() noexcept;
class Message;
// Append value v of option o to m as a user reads it ("64.0 MiB", "on", "abort", "50% ...").
void option_format(Option o, int64_t v, Message& m) noexcept;
// Parse a value of a type; false on a bad value. Exposed for unit tests.
bool parse_option_value(OptionType t, const char* s, size_t len, int64_t* out,
                        const char* choices = nullptr) noexcept;
// Set an option at run time (the C API's budget setter); false on a bad value.
bool option_set(Option o, int64_t v) noexcept;

}  // namespace nebula
