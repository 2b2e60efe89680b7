// tools/options.cpp: `nebulamem options`: every option with its environment variable, type,
// default, the value in force in this environment, and its doc line. `--markdown` prints the
// README's table.
#include <cstdio>
#include <cstring>

#include "core/options.hpp"

using namespace nebula;

static const char* type_name(OptionType t) {
  switch (t) {
    case OptionType::kBool: return "bool";
    case OptionType::kInt: return "int";
    case OptionType::kBytes: return "bytes";
    case OptionType::kMillis: return "ms";
  }
  return "?";
}

static void upper(const char* s, char* out) {
  while (*s) {
    char c = *s++;
    *out++ = (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
  }
  *out = 0;
}

int main(int argc, char** argv) {
  bool md = argc > 1 && strcmp(argv[1], "--markdown") == 0;
  options_init();
  if (md) {
    printf("| variable | type | default | meaning |\n|---|---|---|---|\n");
  } else {
    printf("%-26s %-6s %-12s %-12s %s\n", "variable", "type", "default", "in force", "meaning");
  }
  for (const OptionDesc& o : kOptions) {
    char env[64];
    char up[48];
    upper(o.name, up);
    snprintf(env, sizeof env, "NEBULA_MEM_%s", up);
    long long def = static_cast<long long>(o.def);
    long long cur = static_cast<long long>(option(o.id));
    if (md) {
      printf("| `%s` | %s | %lld | %s |\n", env, type_name(o.type), def, o.doc);
    } else {
      const char* src = option_source(o.id) == OptionSource::kDefault ? "" : " *";
      char curs[32];
      snprintf(curs, sizeof curs, "%lld%s", cur, src);
      printf("%-26s %-6s %-12lld %-12s %s\n", env, type_name(o.type), def, curs, o.doc);
    }
  }
  if (!md) printf("\n* set in this environment or in the NEBULA_MEM_CONF file\n");
  return 0;
}
