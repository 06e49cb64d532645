/* SPDX-License-Identifier: GPL-2.0 */
/*
 * conn.bpf.h: `connection_close` events, TCP connections this host opened or accepted, at
 * their end (inet_sock_set_state to TCP_CLOSE), with the bytes each way and the duration.
 *
 * The end often comes in softirq context (a timer, the peer's FIN or RST), where no process
 * owns it: the owner is remembered when there is one, by socket, in `conn_owners`: at
 * CLOSE -> SYN_SENT for connects (that runs in the connecting task, inside connect() or a
 * TCP Fast Open sendto()), at the accept()/accept4() return for accepted connections. Every
 * socket passes through TCP_CLOSE before it is freed, where its entry is deleted, so an entry
 * never outlives its socket (and a reused address never finds an old owner). Connections
 * made before the agent started, and a connect that never got established, are not reported.
 */
#ifndef LG_CONN_BPF_H
#define LG_CONN_BPF_H

/* The dispatcher notes accepted connections (set by user space before load). */
const volatile bool want_close = false;

struct lg_connection_close _lg_connection_close = {};

#define LG_TCP_ESTABLISHED 1
#define LG_TCP_CLOSE 7

struct conn_owner {
	struct lg_task task;
	__u64 start_ns;
	__u8 inbound;
	__u8 established;
	__u8 excluded; /* LG_FILTER_* + 1 of the owner's exclusion, or 0 */
	__u8 _pad;
	__u32 _pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct conn_owner);
} conn_owners SEC(".maps");

/* Per-CPU room for one owner while it is filled (too big for the stack beside the rest). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct conn_owner);
} conn_scratch SEC(".maps");

/* The current task owns sk from now on. */
static __always_inline void conn_note(const void *sk, __u8 inbound)
{
	struct conn_owner *o;
	__u64 key = (__u64)sk;
	__u32 zero = 0;

	if (is_agent())
		return;
	o = bpf_map_lookup_elem(&conn_scratch, &zero);
	if (!o)
		return;
	fill_task(&o->task);
	o->start_ns = o->task.ts_boot_ns;
	o->inbound = inbound;
	/* An accepted connection is established; a connect is once it gets there. */
	o->established = inbound;
	/* Decided now, in the owner's context; counted at the close that is then not reported. */
	o->excluded = have_exclusions ? exclusion() : 0;
	o->_pad = 0;
	o->_pad2 = 0;
	bpf_map_update_elem(&conn_owners, &key, o, BPF_ANY);
}

#define LG_RCV_SHUTDOWN 1
#define LG_SEND_SHUTDOWN 2

/*
 * The payload bytes each way, from the kernel's RFC 4898 counters, which count the sequence
 * numbers SYN and FIN take too: bytes_acked (acknowledged by the peer) includes the connecting
 * side's SYN (an accepting side's SYN-ACK is not counted) and this side's FIN once the peer
 * acknowledged it (all this side wrote, FIN included, is acknowledged: snd_una == write_seq);
 * bytes_received includes the peer's FIN, which set SOCK_DONE (tcp_fin()).
 */
static __always_inline void conn_bytes(const struct sock *sk, __u8 inbound,
				       struct lg_connection_close *e)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u64 acked, received;
	unsigned long flags;
	__u8 shut;

	e->bytes_sent = 0;
	e->bytes_received = 0;
	if (!bpf_core_field_exists(tp->bytes_acked) || !bpf_core_field_exists(tp->bytes_received))
		return;
	acked = BPF_CORE_READ(tp, bytes_acked);
	received = BPF_CORE_READ(tp, bytes_received);
	shut = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_shutdown);
	if (!inbound && acked)
		acked--;
	if ((shut & LG_SEND_SHUTDOWN) && acked &&
	    BPF_CORE_READ(tp, snd_una) == BPF_CORE_READ(tp, write_seq))
		acked--;
	flags = BPF_CORE_READ(sk, __sk_common.skc_flags);
	if (bpf_core_enum_value_exists(enum sock_flags, SOCK_DONE) &&
	    (flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE))) && received)
		received--;
	e->bytes_sent = acked;
	e->bytes_received = received;
}

/* A state change of TCP socket sk: note, mark established, or report and forget. */
static __always_inline int conn_state(const struct sock *sk, int newstate)
{
	struct lg_connection_close *e;
	struct conn_owner *o;
	__u64 key = (__u64)sk;
	__u16 family;

	if (newstate == TCP_SYN_SENT) {
		conn_note(sk, 0);
		return 0;
	}
	if (newstate != LG_TCP_ESTABLISHED && newstate != LG_TCP_CLOSE)
		return 0;
	o = bpf_map_lookup_elem(&conn_owners, &key);
	if (!o)
		return 0;
	if (newstate == LG_TCP_ESTABLISHED) {
		o->established = 1;
		return 0;
	}
	if (o->established && o->excluded) {
		count_filtered(o->excluded - 1);
	} else if (o->established) {
		e = reserve_unchecked(sizeof(*e), LG_CONNECTION_CLOSE);
		if (e) {
			family = BPF_CORE_READ(sk, __sk_common.skc_family);
			e->type = LG_CONNECTION_CLOSE;
			e->family = family;
			e->inbound = o->inbound;
			e->_pad = 0;
			e->_pad2 = 0;
			e->task = o->task;
			e->task.ts_boot_ns = bpf_ktime_get_boot_ns();
			e->start_ns = o->start_ns;
			conn_bytes(sk, o->inbound, e);
			/* The local port: skc_num is already released here, inet_sport is not. */
			e->sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
			e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
			__builtin_memset(e->saddr, 0, sizeof(e->saddr));
			__builtin_memset(e->daddr, 0, sizeof(e->daddr));
			if (family == AF_INET) {
				bpf_core_read(e->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
				bpf_core_read(e->daddr, 4, &sk->__sk_common.skc_daddr);
			} else {
				bpf_core_read(e->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
				bpf_core_read(e->daddr, 16, &sk->__sk_common.skc_v6_daddr);
			}
			submit(e, sizeof(*e));
		}
	}
	bpf_map_delete_elem(&conn_owners, &key);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(close_btf, const struct sock *sk, const int oldstate, const int newstate)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	return conn_state(sk, newstate);
}

SEC("tracepoint/sock/inet_sock_set_state")
int close_tp(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	return conn_state(ctx->skaddr, ctx->newstate);
}

/*
 * An accepted connection's owner, at the accept()/accept4() return: the socket behind the new
 * descriptor (fd_sock(), sensor.bpf.c). Global: verified once.
 */
__noinline int lg_conn_accept(long fd)
{
	const struct sock *sk;

	if (fd < 0)
		return 0;
	sk = fd_sock(fd);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	conn_note(sk, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int close_accept4_exit(struct trace_event_raw_sys_exit *ctx)
{
	return lg_conn_accept(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int close_accept_exit(struct trace_event_raw_sys_exit *ctx)
{
	return lg_conn_accept(ctx->ret);
}

#endif /* LG_CONN_BPF_H */
