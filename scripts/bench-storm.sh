# shellcheck shell=bash
# scripts/bench-storm.sh: the exec-storm workload shared by scripts/bench and scripts/bench-e2e
# (sourced, not run). With OUT set: builds a tiny static program and a spawner into $OUT and
# defines calc, now, storm, secs and execs; also builds $OUT/sysloop (ns per syscall).

CC=musl-gcc
command -v musl-gcc >/dev/null || CC=gcc
cat > "$OUT/tiny.c" <<'C'
int main(void) { return 0; }
C
cat > "$OUT/spawner.c" <<'C'
/* Spawns argv[2] argv[1] times, one after the other, waiting for each. */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
extern char **environ;
int main(int argc, char **argv)
{
	long n = argc > 2 ? atol(argv[1]) : 0, done = 0;
	char *args[] = { argv[2], NULL };
	for (long i = 0; i < n; i++) {
		pid_t p;
		int st;
		if (posix_spawn(&p, argv[2], NULL, NULL, args, environ) != 0)
			return 1;
		if (waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0)
			done++;
	}
	printf("%ld\n", done);
	return done == n ? 0 : 1;
}
C
cat > "$OUT/sysloop.c" <<'C'
/* Prints the best of 5 runs of 1,000,000 getppid() calls, in ns per call: what an observer's
 * syscall hooks add to every syscall of every process. */
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int main(void)
{
	double best = 1e18;
	for (int r = 0; r < 5; r++) {
		struct timespec a, b;
		long n = 1000000;
		clock_gettime(CLOCK_MONOTONIC, &a);
		for (long i = 0; i < n; i++)
			syscall(SYS_getppid);
		clock_gettime(CLOCK_MONOTONIC, &b);
		double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
		if (ns < best)
			best = ns;
	}
	printf("%.0f\n", best);
	return 0;
}
C
$CC -O2 -static -o "$OUT/tiny" "$OUT/tiny.c"
$CC -O2 -static -o "$OUT/sysloop" "$OUT/sysloop.c"
$CC -O2 -static -o "$OUT/spawner" "$OUT/spawner.c"
TINY=$OUT/tiny

calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
now() { date +%s.%N; }

# storm TOTAL: two spawners in parallel, TOTAL/2 execs of $TINY each; prints
# "<seconds> <execs done>".
storm() {
	local half=$(($1 / 2)) t0 t1 a b
	t0=$(now)
	"$OUT/spawner" "$half" "$TINY" > "$OUT/s1" &
	local p1=$!
	"$OUT/spawner" "$half" "$TINY" > "$OUT/s2" &
	local p2=$!
	wait "$p1" "$p2" || true
	t1=$(now)
	a=$(cat "$OUT/s1"); b=$(cat "$OUT/s2")
	echo "$(calc "$t1 - $t0") $((a + b))"
}
secs() { echo "$1" | cut -d' ' -f1; }
execs() { echo "$1" | cut -d' ' -f2; }
