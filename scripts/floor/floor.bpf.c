// SPDX-License-Identifier: GPL-2.0
/*
 * floor.bpf.c: the cost floor of the agent's hook set, for scripts/bench (not part of the agent). Every hook the agent attaches on this kernel (bpf/sensor.bpf.c, the tp_btf flavour
 * where it has one) gets a program that does nothing, so a storm run under it measures what
 * the kernel charges for running a BPF program on those hooks at all: the syscall slow path
 * that any `syscalls:*` or raw syscall tracepoint turns on, and the dispatch of each program
 * run. Built with -DRECORDS, the exec, fork and exit programs also reserve and submit an
 * empty record of the agent's record size, which a reader (floor.c) consumes without looking
 * at it: the transport floor, kernel to user space, for the events the agent must report.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#ifdef RECORDS
#define EXEC_BYTES 1904 /* sizeof(struct lg_exec) */
#define TASK_BYTES 104	/* sizeof(struct lg_exit), sizeof(struct lg_fork) */
/*
 * Wake the reader as the agent does (bpf/sensor.bpf.c, submit()): once an eighth of the ring is
 * waiting, each CPU looking at the fill only after its share of that many bytes.
 */
const volatile struct {
	__u64 wakeup_bytes;
	__u64 check_bytes; /* floor.c sets wakeup_bytes / CPUs */
} knobs = { 256 << 10, 128 << 10 };

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 2 << 20);
} events SEC(".maps");

/* Bytes this CPU submitted since it last looked at the fill; [1]: failed reservations. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static __always_inline int record(__u64 size)
{
	__u32 key = 0;
	__u64 *n = bpf_map_lookup_elem(&counts, &key);
	__u64 flags = BPF_RB_NO_WAKEUP;
	void *e = bpf_ringbuf_reserve(&events, size, 0);

	if (!e) {
		key = 1;
		n = bpf_map_lookup_elem(&counts, &key);
		if (n)
			*n += 1;
		return 0;
	}
	/* The first word only: the agent writes every byte it sends, the floor writes none. */
	*(__u64 *)e = size;
	if (n && (*n += size) >= knobs.check_bytes) {
		*n = 0;
		if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= knobs.wakeup_bytes)
			flags = BPF_RB_FORCE_WAKEUP;
	}
	bpf_ringbuf_submit(e, flags);
	return 0;
}
#else
#define record(size) 0
#endif

SEC("tp_btf/sched_process_exec")
int sched_exec(void *ctx) { return record(EXEC_BYTES); }

SEC("tp_btf/sched_process_exit")
int sched_exit(void *ctx) { return record(TASK_BYTES); }

SEC("tp_btf/sched_process_fork")
int sched_fork(void *ctx) { return record(TASK_BYTES); }

SEC("tp_btf/inet_sock_set_state")
int sock_state(void *ctx) { return 0; }

/* The native syscall tracepoints the agent uses, both halves. */
#define PAIR(sys)                                                            \
	SEC("tracepoint/syscalls/sys_enter_" #sys)                           \
	int sys_enter_##sys(void *ctx) { return 0; }                         \
	SEC("tracepoint/syscalls/sys_exit_" #sys)                            \
	int sys_exit_##sys(void *ctx) { return 0; }

PAIR(setuid)
PAIR(setgid)
PAIR(setreuid)
PAIR(setregid)
PAIR(setresuid)
PAIR(setresgid)
PAIR(setfsuid)
PAIR(setfsgid)
PAIR(capset)
PAIR(ptrace)
PAIR(bpf)
PAIR(memfd_create)
PAIR(connect)

SEC("tracepoint/syscalls/sys_exit_accept")
int sys_exit_accept(void *ctx) { return 0; }

SEC("tracepoint/syscalls/sys_exit_accept4")
int sys_exit_accept4(void *ctx) { return 0; }

/* The 32-bit syscall hook: every syscall of every task, both halves. */
SEC("tp_btf/sys_enter")
int compat_enter(void *ctx) { return 0; }

SEC("tp_btf/sys_exit")
int compat_exit(void *ctx) { return 0; }
