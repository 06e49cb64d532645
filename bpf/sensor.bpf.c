// SPDX-License-Identifier: GPL-2.0
/* sensor.bpf.c: placeholder program; replaced by the sensor issue. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("tracepoint/sched/sched_process_exec")
int handle_exec(void *ctx)
{
	return 0;
}
