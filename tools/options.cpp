// tools/options.cpp: `nebulamem options`: every option with its environment variable, type,
// default, the value in force in this environment, and its doc line. `--markdown` prints the
// README's table.
#include <cstdio>
#include <cstring>
#include <string>

#include "core/base.hpp"
#include "core/options.hpp"

using namespace nebula;

static const char* type_name(OptionType t) {
  switch (t) {
    case OptionType::kBool: return "bool";
    case OptionType::kInt: return "int";
    case OptionType::kBytes: return "bytes";
    case OptionType::kMillis: return "ms";
    case OptionType::kBudget: return "budget";
    case OptionType::kChoice: return "choice";
    case OptionType::kPath: return "path";
  }
  return "?";
}

static std::string shown(const OptionDesc& o, int64_t v, bool is_default) {
  if (o.type == OptionType::kPath) return is_default ? o.choices : option_text(o.id);
  Message m;
  option_format(o.id, v, m);
  return std::string(m.data(), m.size());
}

int main(int argc, char** argv) {
  bool md = argc > 1 && strcmp(argv[1], "--markdown") == 0;
  options_init();
  if (md) printf("| variable | type | default | meaning |\n|---|---|---|---|\n");
  else printf("%-28s %-7s %-16s %-18s %s\n", "variable", "type", "default", "in force", "meaning");
  for (const OptionDesc& o : kOptions) {
    std::string env = "NEBULA_MEM_";
    for (const char* c = o.name; *c; ++c) env += static_cast<char>(*c >= 'a' && *c <= 'z' ? *c - 'a' + 'A' : *c);
    std::string def = shown(o, o.def, true);
    if (o.type == OptionType::kChoice) def += std::string(" (") + o.choices + ")";
    if (md) {
      printf("| `%s` | %s | %s | %s |\n", env.c_str(), type_name(o.type), def.c_str(), o.doc);
    } else {
      std::string cur = shown(o, option(o.id), false);
      if (option_source(o.id) != OptionSource::kDefault) cur += " *";
      printf("%-28s %-7s %-16s %-18s %s\n", env.c_str(), type_name(o.type), def.c_str(), cur.c_str(), o.doc);
    }
  }
  if (!md) printf("\n* set in this environment or in the NEBULA_MEM_CONF file\n");
  return 0;
}
