/*
 * Races BPF_PROG_LOAD against a second thread that keeps rewriting the caller's attr (its
 * prog_name, "flip_a" <-> "flip_b") during the call, as an attacker disguising a program would.
 * Prints {"pid":..,"loads":[{"fd":..,"name":..,"insns":..}, ...]} with the name and size the
 * kernel actually holds for each loaded program (BPF_OBJ_GET_INFO_BY_FD).
 */
#include <linux/bpf.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define INSNS 4096

static union bpf_attr attr;
static struct bpf_insn insns[INSNS];
static volatile int stop;

static void *flip(void *arg)
{
	volatile unsigned long *name = (volatile unsigned long *)attr.prog_name;
	unsigned long a = 0, b = 0;

	(void)arg;
	memcpy(&a, "flip_a", 6);
	memcpy(&b, "flip_b", 6);
	while (!stop) {
		*name = a;
		*name = b;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 20;
	pthread_t t;

	for (int i = 0; i < INSNS - 1; i++)
		insns[i] = (struct bpf_insn){ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0 };
	insns[INSNS - 1] = (struct bpf_insn){ .code = BPF_JMP | BPF_EXIT };
	attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
	attr.insns = (unsigned long)insns;
	attr.insn_cnt = INSNS;
	attr.license = (unsigned long)"GPL";
	memcpy(attr.prog_name, "flip_a", 6);
	if (pthread_create(&t, NULL, flip, NULL) != 0)
		return 1;
	printf("{\"pid\":%d,\"loads\":[", getpid());
	for (int i = 0; i < n; i++) {
		struct bpf_prog_info info;
		union bpf_attr q;
		int fd = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));

		if (fd < 0) {
			perror("BPF_PROG_LOAD");
			return 1;
		}
		memset(&info, 0, sizeof(info));
		memset(&q, 0, sizeof(q));
		q.info.bpf_fd = fd;
		q.info.info_len = sizeof(info);
		q.info.info = (unsigned long)&info;
		if (syscall(SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &q, sizeof(q)) < 0) {
			perror("BPF_OBJ_GET_INFO_BY_FD");
			return 1;
		}
		printf("%s{\"fd\":%d,\"name\":\"%s\",\"insns\":%u}", i ? "," : "", fd, info.name,
		       info.xlated_prog_len / 8);
		close(fd);
	}
	stop = 1;
	pthread_join(t, NULL);
	printf("]}\n");
	return 0;
}
