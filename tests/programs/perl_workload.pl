# Deterministic perl workload for perl_test.sh: hashes, strings, regexes, sorting, a digest.
use strict;
use warnings;
use Digest::MD5 qw(md5_hex);

my $x = 987654321;
sub rnd { $x = ($x * 1103515245 + 12345) % 2147483648; return $x; }

my $ctx = Digest::MD5->new;
my %h;
for my $i (1 .. 200000) {
  my $k = sprintf("key%06d-%s", rnd() % 150000, join('', map { chr(97 + rnd() % 26) } 1 .. (1 + $i % 8)));
  $h{$k} .= $i % 10;
}
my @keys = sort keys %h;
$ctx->add(scalar(@keys), $keys[0], $keys[-1], $h{$keys[0]});
delete $h{$_} for grep { /[aeiou]{2}/ } @keys;
$ctx->add(scalar(keys %h));

my @words = map { join('', map { chr(97 + rnd() % 26) } 1 .. (1 + rnd() % 12)) } 1 .. 60000;
my $text = join(' ', @words);
(my $t2 = $text) =~ s/([aeiou])/uc($1) x 2/ge;
my @matches = ($text =~ /\b(\w*q\w*)\b/g);
$ctx->add(length($text), length($t2), scalar(@matches), $matches[0] // '');
my @sorted = sort { length($a) <=> length($b) or $a cmp $b } @words;
$ctx->add(@sorted[0 .. 99], $sorted[-1]);
my %count;
$count{substr($_, 0, 2)}++ for @words;
$ctx->add(join(',', map { "$_=$count{$_}" } sort keys %count));

my $big = '';
$big .= sprintf("%d:%s;", $_, $words[$_ % @words]) for 1 .. 100000;
$ctx->add(md5_hex($big), length($big));
my @split = split /;/, $big;
my @rev = reverse map { scalar reverse $_ } @split;
$ctx->add(scalar(@rev), $rev[0], $rev[-1]);
my @nums = sort { $a <=> $b } map { rnd() } 1 .. 100000;
$ctx->add($nums[0], $nums[50000], $nums[-1]);

print "keys: ", scalar(@keys), "\n";
print "words: ", scalar(@words), " text: ", length($text), "\n";
print "digest: ", $ctx->hexdigest, "\n";
