/*
 * fileops.c: a test helper (tests/integration/files.rs) for the `file` event's evasion tests.
 * Built at test time with `cc -no-pie -static` (static buffers below 4 GiB for int $0x80).
 * Prints `key=value` words on one line.
 *
 *   fileops race WATCHED BENIGN N   a second thread flips one path buffer between WATCHED and
 *                                   BENIGN while this one opens it N times; counts the opens
 *                                   that opened WATCHED (by /proc/self/fd), as `watched=`
 *   fileops openat2 DIR NAME        openat2(open(DIR), NAME, RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)
 *   fileops open32 PATH             open(PATH, O_RDONLY) through int $0x80
 *   fileops eacces PATH             setuid(65534), then open(PATH, O_RDONLY): refused
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NR32_OPEN 5
#define LG_RESOLVE_NO_SYMLINKS 0x04
#define LG_RESOLVE_BENEATH 0x08

static char buf[4096];
static char path32[4096];
static const char *paths[2];
static atomic_int stop;

static void *flipper(void *arg)
{
	size_t n0 = strlen(paths[0]) + 1, n1 = strlen(paths[1]) + 1;
	int i = 0;

	(void)arg;
	while (!atomic_load(&stop)) {
		if (i++ & 1)
			memcpy(buf, paths[0], n0);
		else
			memcpy(buf, paths[1], n1);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	const char *op = argc > 1 ? argv[1] : "";

	if (!strcmp(op, "race") && argc > 4) {
		pthread_t t;
		long n = atol(argv[4]), watched = 0, opened = 0;
		char link[64], target[4096];

		paths[0] = argv[2];
		paths[1] = argv[3];
		strcpy(buf, paths[1]);
		pthread_create(&t, NULL, flipper, NULL);
		for (long i = 0; i < n; i++) {
			int fd = open(buf, O_RDONLY | O_CLOEXEC);
			ssize_t len;

			if (fd < 0)
				continue;
			opened++;
			snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
			len = readlink(link, target, sizeof(target) - 1);
			if (len > 0) {
				target[len] = 0;
				if (!strcmp(target, paths[0]))
					watched++;
			}
			close(fd);
		}
		atomic_store(&stop, 1);
		pthread_join(t, NULL);
		printf("pid=%d opened=%ld watched=%ld\n", getpid(), opened, watched);
		return 0;
	}
	if (!strcmp(op, "openat2") && argc > 3) {
		/* struct open_how: flags, mode, resolve */
		uint64_t how[3] = { O_RDONLY | O_CLOEXEC, 0, LG_RESOLVE_BENEATH | LG_RESOLVE_NO_SYMLINKS };
		int dir = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		long fd = syscall(SYS_openat2, dir, argv[3], how, sizeof(how));

		printf("pid=%d fd=%ld\n", getpid(), fd < 0 ? -errno : fd);
		return fd < 0;
	}
	if (!strcmp(op, "open32") && argc > 2) {
		long ret;

		snprintf(path32, sizeof(path32), "%s", argv[2]);
		asm volatile("int $0x80"
			     : "=a"(ret)
			     : "a"(NR32_OPEN), "b"(path32), "c"(O_RDONLY), "d"(0)
			     : "memory", "r8", "r9", "r10", "r11");
		printf("pid=%d fd=%ld\n", getpid(), ret);
		return ret < 0;
	}
	if (!strcmp(op, "eacces") && argc > 2) {
		int fd;

		if (setgid(65534) || setuid(65534)) {
			perror("setuid");
			return 1;
		}
		fd = open(argv[2], O_RDONLY);
		printf("pid=%d fd=%d\n", getpid(), fd < 0 ? -errno : fd);
		return 0;
	}
	fprintf(stderr, "usage: see the comment at the top of fileops.c\n");
	return 2;
}
