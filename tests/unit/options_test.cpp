// tests/unit/options_test.cpp: parsing of option values (core/options.hpp).
#include <cstring>

#include "core/options.hpp"
#include "support.hpp"

using namespace nebula;

namespace {

bool parse(OptionType t, const char* s, int64_t* out) { return parse_option_value(t, s, strlen(s), out); }

int64_t ok(OptionType t, const char* s) {
  int64_t v = -12345;
  bool r = parse(t, s, &v);
  CHECK_MESSAGE(r, "rejected: '" << s << "'");
  return v;
}

bool rejects(OptionType t, const char* s) {
  int64_t v = -12345;
  bool r = parse(t, s, &v);
  return !r && v == -12345;  // a rejected value leaves the output alone
}

}  // namespace

TEST_CASE("options: byte sizes with suffixes") {
  constexpr auto B = OptionType::kBytes;
  CHECK(ok(B, "0") == 0);
  CHECK(ok(B, "123") == 123);
  CHECK(ok(B, "12b") == 12);
  CHECK(ok(B, "12B") == 12);
  CHECK(ok(B, "4K") == 4096);
  CHECK(ok(B, "4k") == 4096);
  CHECK(ok(B, "4KB") == 4096);
  CHECK(ok(B, "4KiB") == 4096);
  CHECK(ok(B, "4kib") == 4096);
  CHECK(ok(B, "32M") == 32ll << 20);
  CHECK(ok(B, "32MiB") == 32ll << 20);
  CHECK(ok(B, "2G") == 2ll << 30);
  CHECK(ok(B, "2GB") == 2ll << 30);
  CHECK(ok(B, "1T") == 1ll << 40);
  CHECK(ok(B, "  8M ") == 8ll << 20);  // surrounding spaces are ignored
  CHECK(ok(B, "8388607T") == 8388607ll << 40);  // just below INT64_MAX
  CHECK(ok(B, "9223372036854775807") == INT64_MAX);
  // Partial parses use the length given, not the terminator.
  int64_t v = 0;
  CHECK(parse_option_value(B, "64Kxyz", 3, &v));
  CHECK(v == 64 * 1024);
}

TEST_CASE("options: bad byte sizes are rejected") {
  constexpr auto B = OptionType::kBytes;
  CHECK(rejects(B, ""));
  CHECK(rejects(B, "   "));
  CHECK(rejects(B, "-1"));
  CHECK(rejects(B, "-4K"));
  CHECK(rejects(B, "+4"));
  CHECK(rejects(B, "abc"));
  CHECK(rejects(B, "K"));
  CHECK(rejects(B, "4X"));
  CHECK(rejects(B, "4K5"));
  CHECK(rejects(B, "4 K"));
  CHECK(rejects(B, "4KiBx"));
  CHECK(rejects(B, "4bb"));
  CHECK(rejects(B, "4ib"));
  CHECK(rejects(B, "1.5M"));
  CHECK(rejects(B, "0x10"));
  CHECK(rejects(B, "9223372036854775808"));    // INT64_MAX + 1
  CHECK(rejects(B, "18446744073709551615"));   // UINT64_MAX
  CHECK(rejects(B, "18446744073709551616"));   // overflows 64 bits
  CHECK(rejects(B, "99999999999999999999999"));
  CHECK(rejects(B, "8388608T"));               // 2^63
  CHECK(rejects(B, "17179869184G"));           // 2^64: the multiplication overflows
}

TEST_CASE("options: booleans") {
  constexpr auto T = OptionType::kBool;
  for (const char* s : {"1", "true", "TRUE", "True", "yes", "YES", "on", "On", " on "}) {
    CAPTURE(s);
    CHECK(ok(T, s) == 1);
  }
  for (const char* s : {"0", "false", "FALSE", "no", "No", "off", "OFF"}) {
    CAPTURE(s);
    CHECK(ok(T, s) == 0);
  }
  for (const char* s : {"", "2", "-1", "maybe", "tru", "truee", "y", "n", "onn", "10"}) {
    CAPTURE(s);
    CHECK(rejects(T, s));
  }
}

TEST_CASE("options: milliseconds and plain integers") {
  constexpr auto M = OptionType::kMillis;
  CHECK(ok(M, "250") == 250);
  CHECK(ok(M, "250ms") == 250);
  CHECK(ok(M, "250MS") == 250);
  CHECK(ok(M, "2s") == 2000);
  CHECK(ok(M, "0") == 0);
  CHECK(rejects(M, "-5"));
  CHECK(rejects(M, "5m"));
  CHECK(rejects(M, "5 s"));
  CHECK(rejects(M, "5sec"));
  CHECK(rejects(M, "5K"));
  CHECK(rejects(M, "ms"));
  constexpr auto I = OptionType::kInt;
  CHECK(ok(I, "42") == 42);
  CHECK(rejects(I, "42K"));
  CHECK(rejects(I, "-42"));
  CHECK(rejects(I, "4 2"));
}

TEST_CASE("options: the table's defaults are within their bounds") {
  for (const OptionDesc& d : kOptions) {
    CAPTURE(d.name);
    CHECK(d.def >= d.min);
    CHECK(d.def <= d.max);
    CHECK(d.doc != nullptr);
    CHECK(option(d.id) >= d.min);
    CHECK(option(d.id) <= d.max);
  }
}
