// SPDX-License-Identifier: GPL-2.0-only
/*
 * churn: a process whose address space keeps changing while a tiering daemon tracks it.
 *
 * Every round (--pause-us apart, for --duration seconds): map a new 1-8 MiB region and touch
 * it, unmap half of an older one (splitting its VMA), unmap another whole, and fork a child
 * that touches its copy of the memory (copy-on-write), maps and touches 4 MiB of its own and
 * exits after a few milliseconds.  The children have the parent's name (--name), so a
 * selector on the name picks up processes that appear and vanish between the daemon's
 * reads of /proc/PID/maps and of their access bits.
 *
 * Checksums: the regions still mapped hold a pattern; at exit the parent verifies them
 * and exits 3 if any word changed (migration must never change data), else 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 16
#define PAGE 4096UL

struct region {
	uint64_t *mem;
	size_t len;
	uint64_t tag;
};

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fill(struct region *r)
{
	for (size_t i = 0; i < r->len / 8; i += 7)
		r->mem[i] = r->tag + i;
}

static size_t check(const struct region *r)
{
	size_t bad = 0;

	for (size_t i = 0; i < r->len / 8; i += 7)
		bad += r->mem[i] != r->tag + i;
	return bad;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"duration", 1, 0, 'D'}, {"name", 1, 0, 'N'}, {"pause-us", 1, 0, 'p'},
		{0, 0, 0, 0},
	};
	struct region slot[SLOTS] = {0};
	double duration = 10;
	unsigned long pause_us = 50000, rounds = 0, forks = 0;
	uint64_t rnd = 12345;
	int c;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'D')
			duration = atof(optarg);
		else if (c == 'N')
			prctl(PR_SET_NAME, optarg, 0, 0, 0);
		else if (c == 'p')
			pause_us = strtoul(optarg, NULL, 0);
		else
			return 2;
	}
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	double end = now() + duration;

	while (!stop && now() < end) {
		rnd = rnd * 6364136223846793005ULL + 1442695040888963407ULL;
		struct region *r = &slot[(rnd >> 33) % SLOTS];

		if (r->mem) {  /* unmap the upper half, or all of it */
			size_t keep = (rnd >> 20) & 1 ? (r->len / 2) & ~(PAGE - 1) : 0;

			if (munmap((char *)r->mem + keep, r->len - keep))
				return 1;
			r->len = keep;
			if (!keep)
				r->mem = NULL;
		} else {
			r->len = (1 + (rnd >> 40) % 8) << 20;
			r->mem = mmap(NULL, r->len, PROT_READ | PROT_WRITE,
				      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (r->mem == MAP_FAILED)
				return 1;
			r->tag = rnd;
			fill(r);
		}
		if (rounds++ % 4 == 0) {
			pid_t pid = fork();

			if (pid == 0) {
				char *m = mmap(NULL, 4 << 20, PROT_READ | PROT_WRITE,
					       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

				for (size_t i = 0; m != MAP_FAILED && i < (4 << 20); i += PAGE)
					m[i] = 1;
				for (int s = 0; s < SLOTS; s++)
					if (slot[s].mem)
						fill(&slot[s]);  /* COW copies */
				usleep(20000);
				_exit(0);
			}
			if (pid > 0) {
				waitpid(pid, NULL, 0);
				forks++;
			}
		}
		usleep(pause_us);
	}
	size_t bad = 0;

	for (int s = 0; s < SLOTS; s++)
		if (slot[s].mem)
			bad += check(&slot[s]);
	printf("churn: %lu rounds, %lu forks, %zu bad words\n", rounds, forks, bad);
	return bad ? 3 : 0;
}
