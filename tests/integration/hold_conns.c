/*
 * hold_conns SOCKET N SECONDS: keeps N connections to the Unix socket SOCKET open without ever
 * sending a byte, for SECONDS seconds: a connection the server answers or closes is replaced at
 * once. The starvation attack on the agent's socket (issue 20); the hardening tests run it as an
 * unprivileged uid, also inside `unshare -Urpf`.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX 64

static int dial(const char *path)
{
	struct sockaddr_un a;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	memset(&a, 0, sizeof(a));
	a.sun_family = AF_UNIX;
	strncpy(a.sun_path, path, sizeof(a.sun_path) - 1);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

int main(int argc, char **argv)
{
	struct pollfd p[MAX];
	struct timespec start, now;
	long secs, made = 0;
	int n, i;
	char buf[256];

	if (argc != 4) {
		fprintf(stderr, "usage: hold_conns SOCKET N SECONDS\n");
		return 2;
	}
	n = atoi(argv[2]);
	secs = atol(argv[3]);
	if (n < 1 || n > MAX)
		return 2;
	for (i = 0; i < n; i++) {
		p[i].fd = dial(argv[1]);
		p[i].events = POLLIN;
		made += p[i].fd >= 0;
	}
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - start.tv_sec >= secs)
			break;
		if (poll(p, n, 5) < 0 && errno != EINTR)
			return 1;
		for (i = 0; i < n; i++) {
			if (p[i].fd >= 0 && !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			/* Answered ("busy") or closed: drop it and dial again. */
			if (p[i].fd >= 0) {
				while (read(p[i].fd, buf, sizeof(buf)) > 0)
					;
				close(p[i].fd);
			}
			p[i].fd = dial(argv[1]);
			p[i].revents = 0;
			made += p[i].fd >= 0;
		}
	}
	printf("%ld connections made\n", made);
	return 0;
}
