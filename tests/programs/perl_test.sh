#!/bin/bash
# perl under the library: hashes, strings, regexes, sorting (perl_workload.pl); output identical
# to the glibc run.
source "$(dirname "$0")/common.sh"
need perl
export PERL_HASH_SEED=0 PERL_PERTURB_KEYS=0

assert_active perl -e 'my %h = map { $_ => 1 } 1 .. 1000; print scalar(keys %h), "\n"'
plain perl "$here/perl_workload.pl" >"$work/plain.out"
preloaded perl "$here/perl_workload.pl" >"$work/pre.out"
same_output "perl workload" "$work/plain.out" "$work/pre.out"
grep -q '^digest: [0-9a-f]\{32\}$' "$work/pre.out" || fail "no digest line in the perl output"
ok "perl $(perl -e 'print $^V'): $(tail -1 "$work/pre.out")"
