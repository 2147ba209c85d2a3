// SPDX-License-Identifier: GPL-2.0-only
/*
 * hotset: a process that knows which of its pages are hot.
 *
 * Maps --size MiB of anonymous memory (4 KiB pages, or THP with --thp), optionally faulted
 * in on one NUMA node (--start-node: MPOL_PREFERRED while filling, so a full node spills over
 * instead of invoking the OOM killer; then the default policy again, so the pages may be
 * migrated afterwards), fills every page with a pattern derived from its
 * index, then reads one word of every hot page per pass, forever (or --duration seconds).
 *
 * The hot set (--hot MiB) is a seeded random choice of 4 KiB pages (scattered), or of whole
 * 2 MiB blocks (--dense).  Phase k uses the next slice of one seeded permutation, so the
 * phases' hot sets are disjoint; SIGUSR2 or --phase-after SEC moves to the next phase.
 *
 * It reports what it does, so placement can be checked independently of any tiering daemon
 * (with move_pages(2) node queries on the addresses):
 *   REPORT        (rewritten atomically at start and at every phase change)
 *                 "pid P\nbase 0xADDR\npages N\nthp 0|1\nphase K\nhot H\n" then the H hot
 *                 page indices (page i is at base + 4096 * i), one line, space separated.
 *   REPORT.stat   rewritten every second: "touches T\nelapsed S\nphase K\n" (T: hot-page
 *                 reads since start; the access rate a tiering mechanism lets it reach).
 *   REPORT.verify written after SIGUSR1: "ok N" if every word of every page still holds its
 *                 pattern, else "bad M" (M pages differ): migration must never change data.
 * SIGTERM/SIGINT: exit 0.
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
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define HUGE (2UL << 20)
#define WORDS (PAGE / 8)
#define MPOL_DEFAULT 0
#define MPOL_PREFERRED 1

static volatile sig_atomic_t want_phase, want_verify, want_stop;

static void on_signal(int sig)
{
	if (sig == SIGUSR2)
		want_phase = 1;
	else if (sig == SIGUSR1)
		want_verify = 1;
	else
		want_stop = 1;
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static uint64_t pattern(uint64_t seed, uint64_t page)
{
	uint64_t s = seed ^ (page * 0xD6E8FEB86659FD93ULL);

	return splitmix(&s);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "hotset: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Write PATH atomically (tmp + rename) so a reader never sees half a file. */
static FILE *open_tmp(const char *path, char *tmp, size_t len)
{
	FILE *f;

	snprintf(tmp, len, "%s.tmp", path);
	f = fopen(tmp, "w");
	if (!f)
		die(tmp);
	return f;
}

static void commit_tmp(FILE *f, const char *tmp, const char *path)
{
	if (fclose(f) || rename(tmp, path))
		die(path);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"size", 1, 0, 's'}, {"hot", 1, 0, 'h'}, {"thp", 0, 0, 't'},
		{"dense", 0, 0, 'd'}, {"start-node", 1, 0, 'n'}, {"seed", 1, 0, 'S'},
		{"report", 1, 0, 'r'}, {"name", 1, 0, 'N'}, {"pause-us", 1, 0, 'p'},
		{"phase-after", 1, 0, 'P'}, {"duration", 1, 0, 'D'}, {0, 0, 0, 0},
	};
	unsigned long size_mib = 64, hot_mib = 8, pause_us = 20000;
	double phase_after = 0, duration = 0;
	int thp = 0, dense = 0, start_node = -1, c;
	uint64_t seed = 1;
	const char *report = NULL, *name = NULL;
	char tmp[4200], path[4096];

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 's': size_mib = strtoul(optarg, NULL, 0); break;
		case 'h': hot_mib = strtoul(optarg, NULL, 0); break;
		case 't': thp = 1; break;
		case 'd': dense = 1; break;
		case 'n': start_node = atoi(optarg); break;
		case 'S': seed = strtoull(optarg, NULL, 0); break;
		case 'r': report = optarg; break;
		case 'N': name = optarg; break;
		case 'p': pause_us = strtoul(optarg, NULL, 0); break;
		case 'P': phase_after = atof(optarg); break;
		case 'D': duration = atof(optarg); break;
		default:
			fprintf(stderr, "usage: hotset --size MiB --hot MiB [--thp] [--dense] "
				"[--start-node N] [--seed S] [--report FILE] [--name COMM] "
				"[--pause-us US] [--phase-after SEC] [--duration SEC]\n");
			return 2;
		}
	}
	if (report && strlen(report) > 4000) {
		fprintf(stderr, "hotset: --report path too long\n");
		return 2;
	}
	if (!size_mib || hot_mib > size_mib || (dense && size_mib % 2)) {
		fprintf(stderr, "hotset: need 0 < --hot <= --size (even sizes with --dense)\n");
		return 2;
	}
	if (name)
		prctl(PR_SET_NAME, name, 0, 0, 0);

	size_t len = size_mib << 20, npages = len / PAGE;
	char *raw = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (raw == MAP_FAILED)
		die("mmap");
	uint64_t *mem = (uint64_t *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));

	if (madvise(mem, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE))
		die("madvise");
	if (start_node >= 0) {
		unsigned long mask = 1UL << start_node;

		if (syscall(SYS_set_mempolicy, MPOL_PREFERRED, &mask, 8 * sizeof(mask) + 1))
			die("set_mempolicy");
	}
	for (size_t i = 0; i < npages; i++) {
		uint64_t p = pattern(seed, i), *w = mem + i * WORDS;

		for (size_t j = 0; j < WORDS; j++)
			w[j] = p + j;
	}
	if (start_node >= 0 && syscall(SYS_set_mempolicy, MPOL_DEFAULT, NULL, 0))
		die("set_mempolicy");

	/* One seeded permutation of the units (pages, or 2 MiB blocks with --dense). */
	size_t unit = dense ? HUGE / PAGE : 1, nunits = npages / unit;
	size_t hot_units = (hot_mib << 20) / PAGE / unit, nhot = hot_units * unit;
	uint32_t *perm = malloc(nunits * sizeof(*perm)), *hot = malloc((nhot + 1) * sizeof(*hot));
	uint64_t rs = seed * 7919 + 17;

	if (!perm || !hot)
		die("malloc");
	for (size_t i = 0; i < nunits; i++)
		perm[i] = i;
	for (size_t i = nunits - 1; i > 0; i--) {
		size_t j = splitmix(&rs) % (i + 1);
		uint32_t t = perm[i];

		perm[i] = perm[j];
		perm[j] = t;
	}

	struct sigaction sa = {.sa_handler = on_signal};

	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	unsigned long phase = 0, phases = hot_units ? nunits / hot_units : 1;
	uint64_t touches = 0, sink = 0;
	double start = now(), last_stat = 0, phase_at = start;

	for (;;) {
		/* the hot pages of this phase, then the report that names them */
		size_t first = (phase % (phases ? phases : 1)) * hot_units;

		for (size_t u = 0; u < hot_units; u++)
			for (size_t k = 0; k < unit; k++)
				hot[u * unit + k] = perm[first + u] * unit + k;
		if (report) {
			FILE *f = open_tmp(report, tmp, sizeof(tmp));

			fprintf(f, "pid %d\nbase %#lx\npages %zu\nthp %d\nphase %lu\nhot %zu\n",
				getpid(), (unsigned long)mem, npages, thp, phase, nhot);
			for (size_t i = 0; i < nhot; i++)
				fprintf(f, i ? " %u" : "%u", hot[i]);
			fputc('\n', f);
			commit_tmp(f, tmp, report);
		}
		want_phase = 0;
		while (!want_phase && !want_stop) {
			for (size_t i = 0; i < nhot; i++)
				sink += ((volatile uint64_t *)mem)[hot[i] * WORDS + (touches + i) % WORDS];
			touches += nhot;
			double t = now();

			if (report && t - last_stat >= 1.0) {
				snprintf(path, sizeof(path), "%s.stat", report);
				FILE *f = open_tmp(path, tmp, sizeof(tmp));

				fprintf(f, "touches %llu\nelapsed %.3f\nphase %lu\n",
					(unsigned long long)touches, t - start, phase);
				commit_tmp(f, tmp, path);
				last_stat = t;
			}
			if (want_verify) {
				size_t bad = 0;

				want_verify = 0;
				for (size_t i = 0; i < npages; i++) {
					uint64_t p = pattern(seed, i), *w = mem + i * WORDS;
					size_t j = 0;

					while (j < WORDS && w[j] == p + j)
						j++;
					bad += j < WORDS;
				}
				if (report) {
					snprintf(path, sizeof(path), "%s.verify", report);
					FILE *f = open_tmp(path, tmp, sizeof(tmp));

					fprintf(f, bad ? "bad %zu\n" : "ok %zu\n", bad ? bad : npages);
					commit_tmp(f, tmp, path);
				}
			}
			if (duration > 0 && t - start >= duration)
				want_stop = 1;
			if (phase_after > 0 && t - phase_at >= phase_after) {
				want_phase = 1;
				phase_at = t;
			}
			if (pause_us)
				usleep(pause_us);
		}
		if (want_stop)
			break;
		phase++;
	}
	(void)sink;
	return 0;
}
