/*
 * floor.c: loads floor.bpf.o (scripts/bench-floor), attaches its programs, says "watching:"
 * on stderr and, for the record variant, reads the ring buffer until SIGINT/SIGTERM.
 * Usage: floor OBJECT [PREFIX...]   programs whose names start with a PREFIX are left out.
 */
#include <bpf/libbpf.h>
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
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	fprintf(stderr, "watching: %d programs%s\n", attached, rb ? ", reading records" : "");
	while (!stop) {
		if (rb)
			ring_buffer__poll(rb, 100);
		else
			pause();
	}
	if (rb)
		ring_buffer__consume(rb);
	fprintf(stderr, "floor: %ld records\n", records);
	return 0;
}
