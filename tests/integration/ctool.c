/*
 * ctool.c: the container tests' tool, static, in a scratch image (tests/integration/containers.rs).
 *   ctool connect PATH        connect a Unix stream socket to PATH; prints 0 or -errno
 *   ctool spawn PROG ARGS...  runs PROG as a child and waits (a parent for PROG: installed as
 *                             /usr/sbin/nginx, it is a "web server" starting a shell)
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "connect") == 0) {
		struct sockaddr_un a = { .sun_family = AF_UNIX };
		int s = socket(AF_UNIX, SOCK_STREAM, 0);

		if (s < 0 || strlen(argv[2]) >= sizeof(a.sun_path))
			return 2;
		strcpy(a.sun_path, argv[2]);
		printf("%d\n", connect(s, (struct sockaddr *)&a, sizeof(a)) == 0 ? 0 : -errno);
		return 0;
	}
	if (argc >= 3 && strcmp(argv[1], "spawn") == 0) {
		int status = 0;
		pid_t pid = fork();

		if (pid == 0) {
			execv(argv[2], &argv[2]);
			_exit(127);
		}
		if (pid < 0 || waitpid(pid, &status, 0) < 0)
			return 2;
		return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
	}
	fprintf(stderr, "usage: ctool connect PATH | ctool spawn PROG ARGS...\n");
	return 2;
}
