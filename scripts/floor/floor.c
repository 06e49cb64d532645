/*
 * floor.c: loads floor.bpf.o (scripts/bench), attaches its programs, says "watching:" on stderr
 * and, for the record variant, reads the ring buffer until SIGINT/SIGTERM; then prints how many
 * records it read and how many reservations failed in the kernel.
 * Usage: floor OBJECT [PREFIX...]   programs whose names start with a PREFIX are left out.
 */
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int on_record(void *ctx, void *data, size_t len)
{
	(void)data;
	(void)len;
	(*(long *)ctx)++;
	return 0;
}

int main(int argc, char **argv)
{
	struct bpf_object *obj;
	struct bpf_program *p;
	struct bpf_map *m;
	struct ring_buffer *rb = NULL;
	long records = 0;
	int attached = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: floor OBJECT [PREFIX...]\n");
		return 2;
	}
	obj = bpf_object__open_file(argv[1], NULL);
	if (!obj) {
		fprintf(stderr, "floor: cannot open %s\n", argv[1]);
		return 1;
	}
	bpf_object__for_each_program(p, obj) {
		for (int i = 2; i < argc; i++)
			if (strncmp(bpf_program__name(p), argv[i], strlen(argv[i])) == 0)
				bpf_program__set_autoload(p, false);
	}
	/* Each CPU looks at the ring's fill after its share of the wakeup threshold (as the agent). */
	m = bpf_object__find_map_by_name(obj, ".rodata");
	if (m) {
		size_t sz;
		const char *ro = bpf_map__initial_value(m, &sz);
		int cpus = libbpf_num_possible_cpus();

		/* .rodata holds one object, `knobs`: { wakeup_bytes, check_bytes }. */
		if (ro && cpus > 0 && sz == 16) {
			char buf[64];
			unsigned long long wake, check;

			memcpy(buf, ro, sz < sizeof(buf) ? sz : sizeof(buf));
			memcpy(&wake, buf, 8);
			check = wake / cpus;
			memcpy(buf + 8, &check, 8);
			bpf_map__set_initial_value(m, buf, sz < sizeof(buf) ? sz : sizeof(buf));
		}
	}
	if (bpf_object__load(obj)) {
		fprintf(stderr, "floor: load failed\n");
		return 1;
	}
	bpf_object__for_each_program(p, obj) {
		if (!bpf_program__autoload(p))
			continue;
		if (!bpf_program__attach(p)) {
			fprintf(stderr, "floor: attach %s failed\n", bpf_program__name(p));
			return 1;
		}
		attached++;
	}
	m = bpf_object__find_map_by_name(obj, "events");
	if (m) {
		rb = ring_buffer__new(bpf_map__fd(m), on_record, &records, NULL);
		if (!rb) {
			fprintf(stderr, "floor: ring buffer failed\n");
			return 1;
		}
	}
	sigset_t mask, old;

	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	fprintf(stderr, "watching: %d programs%s\n", attached, rb ? ", reading records" : "");
	if (!rb) {
		/* Block the signals, then wait for one atomically: none can slip in unseen. */
		sigprocmask(SIG_BLOCK, &mask, &old);
		while (!stop)
			sigsuspend(&old);
		return 0;
	}
	while (!stop) {
		int err = ring_buffer__poll(rb, 100);

		if (err < 0 && err != -EINTR) {
			fprintf(stderr, "floor: ring buffer poll failed: %d\n", err);
			return 1;
		}
	}
	ring_buffer__consume(rb);
	{
		struct bpf_map *c = bpf_object__find_map_by_name(obj, "counts");
		int cpus = libbpf_num_possible_cpus();
		unsigned long long v[256] = { 0 }, lost = 0;
		__u32 key = 1;

		if (c && cpus > 0 && cpus <= 256 &&
		    bpf_map_lookup_elem(bpf_map__fd(c), &key, v) == 0)
			for (int i = 0; i < cpus; i++)
				lost += v[i];
		fprintf(stderr, "floor: %ld records, %llu lost in the kernel\n", records, lost);
	}
	return 0;
}
