// SPDX-License-Identifier: GPL-2.0-only
/*
 * shortlived: one short-lived target process of the soak (tests/vm/guest/test_guest_soak.py).
 *
 * Maps --maps separate regions of --pages 4 KiB pages (one region, a PROT_NONE guard page
 * after each piece, so each piece is a VMA of its own, as thread stacks with guards are),
 * touches every page, touches them again every 50 ms for --ms milliseconds and exits 0.  Many mappings
 * per process make per-process state a daemon keeps after the process is gone (parsed maps,
 * numa_maps spans) large enough to show in the daemon's memory.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096UL

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "maps", required_argument, NULL, 'm' },
		{ "pages", required_argument, NULL, 'p' },
		{ "ms", required_argument, NULL, 't' },
		{ NULL, 0, NULL, 0 },
	};
	long maps = 64, pages = 16, ms = 1000;
	int c;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'm':
			maps = atol(optarg);
			break;
		case 'p':
			pages = atol(optarg);
			break;
		case 't':
			ms = atol(optarg);
			break;
		default:
			return 2;
		}
	}
	if (maps < 1 || pages < 1 || ms < 0)
		return 2;
	size_t stride = (pages + 1) * PAGE;
	volatile char *mem = mmap(NULL, maps * stride, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (long i = 0; i < maps; i++)
		if (mprotect((char *)mem + i * stride + pages * PAGE, PAGE, PROT_NONE)) {
			perror("mprotect");
			return 1;
		}
	double end = now() + ms / 1e3;

	const struct timespec pause = { 0, 50 * 1000 * 1000 };

	do {	/* touch every page each 50 ms: accessed in every sample, little CPU */
		for (long i = 0; i < maps; i++)
			for (long j = 0; j < pages; j++)
				mem[i * stride + j * PAGE] += 1;
		nanosleep(&pause, NULL);
	} while (now() < end);
	return 0;
}
