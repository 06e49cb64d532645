/* An exec storm with markers: `storm N PREFIX` spawns itself N times, one after the other,
 * each as `storm - PREFIX-<i>` (which exits at once), and waits for each. Static, so each exec
 * is cheap; every spawn is one exec event carrying its marker in its arguments. */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

extern char **environ;

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "-") == 0)
		return 0;
	if (argc != 3) {
		fprintf(stderr, "usage: storm N PREFIX\n");
		return 2;
	}
	long n = atol(argv[1]), done = 0;
	char arg[256];
	for (long i = 0; i < n; i++) {
		pid_t p;
		int st;
		snprintf(arg, sizeof arg, "%s-%ld", argv[2], i);
		char *args[] = { argv[0], "-", arg, NULL };
		if (posix_spawn(&p, "/proc/self/exe", NULL, NULL, args, environ) != 0)
			return 1;
		if (waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0)
			done++;
	}
	printf("%ld\n", done);
	return done == n ? 0 : 1;
}
