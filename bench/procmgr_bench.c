/* procmgr benchmark: synchronization cost and memory on this machine. Prints figures next
 * to the targets of the issue and asserts nothing (bench/README.md says how to read them).
 * Run as root: other users' /proc/PID/maps and map_files need CAP_SYS_PTRACE. */
#include "procmaps.h"
#include "procmgr.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FIRST_RUNS 3
#define RESYNC_ROUNDS 5
#define BIG_LIBS 250
#define BIG_ITERS 1000

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The p-th percentile (0..100) of n sorted values, nearest rank. */
static uint64_t pct(const uint64_t *v, size_t n, unsigned p)
{
	size_t i = (n * p + 99) / 100;

	return n ? v[i ? i - 1 : 0] : 0;
}

/* A BPF handler that does nothing: the bench measures the manager, not the maps. */
static int nop_pid(struct lupe_ebpf_handler *h, pid_t pid)
{
	return 0;
}

static int nop_map(struct lupe_ebpf_handler *h, pid_t pid, const struct lupe_mapping *m)
{
	return 0;
}

static int nop_load(struct lupe_ebpf_handler *h, uint64_t host, const struct lupe_interval_data *d)
{
	return 0;
}

static int nop_unload(struct lupe_ebpf_handler *h, uint64_t host)
{
	return 0;
}

static void nop_free(struct lupe_ebpf_handler *h)
{
	free(h);
}

static const struct lupe_ebpf_handler_ops nop_ops = {
	.new_pid = nop_pid, .delete_pid = nop_pid, .add_mapping = nop_map,
	.delete_mapping = nop_map, .load_deltas = nop_load, .unload_deltas = nop_unload,
	.free = nop_free,
};

static struct lupe_procmgr *manager_new(void)
{
	struct lupe_ebpf_handler *h = calloc(1, sizeof(*h));
	struct lupe_procmgr *pm;

	if (!h)
		return NULL;
	h->ops = &nop_ops;
	{
		LUPE_OPTS(lupe_procmgr_opts, o, .ebpf = h);

		pm = lupe_procmgr__new(&o);
	}
	return pm;
}

/* Every numeric entry of /proc, malloc'd. */
static pid_t *list_pids(size_t *n)
{
	size_t cap = 1024;
	pid_t *pids = malloc(cap * sizeof(*pids));
	struct dirent *de;
	DIR *d = opendir("/proc");

	*n = 0;
	if (!pids || !d) {
		free(pids);
		if (d)
			closedir(d);
		return NULL;
	}
	while ((de = readdir(d))) {
		char *end;
		long pid = strtol(de->d_name, &end, 10);

		if (*end || pid <= 0)
			continue;
		if (*n == cap) {
			pid_t *p = realloc(pids, 2 * cap * sizeof(*pids));

			if (!p)
				break;
			pids = p;
			cap *= 2;
		}
		pids[(*n)++] = (pid_t)pid;
	}
	closedir(d);
	return pids;
}

struct sweep {
	uint64_t ns;
	size_t attempted, ok;
};

static struct sweep sync_all(struct lupe_procmgr *pm, const pid_t *pids, size_t n)
{
	struct sweep s = { .attempted = n };
	uint64_t t0 = now_ns();
	size_t i;

	for (i = 0; i < n; i++)
		s.ok += lupe_procmgr__synchronize_process(pm, pids[i]) == 0;
	s.ns = now_ns() - t0;
	return s;
}

/* ---- a process with 200+ file mappings --------------------------------------------- */

static int write_file(const char *path, const void *buf, size_t len, int flags)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0755);
	int rc;

	if (fd < 0)
		return -errno;
	rc = write(fd, buf, len) == (ssize_t)len ? 0 : -EIO;
	close(fd);
	return rc;
}

static int copy_file(const char *src, const char *dst)
{
	char buf[65536];
	ssize_t n;
	int in = open(src, O_RDONLY | O_CLOEXEC), rc = 0;
	int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);

	if (in < 0 || out < 0)
		rc = -errno;
	while (!rc && (n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, (size_t)n) != n)
			rc = -EIO;
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	return rc;
}

/* Builds nlibs distinct shared libraries in dir: one compiled, the rest copies with a
 * trailer each, so every copy is its own file (inode) with its own file ID. */
static int build_libs(const char *dir, int nlibs)
{
	static const char src[] =
		"int lupe_bench_fn(int x) { return x * 3 + 1; }\n"
		"int lupe_bench_fn2(int x) { return lupe_bench_fn(x) ^ 7; }\n";
	char path[PATH_MAX], base[PATH_MAX], cmd[3 * PATH_MAX];
	int i, err;

	snprintf(path, sizeof(path), "%s/lib.c", dir);
	err = write_file(path, src, sizeof(src) - 1, O_TRUNC);
	if (err)
		return err;
	snprintf(base, sizeof(base), "%s/libbench.so", dir);
	snprintf(cmd, sizeof(cmd), "cc -shared -fPIC -O1 -o '%s' '%s' >/dev/null 2>&1", base, path);
	if (system(cmd) != 0)
		return -ENOEXEC;
	for (i = 0; i < nlibs; i++) {
		char trailer[32];

		snprintf(path, sizeof(path), "%s/libbench%03d.so", dir, i);
		snprintf(trailer, sizeof(trailer), "lupe-bench-%08d", i);
		err = copy_file(base, path);
		if (!err)
			err = write_file(path, trailer, strlen(trailer), O_APPEND);
		if (err)
			return err;
	}
	return 0;
}

/* Forks a child that dlopen()s the libraries and then waits to be killed. Returns its PID
 * (the number it loaded in *loaded), or a negative errno. */
static pid_t spawn_dlopener(const char *dir, int nlibs, int *loaded)
{
	int fds[2];
	pid_t pid;

	if (pipe(fds))
		return -errno;
	pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return -errno;
	}
	if (pid == 0) {
		char path[PATH_MAX];
		int i, n = 0;

		close(fds[0]);
		for (i = 0; i < nlibs; i++) {
			snprintf(path, sizeof(path), "%s/libbench%03d.so", dir, i);
			n += dlopen(path, RTLD_NOW | RTLD_LOCAL) != NULL;
		}
		if (write(fds[1], &n, sizeof(n)) != sizeof(n))
			_exit(1);
		for (;;)
			pause();
	}
	close(fds[1]);
	if (read(fds[0], loaded, sizeof(*loaded)) != sizeof(*loaded)) {
		close(fds[0]);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return -EIO;
	}
	close(fds[0]);
	return pid;
}

struct big_result {
	bool ok;
	int libs;
	uint64_t mappings, first_ns, median_ns, p95_ns, min_ns, max_ns;
	uint64_t read_ns, parse_ns;   /* medians: read() of the maps text; read + parse */
	size_t maps_bytes;
};

/* Median time of reading /proc/PID/maps (the kernel generating the text) and of
 * lupe_procmaps_read (read + parse): what a re-sync costs before any diffing. */
static void bench_maps_read(pid_t pid, uint64_t *lat, struct big_result *r)
{
	struct lupe_procmaps maps = { 0 };
	static char buf[1 << 20];
	char path[64];
	int i;

	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	for (i = 0; i < BIG_ITERS; i++) {
		uint64_t t0 = now_ns();
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		ssize_t n;
		size_t total = 0;

		if (fd < 0)
			return;
		while ((n = read(fd, buf, sizeof(buf))) > 0)
			total += (size_t)n;
		close(fd);
		lat[i] = now_ns() - t0;
		r->maps_bytes = total;
	}
	qsort(lat, BIG_ITERS, sizeof(*lat), cmp_u64);
	r->read_ns = pct(lat, BIG_ITERS, 50);
	for (i = 0; i < BIG_ITERS; i++) {
		uint64_t t0 = now_ns();

		lupe_procmaps_read(NULL, pid, &maps);
		lat[i] = now_ns() - t0;
	}
	lupe_procmaps_release(&maps);
	qsort(lat, BIG_ITERS, sizeof(*lat), cmp_u64);
	r->parse_ns = pct(lat, BIG_ITERS, 50);
}

static struct big_result bench_big_process(void)
{
	struct big_result r = { 0 };
	struct lupe_procmgr_stats st;
	struct lupe_procmgr *pm = NULL;
	char dir[] = "/tmp/lupe-bench-XXXXXX", cmd[64];
	uint64_t *lat = calloc(BIG_ITERS, sizeof(*lat));
	pid_t child = -1;
	int i, err;

	if (!lat || !mkdtemp(dir)) {
		fprintf(stderr, "procmgr_bench: cannot make a temp dir\n");
		free(lat);
		return r;
	}
	err = build_libs(dir, BIG_LIBS);
	if (err) {
		fprintf(stderr, "procmgr_bench: cannot build the libraries (cc -shared): %s\n",
			strerror(-err));
		goto out;
	}
	child = spawn_dlopener(dir, BIG_LIBS, &r.libs);
	if (child < 0) {
		fprintf(stderr, "procmgr_bench: cannot start the child: %s\n", strerror(-child));
		goto out;
	}
	pm = manager_new();
	if (!pm)
		goto out;
	{
		uint64_t t0 = now_ns();

		err = lupe_procmgr__synchronize_process(pm, child);
		r.first_ns = now_ns() - t0;
	}
	if (err) {
		fprintf(stderr, "procmgr_bench: first sync of the child: %s\n", strerror(-err));
		goto out;
	}
	for (i = 0; i < BIG_ITERS; i++) {
		uint64_t t0 = now_ns();

		lupe_procmgr__synchronize_process(pm, child);
		lat[i] = now_ns() - t0;
	}
	qsort(lat, BIG_ITERS, sizeof(*lat), cmp_u64);
	lupe_procmgr__stats(pm, &st);
	r.mappings = st.mappings;
	r.median_ns = pct(lat, BIG_ITERS, 50);
	r.p95_ns = pct(lat, BIG_ITERS, 95);
	r.min_ns = lat[0];
	r.max_ns = lat[BIG_ITERS - 1];
	r.ok = true;
	bench_maps_read(child, lat, &r);
out:
	lupe_procmgr__free(pm);
	if (child > 0) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "procmgr_bench: could not remove %s\n", dir);
	free(lat);
	return r;
}

/* ---- main --------------------------------------------------------------------------- */

int main(void)
{
	struct sweep first[FIRST_RUNS], re[RESYNC_ROUNDS];
	uint64_t first_ns[FIRST_RUNS], re_ns[RESYNC_ROUNDS];
	struct lupe_procmgr_stats st, st_first;
	struct lupe_procmgr *pm = NULL;
	struct big_result big;
	pid_t *pids = NULL;
	size_t npids = 0;
	char cell[64], target[96];
	double per_proc, per_map;
	int i;

	if (geteuid() != 0)
		printf("note: not root: other users' processes count as EPERM and are not measured\n");
	pids = list_pids(&npids);
	if (!pids) {
		fprintf(stderr, "procmgr_bench: cannot list /proc\n");
		return 1;
	}

	/* 1. First synchronization of every process, by a fresh manager each run. The first
	 * run may read files from disk; later ones find them in the page cache. */
	for (i = 0; i < FIRST_RUNS; i++) {
		lupe_procmgr__free(pm);
		pm = manager_new();
		if (!pm) {
			fprintf(stderr, "procmgr_bench: cannot create the manager\n");
			free(pids);
			return 1;
		}
		first[i] = sync_all(pm, pids, npids);
		first_ns[i] = first[i].ns;
	}
	lupe_procmgr__stats(pm, &st_first);

	/* 2. Re-synchronization of every process the last manager knows. */
	free(pids);
	pids = NULL;
	{
		bool *exited = NULL;
		ssize_t n = lupe_procmgr__processes(pm, &pids, &exited);

		free(exited);
		npids = n > 0 ? (size_t)n : 0;
	}
	for (i = 0; i < RESYNC_ROUNDS; i++) {
		re[i] = sync_all(pm, pids, npids);
		re_ns[i] = re[i].ns;
	}
	lupe_procmgr__stats(pm, &st);

	/* 3. One process with 200+ file mappings. */
	big = bench_big_process();

	qsort(first_ns, FIRST_RUNS, sizeof(*first_ns), cmp_u64);
	qsort(re_ns, RESYNC_ROUNDS, sizeof(*re_ns), cmp_u64);
	per_proc = st.processes ? (double)st.memory_bytes / (double)st.processes : 0;
	per_map = st.mappings ? (double)st.memory_bytes / (double)st.mappings : 0;

	printf("1. first sync of every process in /proc (%d fresh managers, files hashed, no stack deltas)\n",
	       FIRST_RUNS);
	for (i = 0; i < FIRST_RUNS; i++)
		printf("   run %d: %.1f ms for %zu PIDs (%zu synced)\n", i + 1, first[i].ns / 1e6,
		       first[i].attempted, first[i].ok);
	printf("   tracked %" PRIu64 " processes, %" PRIu64 " executable file mappings, %" PRIu64
	       " distinct executables, %" PRIu64 " anonymous executable regions\n",
	       st_first.processes, st_first.mappings, st_first.executables, st_first.anon_regions);
	printf("   last run: %" PRIu64 " ELF cache misses (files opened, hashed, parsed), %" PRIu64
	       " hits; gone %" PRIu64 ", EPERM %" PRIu64 ", no mappings %" PRIu64
	       " (kernel threads), open errors %" PRIu64 ", ELF errors %" PRIu64 "\n",
	       st_first.elf_cache_misses, st_first.elf_cache_hits, st_first.sync_esrch,
	       st_first.sync_eperm, st_first.sync_empty, st_first.file_open_errors,
	       st_first.elf_errors);
	printf("2. re-sync of every known process (%d rounds)\n", RESYNC_ROUNDS);
	printf("   median %.2f ms for %zu processes = %.1f us per process (min %.2f, max %.2f ms)\n",
	       re_ns[RESYNC_ROUNDS / 2] / 1e6, npids,
	       npids ? re_ns[RESYNC_ROUNDS / 2] / 1e3 / (double)npids : 0.0, re_ns[0] / 1e6,
	       re_ns[RESYNC_ROUNDS - 1] / 1e6);
	if (big.ok) {
		printf("3. a process with %d dlopen()ed libraries: %" PRIu64 " executable file mappings\n",
		       big.libs, big.mappings);
		printf("   first sync %.2f ms; re-sync over %d iterations: median %.1f us, p95 %.1f us"
		       " (min %.1f, max %.1f)\n", big.first_ns / 1e6, BIG_ITERS, big.median_ns / 1e3,
		       big.p95_ns / 1e3, big.min_ns / 1e3, big.max_ns / 1e3);
		printf("   of which (medians): reading its %zu-byte maps text %.1f us; reading and"
		       " parsing it %.1f us\n", big.maps_bytes, big.read_ns / 1e3, big.parse_ns / 1e3);
	} else {
		printf("3. a process with 200+ mappings: not measured (see above)\n");
	}
	printf("4. memory (manager's own accounting, after step 2): %" PRIu64 " B for %" PRIu64
	       " processes and %" PRIu64 " mappings\n", st.memory_bytes, st.processes, st.mappings);
	printf("   %.0f B per process, %.0f B per mapping (each figure carries all of it)\n",
	       per_proc, per_map);

	printf("\n%-46s %-20s %s\n", "figure", "measured", "target");
	if (big.ok) {
		snprintf(cell, sizeof(cell), "%.3f / %.3f ms", big.median_ns / 1e6, big.p95_ns / 1e6);
		printf("%-46s %-20s %s\n", "re-sync of a 200+-mapping process (median/p95)", cell,
		       "<= 1 ms");
	}
	snprintf(cell, sizeof(cell), "%.3f s", first_ns[FIRST_RUNS / 2] / 1e9);
	printf("%-46s %-20s %s\n", "first sync of every process (median run)", cell, "<= 0.5 s");
	snprintf(cell, sizeof(cell), "%.0f B", per_proc);
	snprintf(target, sizeof(target), "<= 16384 B + 256 B x %.0f mappings",
		 st.processes ? (double)st.mappings / (double)st.processes : 0.0);
	printf("%-46s %-20s %s\n", "memory per process (all of it / processes)", cell, target);
	snprintf(cell, sizeof(cell), "%" PRIu64 " B", st.memory_bytes);
	snprintf(target, sizeof(target), "<= %" PRIu64 " B", st.processes * 16384 + st.mappings * 256);
	printf("%-46s %-20s %s\n", "memory in total", cell, target);
	lupe_procmgr__free(pm);
	free(pids);
	return 0;
}
