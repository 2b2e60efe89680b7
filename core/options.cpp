// core/options.cpp: reading the option table from the environment and NEBULA_MEM_CONF.
#include "core/options.hpp"

#include <atomic>

#include "core/base.hpp"
#include "platform/os.hpp"

namespace nebula {
namespace {

constexpr unsigned kCount = static_cast<unsigned>(Option::kCount);
int64_t g_values[kCount];
// kPath values given in the environment or the file (a default is read from kOptions): the
// 3.8 KiB are written only when a path is set, so they sit with the sparse globals.
NEBULA_SPARSE_BSS_BEGIN
NEBULA_SPARSE_BSS char g_texts[kCount][256];
NEBULA_SPARSE_BSS_END
OptionSource g_sources[kCount];
std::atomic<int> g_state{0};  // 0 not read, 1 reading, 2 ready
Lock g_lock;

NEBULA_SMALL char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

NEBULA_SMALL bool name_equals(const char* name, const char* s, size_t len) {
  size_t i = 0;
  for (; i < len; ++i) {
    if (name[i] == 0) return false;
    char c = lower(s[i]);
    if (c == '-') c = '_';
    if (c != name[i]) return false;
  }
  return name[i] == 0;
}

NEBULA_SMALL int find_option(const char* s, size_t len) {
  for (unsigned i = 0; i < kCount; ++i)
    if (name_equals(kOptions[i].name, s, len)) return static_cast<int>(i);
  return -1;
}

void report(const char* what, const char* s, size_t len, const char* origin) {
  Message m;
  m.str("nebula-memory: ").str(what).str(" '");
  for (size_t i = 0; i < len && i < 120; ++i) m.ch(s[i]);
  m.str("' in ").str(origin).str("; ignored\n");
  m.emit();
}

void report_bad_value(unsigned i, const char* v, size_t len, const char* origin) {
  Message m;
  m.str("nebula-memory: bad value '");
  for (size_t k = 0; k < len && k < 120; ++k) m.ch(v[k]);
  m.str("' for option ").str(kOptions[i].name).str(" (").str(origin).str("); keeping the default");
  if (kOptions[i].type == OptionType::kPath) m.str(" ").str(kOptions[i].choices);
  else if (kOptions[i].type == OptionType::kChoice) m.str(" '").str(kOptions[i].choices).str("'");
  else m.ch(' ').num(static_cast<uint64_t>(kOptions[i].def));
  m.str("\n");
  m.emit();
}

NEBULA_SMALL void set_value(unsigned i, const char* v, size_t len, OptionSource src, const char* origin) {
  int64_t out;
  if (kOptions[i].type == OptionType::kPath) {
    while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t' || v[len - 1] == '\r')) --len;
    if (len == 0 || len >= sizeof g_texts[i]) {
      report_bad_value(i, v, len, origin);
      return;
    }
    for (size_t k = 0; k < len; ++k) g_texts[i][k] = v[k];
    g_texts[i][len] = 0;
    g_sources[i] = src;
    return;
  }
  if (!parse_option_value(kOptions[i].type, v, len, &out, kOptions[i].choices) ||
      out < kOptions[i].min || out > kOptions[i].max) {
    report_bad_value(i, v, len, origin);
    return;
  }
  g_values[i] = out;
  g_sources[i] = src;
}

// A kPath option's text: its default until a value is set.
const char* text_of(unsigned i) {
  return g_sources[i] == OptionSource::kDefault ? kOptions[i].choices : g_texts[i];
}

NEBULA_SMALL bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

NEBULA_SMALL void parse_conf_text(const char* buf, long n) {
  const char* s = buf;
  const char* end = buf + n;
  while (s < end) {
    const char* eol = s;
    while (eol < end && *eol != '\n') ++eol;
    const char* a = s;
    const char* b = eol;
    for (const char* h = a; h < b; ++h)
      if (*h == '#') { b = h; break; }
    while (a < b && is_space(*a)) ++a;
    while (b > a && is_space(b[-1])) --b;
    if (a < b) {
      const char* eq = a;
      while (eq < b && *eq != '=') ++eq;
      if (eq == b) {
        report("line without '=':", a, static_cast<size_t>(b - a), "NEBULA_MEM_CONF");
      } else {
        const char* ne = eq;
        while (ne > a && is_space(ne[-1])) --ne;
        const char* v = eq + 1;
        while (v < b && is_space(*v)) ++v;
        int i = find_option(a, static_cast<size_t>(ne - a));
        if (i < 0) report("unknown option", a, static_cast<size_t>(ne - a), "NEBULA_MEM_CONF");
        else set_value(static_cast<unsigned>(i), v, static_cast<size_t>(b - v), OptionSource::kFile,
                       "NEBULA_MEM_CONF");
      }
    }
    s = eol + 1;
  }
}

NEBULA_SMALL void read_conf_file(const char* path) {
  // The text goes in memory mapped for the call (not on a possibly small stack, and not in a
  // static buffer that would sit among the globals every process touches).
  constexpr size_t kCap = 16384;
  char* buf = static_cast<char*>(os::reserve(kCap, os::page_size()));
  long n = buf != nullptr ? os::read_file(path, buf, kCap - 1) : -1;
  if (n < 0) {
    Message m;
    m.str("nebula-memory: cannot read NEBULA_MEM_CONF file '").str(path).str("'; ignored\n");
    m.emit();
  } else {
    buf[n] = 0;
    parse_conf_text(buf, n);
  }
  if (buf != nullptr) os::release(buf, kCap);
}

constexpr char kPrefix[] = "NEBULA_MEM_";
constexpr size_t kPrefixLen = sizeof kPrefix - 1;

NEBULA_SMALL bool has_prefix(const char* e) {
  for (size_t i = 0; i < kPrefixLen; ++i)
    if (e[i] != kPrefix[i]) return false;
  return true;
}

NEBULA_SMALL void read_all() {
  for (unsigned i = 0; i < kCount; ++i) {
    g_values[i] = kOptions[i].def;
    g_sources[i] = OptionSource::kDefault;
  }
  char** env = os::environment();
  if (env == nullptr) return;
  for (char** e = env; *e != nullptr; ++e) {
    if (has_prefix(*e)) {
      const char* n = *e + kPrefixLen;
      if (n[0] == 'C' && n[1] == 'O' && n[2] == 'N' && n[3] == 'F' && n[4] == '=' && n[5] != 0)
        read_conf_file(n + 5);
    }
  }
  for (char** e = env; *e != nullptr; ++e) {
    if (!has_prefix(*e)) continue;
    const char* n = *e + kPrefixLen;
    const char* eq = n;
    while (*eq && *eq != '=') ++eq;
    if (*eq != '=') continue;
    size_t len = static_cast<size_t>(eq - n);
    if (len == 4 && n[0] == 'C' && n[1] == 'O' && n[2] == 'N' && n[3] == 'F') continue;
    int i = find_option(n, len);
    if (i < 0) {
      report("unknown option", *e, len + kPrefixLen, "the environment");
      continue;
    }
    const char* v = eq + 1;
    size_t vlen = 0;
    while (v[vlen]) ++vlen;
    set_value(static_cast<unsigned>(i), v, vlen, OptionSource::kEnvironment, "the environment");
  }
}

}  // namespace

NEBULA_SMALL bool parse_option_value(OptionType t, const char* s, size_t len, int64_t* out,
                                     const char* choices) noexcept {
  while (len > 0 && is_space(*s)) { ++s; --len; }
  while (len > 0 && is_space(s[len - 1])) --len;
  if (len == 0) return false;
  if (t == OptionType::kChoice) {
    if (choices == nullptr) return false;
    int64_t idx = 0;
    const char* w = choices;
    for (;;) {
      const char* e = w;
      while (*e && *e != '|') ++e;
      bool same = static_cast<size_t>(e - w) == len;
      for (size_t k = 0; same && k < len; ++k) same = lower(s[k]) == w[k];
      if (same) { *out = idx; return true; }
      if (*e == 0) return false;
      w = e + 1;
      ++idx;
    }
  }
  if (t == OptionType::kBudget) {
    if (name_equals("cgroup", s, len)) { *out = kBudgetCgroup; return true; }
    if (s[len - 1] == '%') {
      int64_t pct;
      if (!parse_option_value(OptionType::kInt, s, len - 1, &pct) || pct < 1 || pct > 100) return false;
      *out = -pct;
      return true;
    }
    t = OptionType::kBytes;
  }
  if (t == OptionType::kBool) {
    auto eq = [&](const char* w) { return name_equals(w, s, len); };
    if (eq("1") || eq("true") || eq("yes") || eq("on")) { *out = 1; return true; }
    if (eq("0") || eq("false") || eq("no") || eq("off")) { *out = 0; return true; }
    return false;
  }
  uint64_t v = 0;
  size_t i = 0;
  if (s[0] < '0' || s[0] > '9') return false;  // no sign: negative values are rejected
  for (; i < len && s[i] >= '0' && s[i] <= '9'; ++i) {
    uint64_t d = static_cast<uint64_t>(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return false;  // overflow
    v = v * 10 + d;
  }
  uint64_t mul = 1;
  if (i < len && t == OptionType::kBytes) {
    char c = lower(s[i]);
    if (c == 'k') mul = 1ull << 10;
    else if (c == 'm') mul = 1ull << 20;
    else if (c == 'g') mul = 1ull << 30;
    else if (c == 't') mul = 1ull << 40;
    else if (c == 'b') mul = 1;
    else return false;
    ++i;
    if (i < len && (lower(s[i]) == 'i')) ++i;
    if (i < len && (lower(s[i]) == 'b') && mul != 1) ++i;
  } else if (i + 2 == len && t == OptionType::kMillis && lower(s[i]) == 'm' && lower(s[i + 1]) == 's') {
    i += 2;
  } else if (i + 1 == len && t == OptionType::kMillis && lower(s[i]) == 's') {
    mul = 1000;
    ++i;
  }
  if (i != len) return false;
  if (mul != 1 && v > UINT64_MAX / mul) return false;
  v *= mul;
  if (v > static_cast<uint64_t>(INT64_MAX)) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

NEBULA_SMALL void options_init() noexcept {
  if (g_state.load(std::memory_order_acquire) == 2) return;
  LockGuard guard(g_lock);
  if (g_state.load(std::memory_order_relaxed) == 2) return;
  read_all();
  g_state.store(2, std::memory_order_release);
}

int64_t option(Option o) noexcept {
  if (NEBULA_UNLIKELY(g_state.load(std::memory_order_acquire) != 2)) options_init();
  return g_values[static_cast<unsigned>(o)];
}

const char* option_text(Option o) noexcept {
  options_init();
  return text_of(static_cast<unsigned>(o));
}

bool option_set(Option o, int64_t v) noexcept {
  options_init();
  const OptionDesc& d = kOptions[static_cast<unsigned>(o)];
  if (v < d.min || v > d.max) return false;
  g_values[static_cast<unsigned>(o)] = v;
  g_sources[static_cast<unsigned>(o)] = OptionSource::kEnvironment;
  return true;
}

OptionSource option_source(Option o) noexcept {
  options_init();
  return g_sources[static_cast<unsigned>(o)];
}

void option_format(Option o, int64_t v, Message& m) noexcept {
  unsigned i = static_cast<unsigned>(o);
  switch (kOptions[i].type) {
    case OptionType::kBool: m.str(v ? "on" : "off"); break;
    case OptionType::kBytes: m.bytes(static_cast<uint64_t>(v)); break;
    case OptionType::kMillis: m.num(static_cast<uint64_t>(v)).str(" ms"); break;
    case OptionType::kInt: m.num(static_cast<uint64_t>(v)); break;
    case OptionType::kBudget:
      if (v == 0) m.str("none");
      else if (v == kBudgetCgroup) m.str("cgroup");
      else if (v < 0) m.num(static_cast<uint64_t>(-v)).str("% of physical memory");
      else m.bytes(static_cast<uint64_t>(v));
      break;
    case OptionType::kChoice: {
      const char* w = kOptions[i].choices;
      for (int64_t k = 0; k < v && *w; ++w)
        if (*w == '|') ++k;
      while (*w && *w != '|') m.ch(*w++);
      break;
    }
    case OptionType::kPath: m.str(text_of(i)); break;
  }
}

void options_print() noexcept {
  options_init();
  for (unsigned i = 0; i < kCount; ++i) {
    Message m;
    m.str("nebula-memory: option ").str(kOptions[i].name).str(" = ");
    int64_t v = g_values[i];
    option_format(kOptions[i].id, v, m);
    const char* src = g_sources[i] == OptionSource::kDefault ? "default"
                      : g_sources[i] == OptionSource::kFile  ? "NEBULA_MEM_CONF"
                                                             : "environment";
    m.str(" (").str(src).str(")\n");
    m.emit();
  }
}

}  // namespace nebula
