/*
 * ptrace from inside a new pid namespace, as from a container: the namespace's init (pid 1
 * there) attaches to its own child (pid 2 there), then to a pid that does not exist there.
 * Prints "ns_child=<pid in the namespace> attach=<result> bad=<result>" on stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void)
{
	pid_t init;
	int st;

	if (unshare(CLONE_NEWPID) != 0) {
		perror("unshare(CLONE_NEWPID)");
		return 1;
	}
	init = fork();
	if (init < 0)
		return 1;
	if (init == 0) {
		pid_t c = fork();
		long r, bad;

		if (c < 0)
			_exit(1);
		if (c == 0) {
			pause();
			_exit(0);
		}
		r = ptrace(PTRACE_ATTACH, c, 0, 0);
		if (r == 0)
			waitpid(c, &st, __WALL);
		bad = ptrace(PTRACE_ATTACH, 4242, 0, 0);
		if (bad < 0)
			bad = -errno;
		printf("ns_child=%d attach=%ld bad=%ld\n", c, r, bad);
		fflush(stdout);
		kill(c, SIGKILL);
		waitpid(c, &st, __WALL);
		_exit(0);
	}
	if (waitpid(init, &st, 0) != init || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		return 1;
	return 0;
}
