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
  kCount
};

enum class OptionType : uint8_t { kBool, kInt, kBytes, kMillis };

struct OptionDesc {
  Option id;
  const char* name;      // lower case; env var is NEBULA_MEM_ + upper case
  OptionType type;
  int64_t def;
  int64_t min;
  int64_t max;
  const char* doc;
};

inline constexpr OptionDesc kOptions[] = {
  {Option::kStats, "stats", OptionType::kBool, 0, 0, 1,
   "print a summary of the allocator's activity to stderr at exit"},
  {Option::kVerbose, "verbose", OptionType::kBool, 0, 0, 1,
   "print the options in force to stderr when the allocator starts"},
  {Option::kPurgeDelay, "purge_delay", OptionType::kMillis, 250, 0, 3600000,
   "milliseconds a free span stays resident before its memory is returned to the OS"},
  {Option::kRetain, "retain", OptionType::kBytes, 32ll << 20, 0, 1ll << 40,
   "bytes of free segments kept resident for reuse; beyond this they are purged at once"},
  {Option::kHugePages, "huge_pages", OptionType::kBool, 1, 0, 1,
   "ask for transparent huge pages (madvise) on huge blocks of 2 MiB and more"},
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
inline bool option_bool(Option o) noexcept { return option(o) != 0; }
void options_init() noexcept;
// Where each value came from, for `nebulamem options` and verbose output.
enum class OptionSource : uint8_t { kDefault, kEnvironment, kFile };
OptionSource option_source(Option o) noexcept;
void options_print() noexcept;
// Parse a value of a type; false on a bad value. Exposed for unit tests.
bool parse_option_value(OptionType t, const char* s, size_t len, int64_t* out) noexcept;

}  // namespace nebula
