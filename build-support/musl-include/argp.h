/* argp.h: a compile-only stand-in for the static musl build. musl has no argp; elfutils' helper
 * library (lib/color.c, lib/printversion.c) includes this header, but libelf, the only elfutils
 * library the agent links, uses none of it, so nothing declared here reaches the binary.
 * See build-support/README.md. */
#ifndef LINUXGUARD_ARGP_STUB_H
#define LINUXGUARD_ARGP_STUB_H
#include <errno.h>
#include <stdio.h>

#ifndef __error_t_defined
typedef int error_t;
#define __error_t_defined 1
#endif

struct argp;
struct argp_state {
	const struct argp *root_argp;
	int argc;
	char **argv;
	int next;
	unsigned flags;
	unsigned arg_num;
	int quoted;
	void *input;
	void **child_inputs;
	void *hook;
	char *name;
	FILE *err_stream;
	FILE *out_stream;
	void *pstate;
};
struct argp_option {
	const char *name;
	int key;
	const char *arg;
	int flags;
	const char *doc;
	int group;
};
typedef error_t (*argp_parser_t)(int key, char *arg, struct argp_state *state);
struct argp {
	const struct argp_option *options;
	argp_parser_t parser;
	const char *args_doc;
	const char *doc;
	const void *children;
	char *(*help_filter)(int key, const char *text, void *input);
	const char *argp_domain;
};

#define OPTION_ARG_OPTIONAL 0x1
#define ARGP_HELP_SEE 0x100
#define ARGP_ERR_UNKNOWN E2BIG

void argp_help(const struct argp *argp, FILE *stream, unsigned flags, char *name);
#endif
