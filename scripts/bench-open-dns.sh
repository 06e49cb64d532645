# shellcheck shell=bash
# scripts/bench-open-dns.sh: the open-loop and DNS-storm workloads of scripts/bench (sourced,
# not run). With OUT set: builds into $OUT
#   openloop [FILE [write]]   best of 5 runs of 200,000 open+close of FILE (default: a file under
#                             /dev/shm, outside every default watch list), read-only or for writing;
#                             prints ns per open+close. Run it without and with the agent: the
#                             difference is the file filter's cost per open (bar: <= 150 ns at the
#                             median of the run sets).
#   dnsstorm N [PORT]         sends N DNS queries (type A, names q<i>.lg-storm.test) from one UDP
#                             socket to 127.0.0.1:PORT (default 53; nothing needs to listen) and
#                             prints "sent N in S s". With the agent watching, count its `dns`
#                             events whose dns.question.name ends in .lg-storm.test: the bar is
#                             all N delivered and stats.dropped_kernel 0.
# Example (as root, from the repository):
#   OUT=$(mktemp -d); . scripts/bench-open-dns.sh
#   "$OUT/openloop"; target/release/linuxguard-agent watch > "$OUT/ev.json" & sleep 2
#   "$OUT/openloop"; "$OUT/dnsstorm" 10000; kill -INT %1; wait
#   grep -c '"name":"q[0-9]*.lg-storm.test"' "$OUT/ev.json"

CC=musl-gcc
command -v musl-gcc >/dev/null || CC=gcc
cat > "$OUT/openloop.c" <<'C'
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "/dev/shm/lg-openloop-unwatched";
	int flags = argc > 2 && !strcmp(argv[2], "write") ? O_WRONLY : O_RDONLY;
	double best = 1e18;
	int fd = open(path, O_WRONLY | O_CREAT, 0644);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	close(fd);
	for (int run = 0; run < 5; run++) {
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		for (int i = 0; i < 200000; i++) {
			fd = open(path, flags | O_CLOEXEC);
			if (fd < 0)
				return 1;
			close(fd);
		}
		clock_gettime(CLOCK_MONOTONIC, &b);
		double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 200000;
		if (ns < best)
			best = ns;
	}
	printf("%.1f\n", best);
	return 0;
}
C
cat > "$OUT/dnsstorm.c" <<'C'
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 10000, sent = 0;
	int port = argc > 2 ? atoi(argv[2]) : 53;
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct timespec a, b;
	inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++) {
		unsigned char q[512] = { 0 }, *p = q + 12;
		char label[32];
		int len = snprintf(label, sizeof(label), "q%ld", i);
		q[0] = i >> 8, q[1] = i, q[2] = 1, q[5] = 1; /* id, RD, QDCOUNT 1 */
		*p++ = len, memcpy(p, label, len), p += len;
		*p++ = 8, memcpy(p, "lg-storm", 8), p += 8;
		*p++ = 4, memcpy(p, "test", 4), p += 4;
		*p++ = 0, *p++ = 0, *p++ = 1, *p++ = 0, *p++ = 1; /* root, A, IN */
		if (sendto(s, q, p - q, 0, (struct sockaddr *)&to, sizeof(to)) > 0)
			sent++;
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("sent %ld in %.3f s\n", sent, (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
	return sent == n ? 0 : 1;
}
C
"$CC" -O2 -static -o "$OUT/openloop" "$OUT/openloop.c"
"$CC" -O2 -static -o "$OUT/dnsstorm" "$OUT/dnsstorm.c"
