# bench/real-programs.sh: perl building and thinning a hash of 600,000 entries (arrays of a
# number and a string of 0-49 bytes), sorting its keys, and splitting a 5 MB joined string.
use strict;
use warnings;
my %h;
my @gone;
for my $i (1 .. 600000) {
  my $k = "key" . ($i * 7919 % 1000003);
  $h{$k} = [$i, "v" x ($i % 50)];
  push @gone, $k if $i % 3 == 0;
}
delete $h{$_} for @gone;
my $sum = 0;
$sum += length($h{$_}[1]) for sort keys %h;
my @rows = map { join(",", $_, $_ * 2, "x" x ($_ % 30)) } 1 .. 300000;
my @back = split /;/, join(";", @rows);
print "$sum ", scalar(@back), "\n";
