/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dns.bpf.h: `dns` events, the DNS questions a process sends over UDP to port 53 (sendto,
 * sendmsg, sendmmsg, native and 32-bit; also send() on a socket connect()ed to port 53, which
 * the C library makes as sendto without an address). Seen at the syscall's entry, where the
 * message is still the caller's: the first LG_DNS_LEN bytes are copied and user space parses
 * the question (src/sensor/dns.rs), so nothing here has to trust the packet.
 *
 * Every send of every socket comes through here: the common case (not UDP, or UDP to another
 * port of a connected socket) is decided with plain loads from the kernel's socket.
 */
#ifndef LG_DNS_BPF_H
#define LG_DNS_BPF_H

const volatile bool want_dns = false;

struct lg_dns _lg_dns = {};

#define LG_IPPROTO_UDP 17
#define LG_DNS_PORT 53
#define LG_MMSG_MAX 4 /* messages of one sendmmsg looked at */

/* What a send names: the message (buffer and length) and where it goes (0: connected). */
struct dns_send {
	__u64 buf;
	__u64 len;
	__u64 addr;
};

/*
 * The UDP socket behind fd, or NULL: the file's private_data is a struct socket only for
 * socket files, which point back at their file.
 */
static __always_inline struct sock *udp_sock_of(long fd)
{
	struct file *f = fd_file_fast(fd);
	struct socket *sock;
	struct sock *sk;
	__u16 family;

	if (!f)
		return NULL;
	sock = KREAD(struct file, f, private_data);
	if (!sock || KREAD(struct socket, sock, file) != f)
		return NULL;
	sk = KREAD(struct socket, sock, sk);
	if (!sk || KREAD(struct sock, sk, sk_protocol) != LG_IPPROTO_UDP)
		return NULL;
	family = KREAD(struct sock, sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return NULL;
	return sk;
}

/*
 * The record is built here and copied into the ring buffer cut after the captured payload
 * (most names are short: ~220 bytes instead of ~480), so a storm of queries takes half the
 * room. bpf_ringbuf_output() takes a variable size; bpf_ringbuf_reserve() does not.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lg_dns);
} dns_scratch SEC(".maps");

/* Copies a record of `size` bytes into the ring buffer, waking the reader as submit() does. */
static __always_inline void output(void *e, __u64 size, __u32 type)
{
	__u64 flags = 0;
	__u32 zero = 0;
	__u64 *n;

	/* The other way into the ring (reserve() is the first): excluded tasks stop here too. */
	if (excluded())
		return;
	if (wakeup_bytes) {
		flags = BPF_RB_NO_WAKEUP;
		n = bpf_map_lookup_elem(&unchecked, &zero);
		if (n && (*n += size) >= wakeup_check_bytes) {
			*n = 0;
			if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
				flags = BPF_RB_FORCE_WAKEUP;
		}
	}
	if (bpf_ringbuf_output(&events, e, size, flags))
		count_drop(type);
}

/* Reports one datagram when it goes to port 53. */
static __always_inline void dns_one(struct sock *sk, struct dns_send *m)
{
	struct lg_dns *e;
	__u32 zero = 0;
	__u64 size;
	__u16 family = KREAD(struct sock, sk, __sk_common.skc_family), dport;
	struct sockaddr_in6 sa = {};
	__u64 n;

	if (m->addr) {
		/* sockaddr_in and sockaddr_in6 both start with the family and the port. */
		if (bpf_probe_read_user(&sa, sizeof(sa), (const void *)m->addr) < 0)
			return;
		if (sa.sin6_family != AF_INET && sa.sin6_family != AF_INET6)
			return;
		dport = bpf_ntohs(sa.sin6_port);
		family = sa.sin6_family;
	} else {
		dport = bpf_ntohs(KREAD(struct sock, sk, __sk_common.skc_dport));
	}
	if (dport != LG_DNS_PORT)
		return;
	e = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!e)
		return;
	e->type = LG_DNS;
	e->family = family;
	e->dport = dport;
	e->sport = KREAD(struct sock, sk, __sk_common.skc_num);
	e->_pad = 0;
	e->_pad2 = 0;
	e->len = m->len;
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	if (m->addr) {
		if (family == AF_INET)
			__builtin_memcpy(e->daddr, &((struct sockaddr_in *)&sa)->sin_addr, 4);
		else
			__builtin_memcpy(e->daddr, &sa.sin6_addr, 16);
	} else if (family == AF_INET) {
		bpf_core_read(e->daddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_core_read(e->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	if (family == AF_INET)
		bpf_core_read(e->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
	else
		bpf_core_read(e->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
	n = m->len < LG_DNS_LEN ? m->len : LG_DNS_LEN;
	e->captured = 0;
	if (n && bpf_probe_read_user(e->payload, n & 511, (const void *)m->buf) == 0)
		e->captured = n;
	fill_task(&e->task);
	/* Up to the payload's end, rounded up to 8 bytes (the ring buffer's unit). */
	size = (__builtin_offsetof(struct lg_dns, payload) + e->captured + 7) & ~7ULL;
	if (size > sizeof(*e))
		size = sizeof(*e);
	output(e, size, LG_DNS);
}

/*
 * A msghdr of the caller (native or 32-bit layout: include/linux/socket.h, compat.h): where it
 * goes and its first iovec (a DNS query is one buffer; later iovecs are not looked at).
 */
static __always_inline int read_msghdr(__u64 uptr, int compat, struct dns_send *m)
{
	__u64 w[4] = {};
	__u32 c[4] = {};
	__u64 iov[2] = {};
	__u32 ciov[2] = {};

	if (compat) {
		if (bpf_probe_read_user(c, sizeof(c), (const void *)uptr) < 0 || !c[3])
			return -1;
		if (bpf_probe_read_user(ciov, sizeof(ciov), (const void *)(__u64)c[2]) < 0)
			return -1;
		m->addr = c[0];
		m->buf = ciov[0];
		m->len = ciov[1];
		return 0;
	}
	/* name, namelen (+pad), iov, iovlen */
	if (bpf_probe_read_user(w, sizeof(w), (const void *)uptr) < 0 || !w[3])
		return -1;
	if (bpf_probe_read_user(iov, sizeof(iov), (const void *)w[2]) < 0)
		return -1;
	m->addr = w[0];
	m->buf = iov[0];
	m->len = iov[1];
	return 0;
}

/*
 * The DNS part of a send at its entry, from its arguments: fd, a1, a2, a4 (sendto: buf, len,
 * dest_addr; sendmsg: msg; sendmmsg: vec, vlen) and `how`: the kind (1 sendto, 2 sendmsg,
 * 3 sendmmsg) plus 16 for a 32-bit call. Global: verified once, with numbers as arguments.
 */
__noinline int lg_dns_send(long fd, __u64 a1, __u64 a2, __u64 a4, int how)
{
	struct dns_send m = {};
	int kind = how & 15, compat = how >> 4;
	struct sock *sk;
	__u32 vlen, i;

	if (is_agent())
		return 0;
	sk = udp_sock_of(fd);
	if (!sk)
		return 0;
	if (kind == 1) {
		m.buf = a1;
		m.len = a2;
		m.addr = a4;
		dns_one(sk, &m);
		return 0;
	}
	if (kind == 2) {
		if (read_msghdr(a1, compat, &m) == 0)
			dns_one(sk, &m);
		return 0;
	}
	/* sendmmsg: struct mmsghdr is a msghdr and a length (64 bytes, 32 for compat). */
	vlen = a2;
	for (i = 0; i < LG_MMSG_MAX; i++) {
		if (i >= vlen)
			break;
		if (read_msghdr(a1 + i * (compat ? 32 : 64), compat, &m) == 0)
			dns_one(sk, &m);
	}
	return 0;
}

#endif /* LG_DNS_BPF_H */
