/* The tracer against the real kernel: the sampler's records are checked against what the
 * test knows independently (the pids it started, /proc/PID/maps of the sampled process,
 * nm's symbol table of the workload, /proc/kallsyms, waitpid's status). Needs root and
 * BPF; those tests SKIP without. The workload tests/fixtures/src/busy.c is compiled here,
 * with frame pointers (busy) and without (busy_nofp, for the native unwinder). */
#include "ehframe.h"
#include "fileid.h"
#include "log.h"
#include "procmgr.h"
#include "stackdeltas.h"
#include "tracer.h"
#include "unwind.h"
#include "../c/lupe_test.h"

#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/perf_event.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- workload ---------------------------------------------------------------------- */

static char busy_dir[64];
static char busy_path[128];
static char nofp_path[128];

static void remove_busy(void)
{
	char cmd[256];

	if (busy_dir[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", busy_dir);
		if (system(cmd))
			printf("    could not remove %s\n", busy_dir);
	}
}

/* Compiles busy.c once per run; returns 0 or -1. */
static int build_busy(void)
{
	const char *fixtures = getenv("LUPE_FIXTURES");
	char cmd[1024];

	if (busy_path[0])
		return 0;
	if (!fixtures)
		fixtures = "tests/fixtures";
	snprintf(busy_dir, sizeof(busy_dir), "/tmp/lupe-tracer-XXXXXX");
	if (!mkdtemp(busy_dir)) {
		busy_dir[0] = '\0';
		return -1;
	}
	atexit(remove_busy);
	snprintf(busy_path, sizeof(busy_path), "%s/busy", busy_dir);
	snprintf(nofp_path, sizeof(nofp_path), "%s/busy_nofp", busy_dir);
	snprintf(cmd, sizeof(cmd), "cc -O2 -g -fno-omit-frame-pointer -pthread '%s/src/busy.c' -o '%s'"
		 " && cc -O2 -g -fomit-frame-pointer -pthread '%s/src/busy.c' -o '%s'",
		 fixtures, busy_path, fixtures, nofp_path);
	if (system(cmd)) {
		busy_path[0] = '\0';
		return -1;
	}
	return 0;
}

/* Starts argv[0] once go_fd is written to (or at once when go_fd is NULL). */
static pid_t spawn(char *const argv[], int *go_fd)
{
	int p[2] = { -1, -1 };
	pid_t pid;
	char c;

	if (go_fd && pipe2(p, O_CLOEXEC))
		return -1;
	pid = fork();
	if (pid == 0) {
		if (go_fd && read(p[0], &c, 1) != 1)
			_exit(126);
		execv(argv[0], argv);
		_exit(127);
	}
	if (go_fd) {
		close(p[0]);
		*go_fd = p[1];
	}
	return pid;
}

static pid_t spawn_busy(const char *ms, const char *threads)
{
	char *argv[] = { busy_path, (char *)ms, (char *)threads, NULL };

	return spawn(argv, NULL);
}

static void go(int *fd)
{
	char c = 'g';

	if (*fd >= 0 && write(*fd, &c, 1) != 1)
		printf("    failed to release the child\n");
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void reap(pid_t pid)
{
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* ---- collecting records ------------------------------------------------------------ */

struct collected {
	struct lupe_sample *samples;    /* copies: records are borrowed */
	size_t n, cap;
	struct lupe_proc_event events[4096];
	size_t nev;
	bool oom;
};

static int collect_sample(void *ctx, const struct lupe_sample *s)
{
	struct collected *c = ctx;
	size_t len = LUPE_SAMPLE_HDR_SIZE + 8 * ((size_t)s->kernel_len + s->user_len);
	struct lupe_sample *grown;

	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 1024;
		grown = realloc(c->samples, c->cap * sizeof(*grown));
		if (!grown) {
			c->oom = true;
			return -ENOMEM;
		}
		c->samples = grown;
	}
	/* Only the record's length is valid: it is cut after the last frame. */
	memset(&c->samples[c->n], 0, sizeof(c->samples[c->n]));
	memcpy(&c->samples[c->n], s, len);
	c->n++;
	return 0;
}

static int collect_event(void *ctx, const struct lupe_proc_event *e)
{
	struct collected *c = ctx;

	if (c->nev < sizeof(c->events) / sizeof(c->events[0]))
		c->events[c->nev++] = *e;
	return 0;
}

static const struct lupe_tracer_handlers collect_handlers = { collect_sample, collect_event };

static int run_for(struct lupe_tracer *t, int ms, struct collected *c)
{
	long long end = now_ms() + ms;
	int n, total = 0;

	do {
		n = lupe_tracer__poll(t, 50, &collect_handlers, c);
		if (n < 0)
			return n;
		total += n;
	} while (now_ms() < end);
	return total;
}

static void collected_free(struct collected *c)
{
	free(c->samples);
	memset(c, 0, sizeof(*c));
}

static size_t count_pid(const struct collected *c, pid_t pid)
{
	size_t i, n = 0;

	for (i = 0; i < c->n; i++)
		n += c->samples[i].pid == (__u32)pid;
	return n;
}

static const struct lupe_proc_event *find_event(const struct collected *c, __u32 type,
						pid_t pid)
{
	size_t i;

	for (i = 0; i < c->nev; i++)
		if (c->events[i].type == type && c->events[i].pid == (__u32)pid)
			return &c->events[i];
	return NULL;
}

static size_t count_events(const struct collected *c, __u32 type, pid_t pid)
{
	size_t i, n = 0;

	for (i = 0; i < c->nev; i++)
		n += c->events[i].type == type && c->events[i].pid == (__u32)pid;
	return n;
}

/* A tracer, or NULL after SKIP/FAIL has been recorded (the caller returns). */
static struct lupe_tracer *new_tracer(const struct lupe_tracer_opts *opts)
{
	struct lupe_tracer *t;

	lupe_test_state = LUPE_TEST_OK;
	if (geteuid() != 0) {
		lupe_test_state = LUPE_TEST_SKIP;
		snprintf(lupe_test_reason, sizeof(lupe_test_reason), "needs root to load BPF");
		return NULL;
	}
	if (build_busy()) {
		lupe_test_state = LUPE_TEST_FAIL;
		printf("    cannot compile tests/fixtures/src/busy.c with cc\n");
		return NULL;
	}
	t = lupe_tracer__new(opts);
	if (!t && (errno == EPERM || errno == EACCES || errno == EOPNOTSUPP)) {
		lupe_test_state = LUPE_TEST_SKIP;
		snprintf(lupe_test_reason, sizeof(lupe_test_reason), "BPF unavailable here: %s",
			 lupe_errstr(errno));
		return NULL;
	}
	if (!t) {
		lupe_test_state = LUPE_TEST_FAIL;
		printf("    lupe_tracer__new: %s\n", lupe_errstr(errno));
	}
	return t;
}

/* Collects what the tracer logs, to check its errors say what to do. */
struct log_capture {
	char text[2048];
};

static void capture_log(enum lupe_log_level level, const char *msg, void *ctx)
{
	struct log_capture *c = ctx;
	size_t len = strlen(c->text);

	snprintf(c->text + len, sizeof(c->text) - len, "%s\n", msg);
}

/* ---- oracles ----------------------------------------------------------------------- */

struct sym {
	char name[32];
	uint64_t start, size;
};

/* Function symbols of a binary, from nm. */
static int nm_syms_of(const char *path, struct sym *syms, int max)
{
	char cmd[256], line[256], type;
	unsigned long long start, size;
	FILE *f;
	int n = 0;

	snprintf(cmd, sizeof(cmd), "nm -S --defined-only '%s'", path);
	f = popen(cmd, "r");
	if (!f)
		return -1;
	while (n < max && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llx %llx %c %31s", &start, &size, &type, syms[n].name) == 4 &&
		    (type == 't' || type == 'T')) {
			syms[n].start = start;
			syms[n].size = size;
			n++;
		}
	}
	pclose(f);
	return n;
}

static int nm_syms(struct sym *syms, int max)
{
	return nm_syms_of(busy_path, syms, max);
}

static const struct sym *sym_find(const struct sym *syms, int n, const char *name)
{
	int i;

	for (i = 0; i < n; i++)
		if (!strcmp(syms[i].name, name))
			return &syms[i];
	return NULL;
}

/* The executable mapping of path in /proc/pid/maps: its start, end and file offset. */
static int exec_mapping(pid_t pid, const char *path, uint64_t *start, uint64_t *end,
			uint64_t *off)
{
	char file[64], line[512], perms[8], name[256];
	unsigned long long s, e, o;
	FILE *f;
	int found = -1;

	snprintf(file, sizeof(file), "/proc/%d/maps", pid);
	f = fopen(file, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		name[0] = '\0';
		if (sscanf(line, "%llx-%llx %7s %llx %*s %*s %255s", &s, &e, perms, &o, name) < 4)
			continue;
		if (perms[2] == 'x' && !strcmp(name, path)) {
			*start = s;
			*end = e;
			*off = o;
			found = 0;
			break;
		}
	}
	fclose(f);
	return found;
}

/* busy's executable PT_LOAD, from readelf: maps file offsets to ELF addresses. */
struct exec_load {
	uint64_t offset, vaddr, filesz;
};

static int read_exec_load_of(const char *path, struct exec_load *l)
{
	char cmd[256], line[256], flags[8];
	unsigned long long o, v, p, fsz, msz;
	FILE *f;
	int found = -1;

	snprintf(cmd, sizeof(cmd), "readelf -lW '%s'", path);
	f = popen(cmd, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, " LOAD 0x%llx 0x%llx 0x%llx 0x%llx 0x%llx %7[RWE ]", &o, &v, &p,
			   &fsz, &msz, flags) == 6 && strchr(flags, 'E')) {
			l->offset = o;
			l->vaddr = v;
			l->filesz = fsz;
			found = 0;
		}
	}
	pclose(f);
	return found;
}

static int read_exec_load(struct exec_load *l)
{
	return read_exec_load_of(busy_path, l);
}

static int file_off_to_vaddr(const struct exec_load *l, uint64_t off, uint64_t *vaddr)
{
	if (off < l->offset || off >= l->offset + l->filesz)
		return -1;
	*vaddr = off - l->offset + l->vaddr;
	return 0;
}

/* CPU time (user + system) pid has used, in ms, from /proc/PID/stat; -1 if unreadable.
 * cpu-clock fires on a CPU every 1/f s whoever runs, so a process gets about
 * f * its CPU seconds samples: an oracle that holds on a loaded machine too. */
static long long cpu_ms(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long utime, stime;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* Fields after the comm, which may hold spaces: skip to its closing ')'. */
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
			 &utime, &stime) != 2)
		return -1;
	return (utime + stime) * 1000 / sysconf(_SC_CLK_TCK);
}

static int fopen_ulong(const char *path, unsigned long *v)
{
	FILE *f = fopen(path, "r");
	int ok;

	if (!f)
		return -1;
	ok = fscanf(f, "%lu", v) == 1;
	fclose(f);
	return ok ? 0 : -1;
}

/* ---- tests without privileges ------------------------------------------------------ */

TEST(tracer_parse_cpus)
{
	bool on[8];
	char text[256];
	FILE *f;

	ASSERT_EQ(lupe_tracer_parse_cpus("0-1\n", on, 8), 2);
	ASSERT(on[0] && on[1] && !on[2]);
	ASSERT_EQ(lupe_tracer_parse_cpus("0,2-3,7", on, 8), 4);
	ASSERT(on[0] && !on[1] && on[2] && on[3] && !on[4] && on[7]);
	/* CPUs past n are counted, not stored. */
	ASSERT_EQ(lupe_tracer_parse_cpus("6-9", on, 8), 4);
	ASSERT(on[6] && on[7] && !on[0]);
	ASSERT_EQ(lupe_tracer_parse_cpus("", on, 8), 0);
	ASSERT_EQ(lupe_tracer_parse_cpus("\n", on, 8), 0);
	ASSERT_EQ(lupe_tracer_parse_cpus("3-1", on, 8), -EINVAL);
	ASSERT_EQ(lupe_tracer_parse_cpus("1-", on, 8), -EINVAL);
	ASSERT_EQ(lupe_tracer_parse_cpus("a", on, 8), -EINVAL);
	ASSERT_EQ(lupe_tracer_parse_cpus("1,,2", on, 8), -EINVAL);
	ASSERT_EQ(lupe_tracer_parse_cpus("1 2", on, 8), -EINVAL);
	ASSERT_EQ(lupe_tracer_parse_cpus("99999999999", on, 8), -EINVAL);
	ASSERT_EQ(lupe_tracer_parse_cpus(NULL, on, 8), -EINVAL);
	/* The machine's possible mask, against libbpf's own parser. */
	f = fopen("/sys/devices/system/cpu/possible", "r");
	if (!f)
		SKIP("no /sys/devices/system/cpu/possible");
	if (!fgets(text, sizeof(text), f))
		text[0] = '\0';
	fclose(f);
	ASSERT_EQ(lupe_tracer_parse_cpus(text, NULL, 0), libbpf_num_possible_cpus());
}

TEST(tracer_rejects_bad_opts)
{
	struct lupe_tracer_opts big[2];
	struct log_capture log = { "" };
	struct lupe_tracer *t;

	lupe_set_print(capture_log, &log);

	{
		LUPE_OPTS(lupe_tracer_opts, o, .ringbuf_bytes = 12345);
		t = lupe_tracer__new(&o);
		ASSERT(!t);
		ASSERT_EQ(errno, EINVAL);
	}
	{
		LUPE_OPTS(lupe_tracer_opts, o, .events_ringbuf_bytes = 1024);
		t = lupe_tracer__new(&o);
		ASSERT(!t);
		ASSERT_EQ(errno, EINVAL);
	}
	/* A "newer" caller whose unknown trailing fields are set. */
	memset(big, 0, sizeof(big));
	big[0].sz = sizeof(big);
	((char *)big)[sizeof(big[0]) + 3] = 1;
	t = lupe_tracer__new(&big[0]);
	ASSERT(!t);
	ASSERT_EQ(errno, EINVAL);
	{
		LUPE_OPTS(lupe_tracer_opts, o);
		o.sz = 1;
		t = lupe_tracer__new(&o);
		ASSERT(!t);
		ASSERT_EQ(errno, EINVAL);
	}
	lupe_set_print(NULL, NULL);
	ASSERT(strstr(log.text, "must be a power of two"));
	ASSERT(strstr(log.text, "invalid opts"));
	lupe_tracer__free(NULL);
}

/* ---- tests with BPF ---------------------------------------------------------------- */

TEST(tracer_pid_target_sees_busy_stacks)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999, .start_paused = true);
	struct exec_load load = { 0 };
	struct collected c = { 0 };
	struct lupe_tracer_stats st;
	struct lupe_tracer *t;
	struct sym syms[64];
	const struct sym *inner, *mainf;
	uint64_t mstart = 0, mend = 0, moff = 0, vaddr;
	pid_t busy, other;
	size_t i, j, mine = 0, in_text = 0, in_inner = 0, caller_seen = 0, bad_comm = 0;
	long long cpu0, cpu1, expect;
	int nsyms, err, maps_err;

	t = new_tracer(&o);
	if (!t)
		return;
	busy = spawn_busy("20000", NULL);
	other = spawn_busy("20000", NULL);
	usleep(100 * 1000); /* past exec: its maps now show the busy binary */
	err = lupe_tracer__target_pids(t, &busy, 1);
	cpu0 = cpu_ms(busy);
	if (!err)
		err = lupe_tracer__resume(t);
	if (!err)
		err = run_for(t, 1100, &c);
	if (err >= 0)
		err = lupe_tracer__pause(t);
	cpu1 = cpu_ms(busy);
	if (!err)
		err = run_for(t, 50, &c);
	/* The process must still run while its maps are read. */
	maps_err = exec_mapping(busy, busy_path, &mstart, &mend, &moff);
	reap(busy);
	reap(other);
	if (err >= 0)
		err = lupe_tracer__stats(t, &st);
	lupe_tracer__free(t);
	if (err < 0)
		FAIL("tracer: %s", lupe_errstr(err));
	ASSERT_OK(maps_err);
	ASSERT_OK(read_exec_load(&load));
	nsyms = nm_syms(syms, 64);
	inner = sym_find(syms, nsyms, "hot_inner");
	mainf = sym_find(syms, nsyms, "main");
	ASSERT(inner && mainf);

	for (i = 0; i < c.n; i++) {
		const struct lupe_sample *s = &c.samples[i];
		uint64_t ip;

		if (s->pid != (__u32)busy)
			continue;
		mine++;
		bad_comm += strcmp(s->comm, "busy") != 0;
		if (!s->user_len)
			continue;
		ip = s->frames[s->kernel_len];
		if (ip < mstart || ip >= mend)
			continue;
		in_text++;
		if (file_off_to_vaddr(&load, ip - mstart + moff, &vaddr))
			continue;
		if (vaddr >= inner->start && vaddr < inner->start + inner->size)
			in_inner++;
		/* main, among the return addresses (hot_middle may be missing: GCC gives the
		 * leaf hot_inner no frame, so the walk goes from it straight to main). */
		for (j = s->kernel_len + 1; j < (size_t)s->kernel_len + s->user_len; j++) {
			uint64_t ra = s->frames[j], rv;

			if (ra < mstart || ra >= mend ||
			    file_off_to_vaddr(&load, ra - mstart + moff, &rv))
				continue;
			if (rv > mainf->start && rv <= mainf->start + mainf->size) {
				caller_seen++;
				break;
			}
		}
	}
	expect = (cpu1 - cpu0) * 999 / 1000;
	printf("    %zu samples of busy (%lld expected from its CPU time), %zu in its text, "
	       "%zu in hot_inner, %zu with main as a caller; stats: seen %llu filtered %llu idle %llu "
	       "emitted %llu\n", mine, expect, in_text, in_inner, caller_seen,
	       (unsigned long long)st.samples_seen, (unsigned long long)st.filtered,
	       (unsigned long long)st.idle, (unsigned long long)st.emitted);
	ASSERT(!c.oom);
	ASSERT(cpu0 >= 0 && cpu1 >= 0);
	/* Only the target was emitted; the other busy was filtered. */
	ASSERT_EQ(mine, c.n);
	/* Alone on an idle CPU busy gets ~1000; on a loaded machine, what its CPU time buys. */
	ASSERT(mine >= 100);
	ASSERT(mine >= (size_t)(expect * 6 / 10) && mine <= (size_t)(expect * 16 / 10 + 30));
	ASSERT_EQ(bad_comm, 0);
	ASSERT(st.filtered >= 50);
	/* Nearly every sample lands in hot_inner (a few in the clock_gettime loop). */
	ASSERT(in_text >= mine * 8 / 10);
	ASSERT(in_inner >= mine * 8 / 10);
	ASSERT(caller_seen >= in_inner * 9 / 10);
	collected_free(&c);
}

TEST(tracer_system_wide_sees_many_pids)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999);
	struct collected c = { 0 };
	struct lupe_tracer *t;
	pid_t a, b, pids[64];
	size_t i, j, npids = 0;
	int n;

	t = new_tracer(&o);
	if (!t)
		return;
	/* Started before targeting: NEW_PID, not exec/fork, must make them known... */
	a = spawn_busy("3000", NULL);
	b = spawn_busy("3000", NULL);
	usleep(50 * 1000);
	n = run_for(t, 600, &c);
	reap(a);
	reap(b);
	lupe_tracer__free(t);
	if (n < 0)
		FAIL("poll: %s", lupe_errstr(n));
	for (i = 0; i < c.n; i++) {
		for (j = 0; j < npids && pids[j] != (pid_t)c.samples[i].pid; j++)
			;
		if (j == npids && npids < 64)
			pids[npids++] = c.samples[i].pid;
		ASSERT(c.samples[i].pid != 0); /* idle is never emitted */
	}
	ASSERT(npids >= 2);
	ASSERT(count_pid(&c, a) >= 50);
	ASSERT(count_pid(&c, b) >= 50);
	/* ...but here they were forked and exec'd while the tracer ran: both reported. */
	ASSERT(find_event(&c, LUPE_EV_FORK, a));
	ASSERT(find_event(&c, LUPE_EV_EXEC, a));
	ASSERT_STREQ(find_event(&c, LUPE_EV_EXEC, a)->comm, "busy");
	ASSERT(find_event(&c, LUPE_EV_FORK, b));
	ASSERT_EQ(find_event(&c, LUPE_EV_FORK, b)->ppid, getpid());
	/* Reported by fork already: no NEW_PID. */
	ASSERT(!find_event(&c, LUPE_EV_NEW_PID, a));
	collected_free(&c);
}

TEST(tracer_new_pid_reports_older_processes)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999);
	struct collected c = { 0 };
	const struct lupe_proc_event *e;
	struct lupe_tracer *t;
	pid_t busy;
	int n;

	if (geteuid() == 0 && build_busy() == 0)
		busy = spawn_busy("3000", NULL);
	else
		busy = -1;
	usleep(100 * 1000);
	/* The tracer starts after busy's fork and exec. */
	t = new_tracer(&o);
	if (!t) {
		reap(busy);
		return;
	}
	n = lupe_tracer__target_add_pid(t, busy);
	if (!n)
		n = run_for(t, 400, &c);
	reap(busy);
	lupe_tracer__free(t);
	if (n < 0)
		FAIL("tracer: %s", lupe_errstr(n));
	ASSERT(count_pid(&c, busy) >= 50);
	e = find_event(&c, LUPE_EV_NEW_PID, busy);
	ASSERT(e);
	ASSERT_EQ(count_events(&c, LUPE_EV_NEW_PID, busy), 1);
	ASSERT_EQ(e->ppid, getpid());
	ASSERT_STREQ(e->comm, "busy");
	collected_free(&c);
}

TEST(tracer_follows_descendants)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999, .start_paused = true);
	struct collected c = { 0 };
	struct lupe_tracer *t;
	char script[512];
	char *argv[] = { "/bin/sh", "-c", script, NULL };
	pid_t sh, kids[8], other;
	size_t i, j, nkids = 0, from_kids = 0, strangers = 0;
	int go_fd = -1, status = -1, err;

	t = new_tracer(&o);
	if (!t)
		return;
	snprintf(script, sizeof(script), "'%s' 300 & '%s' 300; wait", busy_path, busy_path);
	sh = spawn(argv, &go_fd);
	other = spawn_busy("1500", NULL);
	err = lupe_tracer__follow_pid(t, sh);
	if (!err)
		err = lupe_tracer__resume(t);
	go(&go_fd);
	if (!err)
		err = run_for(t, 500, &c);
	waitpid(sh, &status, 0);
	if (err >= 0)
		err = run_for(t, 100, &c);
	reap(other);
	lupe_tracer__free(t);
	if (err < 0)
		FAIL("tracer: %s", lupe_errstr(err));
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	/* sh's children, as the fork events say; each exec'd busy. */
	for (i = 0; i < c.nev; i++)
		if (c.events[i].type == LUPE_EV_FORK && c.events[i].ppid == (__u32)sh && nkids < 8)
			kids[nkids++] = c.events[i].pid;
	ASSERT_EQ(nkids, 2);
	for (i = 0; i < nkids; i++) {
		ASSERT(find_event(&c, LUPE_EV_EXEC, kids[i]));
		ASSERT_STREQ(find_event(&c, LUPE_EV_EXEC, kids[i])->comm, "busy");
		ASSERT_EQ(count_events(&c, LUPE_EV_EXIT, kids[i]), 1);
	}
	ASSERT(find_event(&c, LUPE_EV_EXEC, sh));
	ASSERT_EQ(count_events(&c, LUPE_EV_EXIT, sh), 1);
	ASSERT_EQ(find_event(&c, LUPE_EV_EXIT, sh)->exit_code, status);
	for (i = 0; i < c.n; i++) {
		for (j = 0; j < nkids && kids[j] != (pid_t)c.samples[i].pid; j++)
			;
		if (j < nkids)
			from_kids++;
		else if (c.samples[i].pid != (__u32)sh)
			strangers++;
	}
	printf("    %zu samples from the grandchildren, %zu from others\n", from_kids, strangers);
	ASSERT(from_kids >= 50);
	ASSERT_EQ(strangers, 0);
	ASSERT_EQ(count_pid(&c, other), 0);
	collected_free(&c);
}

/* Drops what was sampled under the previous target (a sample in flight on another CPU
 * when the target changed). */
static int settle(struct lupe_tracer *t)
{
	usleep(10 * 1000);
	return lupe_tracer__poll(t, 0, NULL, NULL);
}

TEST(tracer_retargets_live)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999, .start_paused = true);
	struct collected only_a = { 0 }, only_b = { 0 }, all = { 0 }, back_to_a = { 0 };
	struct lupe_tracer *t;
	const char *step;
	pid_t a, b;
	int err;

	t = new_tracer(&o);
	if (!t)
		return;
	a = spawn_busy("5000", NULL);
	b = spawn_busy("5000", NULL);
	step = "target a";
	err = lupe_tracer__target_pids(t, &a, 1);
	if (!err)
		err = lupe_tracer__resume(t);
	if (!err)
		err = run_for(t, 300, &only_a);
	if (err < 0)
		goto out;
	step = "replace with b";
	err = lupe_tracer__target_pids(t, &b, 1);
	if (!err)
		err = settle(t);
	if (err >= 0)
		err = run_for(t, 300, &only_b);
	if (err < 0)
		goto out;
	step = "all";
	err = lupe_tracer__target_all(t);
	if (!err)
		err = run_for(t, 300, &all);
	if (err < 0)
		goto out;
	step = "add a";
	err = lupe_tracer__target_add_pid(t, a);
	if (!err)
		err = settle(t);
	if (err >= 0)
		err = run_for(t, 300, &back_to_a);
out:
	reap(a);
	reap(b);
	lupe_tracer__free(t);
	if (err < 0)
		FAIL("%s: %s", step, lupe_errstr(err));
	ASSERT(count_pid(&only_a, a) >= 30);
	ASSERT_EQ(count_pid(&only_a, a), only_a.n);
	ASSERT(count_pid(&only_b, b) >= 30);
	ASSERT_EQ(count_pid(&only_b, b), only_b.n);
	ASSERT(count_pid(&all, a) >= 30 && count_pid(&all, b) >= 30);
	/* Adding a pid outside pid mode starts a new set: b is no longer a target. */
	ASSERT(count_pid(&back_to_a, a) >= 30);
	ASSERT_EQ(count_pid(&back_to_a, a), back_to_a.n);
	/* Bad arguments. */
	ASSERT_EQ(lupe_tracer__target_add_pid(NULL, 1), -EINVAL);
	collected_free(&only_a);
	collected_free(&only_b);
	collected_free(&all);
	collected_free(&back_to_a);
}

/* Following more processes than max_pids holds: the forks that do not fit are counted. */
TEST(tracer_follow_overflow_is_counted)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 99, .max_pids = 2);
	char *argv[] = { "/bin/sh", "-c", "sleep 0.3 & sleep 0.3 & sleep 0.3 & wait", NULL };
	struct lupe_tracer_stats st;
	struct lupe_tracer *t;
	pid_t pids[3] = { 1, 2, 3 };
	int go_fd = -1, err, status;
	pid_t sh;

	t = new_tracer(&o);
	if (!t)
		return;
	ASSERT_EQ(lupe_tracer__target_pids(t, pids, 3), -E2BIG);
	sh = spawn(argv, &go_fd);
	err = lupe_tracer__follow_pid(t, sh);
	go(&go_fd);
	waitpid(sh, &status, 0);
	if (!err)
		err = lupe_tracer__stats(t, &st);
	lupe_tracer__free(t);
	ASSERT_OK(err);
	/* sh and its first child fill the set; the other two children do not fit. */
	ASSERT_EQ(st.follow_full, 2);
}

TEST(tracer_exit_reported_once_per_process)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 99);
	struct collected c = { 0 };
	struct lupe_tracer *t;
	char *argv[] = { "/bin/sh", "-c", "exit 3", NULL };
	pid_t busy, sh;
	int status = -1, sh_status = -1, go_fd = -1, err;

	t = new_tracer(&o);
	if (!t)
		return;
	busy = spawn_busy("200", "4");
	sh = spawn(argv, &go_fd);
	err = lupe_tracer__target_pids(t, (pid_t[]){ busy, sh }, 2);
	go(&go_fd);
	waitpid(busy, &status, 0);
	waitpid(sh, &sh_status, 0);
	if (!err)
		err = run_for(t, 100, &c);
	lupe_tracer__free(t);
	if (err < 0)
		FAIL("tracer: %s", lupe_errstr(err));
	/* Four threads exit, one process does. */
	ASSERT_EQ(count_events(&c, LUPE_EV_EXIT, busy), 1);
	ASSERT_EQ(find_event(&c, LUPE_EV_EXIT, busy)->exit_code, status);
	ASSERT_EQ(count_events(&c, LUPE_EV_EXIT, sh), 1);
	ASSERT(WIFEXITED(sh_status) && WEXITSTATUS(sh_status) == 3);
	ASSERT_EQ(find_event(&c, LUPE_EV_EXIT, sh)->exit_code, sh_status);
	collected_free(&c);
}

TEST(tracer_kernel_stacks_in_kernel_text)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999, .start_paused = true);
	struct collected c = { 0 };
	struct lupe_tracer *t;
	char *argv[] = { "/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=64k", NULL };
	unsigned long long addr, stext = 0, etext = 0;
	char line[256], name[128], type;
	size_t i, kmode = 0, ktext = 0, with_user = 0, mismatch = 0;
	pid_t dd;
	FILE *f;
	int err, go_fd = -1;

	f = fopen("/proc/kallsyms", "r");
	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llx %c %127s", &addr, &type, name) != 3)
			continue;
		if (!strcmp(name, "_stext"))
			stext = addr;
		else if (!strcmp(name, "_etext"))
			etext = addr;
	}
	if (f)
		fclose(f);
	if (!stext || !etext)
		SKIP("no _stext/_etext in /proc/kallsyms (kptr_restrict?)");
	t = new_tracer(&o);
	if (!t)
		return;
	dd = spawn(argv, &go_fd);
	err = lupe_tracer__target_add_pid(t, dd);
	if (!err)
		err = lupe_tracer__resume(t);
	go(&go_fd);
	if (!err)
		err = run_for(t, 500, &c);
	reap(dd);
	lupe_tracer__free(t);
	if (err < 0)
		FAIL("tracer: %s", lupe_errstr(err));
	for (i = 0; i < c.n; i++) {
		const struct lupe_sample *s = &c.samples[i];
		bool kernel_ip = s->kernel_len && s->frames[0] >= stext && s->frames[0] < etext;

		if (s->pid != (__u32)dd || strcmp(s->comm, "dd"))
			continue;
		if (s->flags & LUPE_SAMPLE_KERNEL_MODE) {
			kmode++;
			ktext += kernel_ip;
			/* The user part comes from the task's saved user registers. */
			with_user += s->user_len > 0;
		} else {
			mismatch += s->kernel_len != 0;
		}
	}
	printf("    dd: %zu kernel-mode samples, %zu in kernel text, %zu with a user stack\n",
	       kmode, ktext, with_user);
	ASSERT(kmode >= 50);
	ASSERT(ktext >= kmode * 9 / 10);
	ASSERT(with_user >= kmode * 9 / 10);
	ASSERT_EQ(mismatch, 0);
	collected_free(&c);
}

TEST(tracer_stats_add_up)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999);
	struct collected c = { 0 };
	struct lupe_tracer_stats st;
	struct lupe_tracer *t;
	pid_t busy;
	int err;

	t = new_tracer(&o);
	if (!t)
		return;
	busy = spawn_busy("2000", NULL);
	err = run_for(t, 500, &c);
	if (err >= 0)
		err = lupe_tracer__pause(t);
	/* Paused: whatever was submitted gets drained, and the counters stop. */
	if (!err)
		err = run_for(t, 100, &c);
	if (err >= 0)
		err = lupe_tracer__stats(t, &st);
	reap(busy);
	lupe_tracer__free(t);
	if (err < 0)
		FAIL("tracer: %s", lupe_errstr(err));
	printf("    seen %llu = idle %llu + filtered %llu + emitted %llu + lost %llu; "
	       "read %llu, events %llu/%llu\n", (unsigned long long)st.samples_seen,
	       (unsigned long long)st.idle, (unsigned long long)st.filtered,
	       (unsigned long long)st.emitted, (unsigned long long)st.ringbuf_full,
	       (unsigned long long)st.samples_read, (unsigned long long)st.events_read,
	       (unsigned long long)st.events_emitted);
	ASSERT(st.samples_seen >= 200);
	ASSERT_EQ(st.samples_seen, st.idle + st.filtered + st.emitted + st.ringbuf_full);
	ASSERT_EQ(st.ringbuf_full, 0);
	ASSERT_EQ(st.bad_records, 0);
	ASSERT_EQ(st.emitted, c.n);
	ASSERT_EQ(st.samples_read, c.n);
	ASSERT_EQ(st.events_read, c.nev);
	ASSERT_EQ(st.events_emitted, c.nev);
	ASSERT_EQ(st.events_lost, 0);
	ASSERT_EQ(st.ncpus, sysconf(_SC_NPROCESSORS_ONLN));
	collected_free(&c);
}

TEST(tracer_frequency_pause_resume)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999, .start_paused = true);
	struct collected fast = { 0 }, slow = { 0 }, paused = { 0 }, resumed = { 0 };
	struct lupe_tracer *t;
	unsigned long max_rate;
	long long cpu[4] = { 0 };
	struct log_capture log = { "" };
	double fast_hz, slow_hz;
	const char *step;
	pid_t busy;
	size_t nfast, nslow, npaused, nresumed;
	int err;

	t = new_tracer(&o);
	if (!t)
		return;
	busy = spawn_busy("20000", NULL);
	step = "target";
	err = lupe_tracer__target_add_pid(t, busy);
	if (err)
		goto out;
	step = "999 Hz";
	cpu[0] = cpu_ms(busy);
	err = lupe_tracer__resume(t);
	if (!err)
		err = run_for(t, 1000, &fast);
	cpu[1] = cpu_ms(busy);
	if (err < 0)
		goto out;
	step = "set 99 Hz";
	err = lupe_tracer__set_frequency(t, 99);
	if (err)
		goto out;
	step = "99 Hz";
	err = lupe_tracer__poll(t, 0, NULL, NULL); /* the 999 Hz leftovers */
	cpu[2] = cpu_ms(busy);
	if (err >= 0)
		err = run_for(t, 1500, &slow);
	cpu[3] = cpu_ms(busy);
	if (err < 0)
		goto out;
	step = "pause";
	err = lupe_tracer__pause(t);
	if (!err)
		err = lupe_tracer__poll(t, 0, NULL, NULL);
	if (err >= 0)
		err = run_for(t, 300, &paused);
	if (err < 0)
		goto out;
	step = "resume";
	err = lupe_tracer__resume(t);
	if (!err)
		err = run_for(t, 300, &resumed);
	if (err < 0)
		goto out;
	/* Paused again: should a bad frequency get through, it must not storm the machine
	 * (the kernel's ioctl takes any frequency, 100 MHz included). */
	step = "pause again";
	err = lupe_tracer__pause(t);
	if (err)
		goto out;
	step = "set 0 Hz";
	err = lupe_tracer__set_frequency(t, 0) == -EINVAL ? 0 : -EPROTO;
	if (err)
		goto out;
	step = "set above kernel.perf_event_max_sample_rate";
	lupe_set_print(capture_log, &log);
	if (!fopen_ulong("/proc/sys/kernel/perf_event_max_sample_rate", &max_rate) &&
	    max_rate < UINT_MAX)
		err = lupe_tracer__set_frequency(t, max_rate + 1) == -EINVAL ? 0 : -EPROTO;
	lupe_set_print(NULL, NULL);
	if (!err && !strstr(log.text, "perf_event_max_sample_rate"))
		err = -EPROTO;
	if (err)
		goto out;
	step = "frequency kept";
	err = lupe_tracer__frequency(t) == 99 ? 0 : -EPROTO;
out:
	reap(busy);
	lupe_tracer__free(t);
	if (err < 0)
		FAIL("%s: %s", step, lupe_errstr(err));
	nfast = count_pid(&fast, busy);
	nslow = count_pid(&slow, busy);
	npaused = count_pid(&paused, busy);
	nresumed = count_pid(&resumed, busy);
	/* Samples per CPU second of busy: the frequency, give or take the tick-based CPU
	 * time accounting and steal time. */
	ASSERT(cpu[1] - cpu[0] >= 200 && cpu[3] - cpu[2] >= 200);
	fast_hz = nfast * 1000.0 / (cpu[1] - cpu[0]);
	slow_hz = nslow * 1000.0 / (cpu[3] - cpu[2]);
	printf("    busy: %.0f samples per CPU second at 999 Hz, %.0f at 99 Hz, %zu paused, "
	       "%zu in 0.3 s resumed\n", fast_hz, slow_hz, npaused, nresumed);
	ASSERT(fast_hz >= 600 && fast_hz <= 1600);
	ASSERT(slow_hz >= 60 && slow_hz <= 160);
	ASSERT_EQ(npaused, 0);
	ASSERT(nresumed >= 3);
	collected_free(&fast);
	collected_free(&slow);
	collected_free(&paused);
	collected_free(&resumed);
}

static void on_alarm(int sig)
{
}

TEST(tracer_poll_returns_eintr)
{
	struct sigaction sa, old;
	struct lupe_tracer *t;
	long long start, took;
	int r;

	t = new_tracer(NULL);
	if (!t)
		return;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm; /* no SA_RESTART */
	sigaction(SIGALRM, &sa, &old);
	start = now_ms();
	ualarm(100 * 1000, 0);
	r = lupe_tracer__poll(t, 5000, NULL, NULL);
	took = now_ms() - start;
	sigaction(SIGALRM, &old, NULL);
	ASSERT_EQ(lupe_tracer__poll(t, -1, NULL, NULL), -EINVAL);
	lupe_tracer__free(t);
	ASSERT_EQ(r, -EINTR);
	ASSERT(took < 1000);
}

static int stop_sample(void *ctx, const struct lupe_sample *s)
{
	(*(int *)ctx)++;
	return -ECANCELED;
}

TEST(tracer_handler_error_is_returned)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999);
	struct lupe_tracer_handlers h = { stop_sample, NULL };
	struct lupe_tracer *t;
	pid_t busy;
	int calls = 0, r;

	t = new_tracer(&o);
	if (!t)
		return;
	busy = spawn_busy("1000", NULL);
	usleep(300 * 1000);
	r = lupe_tracer__poll(t, 0, &h, &calls);
	reap(busy);
	lupe_tracer__free(t);
	ASSERT_EQ(r, -ECANCELED);
	ASSERT_EQ(calls, 1);
}

TEST(tracer_without_stacks)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999, .no_kernel_stacks = true,
		  .no_user_stacks = true, .ringbuf_bytes = 1 << 16);
	struct collected c = { 0 };
	struct lupe_tracer *t;
	pid_t busy;
	size_t i, with_frames = 0;
	int n;

	t = new_tracer(&o);
	if (!t)
		return;
	busy = spawn_busy("1000", NULL);
	n = run_for(t, 400, &c);
	reap(busy);
	lupe_tracer__free(t);
	if (n < 0)
		FAIL("poll: %s", lupe_errstr(n));
	for (i = 0; i < c.n; i++)
		with_frames += c.samples[i].kernel_len + c.samples[i].user_len != 0;
	ASSERT(count_pid(&c, busy) >= 50);
	ASSERT_EQ(with_frames, 0);
	collected_free(&c);
}

static int cgroup2_root(char *out, size_t size)
{
	char line[512], dev[64], dir[256], fstype[64];
	FILE *f = fopen("/proc/mounts", "r");
	int err = -1;

	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%63s %255s %63s", dev, dir, fstype) == 3 &&
		    !strcmp(fstype, "cgroup2")) {
			snprintf(out, size, "%s", dir);
			err = 0;
			break;
		}
	}
	if (f)
		fclose(f);
	return err;
}

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), err = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		err = -errno;
	close(fd);
	return err;
}

TEST(tracer_cgroup_target)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999, .start_paused = true);
	struct collected c = { 0 };
	struct lupe_tracer *t;
	char root[256], parent[300], child[320], procs[340], pidtext[32];
	struct stat sb;
	pid_t inside, outside;
	int err = 0, go_fd = -1;
	char *argv[] = { busy_path, "20000", NULL };

	if (cgroup2_root(root, sizeof(root)))
		SKIP("no cgroup2 mount");
	t = new_tracer(&o);
	if (!t)
		return;
	/* Target the parent: a task in a cgroup below it matches too. */
	snprintf(parent, sizeof(parent), "%s/lupe-tracer-%d", root, getpid());
	snprintf(child, sizeof(child), "%s/leaf", parent);
	snprintf(procs, sizeof(procs), "%s/cgroup.procs", child);
	if (mkdir(parent, 0755) || mkdir(child, 0755) || stat(parent, &sb)) {
		err = -errno;
		rmdir(child);
		rmdir(parent);
		lupe_tracer__free(t);
		SKIP("cannot create a cgroup under %s: %s", root, lupe_errstr(err));
	}
	inside = spawn(argv, &go_fd);
	snprintf(pidtext, sizeof(pidtext), "%d\n", inside);
	err = write_file(procs, pidtext);
	go(&go_fd);
	outside = spawn_busy("20000", NULL);
	if (!err)
		err = lupe_tracer__target_cgroup(t, sb.st_ino);
	if (!err)
		err = lupe_tracer__resume(t);
	if (!err)
		err = run_for(t, 700, &c);
	reap(inside);
	reap(outside);
	lupe_tracer__free(t);
	rmdir(child);
	rmdir(parent);
	if (err < 0)
		FAIL("cgroup '%s': %s", child, lupe_errstr(err));
	printf("    %zu samples in the cgroup, %zu outside\n", count_pid(&c, inside),
	       c.n - count_pid(&c, inside));
	for (size_t i = 0; i < c.n; i++)
		if (c.samples[i].pid != (__u32)inside)
			printf("    outside: pid %u comm %s\n", c.samples[i].pid, c.samples[i].comm);
	ASSERT(count_pid(&c, inside) >= 50);
	ASSERT_EQ(count_pid(&c, inside), c.n);
	collected_free(&c);
}

TEST(tracer_missing_event_is_enoent)
{
	LUPE_OPTS(lupe_tracer_opts, o, .custom_event = true, .event_type = PERF_TYPE_HARDWARE,
		  .event_config = PERF_COUNT_HW_CPU_CYCLES, .frequency = 99);
	struct log_capture log = { "" };
	struct perf_event_attr attr;
	struct lupe_tracer *t;
	int fd, oracle, err;

	if (geteuid() != 0)
		SKIP("needs root");
	/* The oracle: can this machine sample cycles at all? */
	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.type = PERF_TYPE_HARDWARE;
	attr.config = PERF_COUNT_HW_CPU_CYCLES;
	attr.freq = 1;
	attr.sample_freq = 99;
	fd = syscall(SYS_perf_event_open, &attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
	oracle = fd >= 0 ? 0 : errno;
	if (fd >= 0)
		close(fd);
	lupe_set_print(capture_log, &log);
	t = lupe_tracer__new(&o);
	err = errno;
	lupe_set_print(NULL, NULL);
	if (!t && err == EPERM)
		SKIP("BPF unavailable here: %s", lupe_errstr(err));
	if (oracle == 0) {
		ASSERT(t);
	} else {
		ASSERT(!t);
		ASSERT_EQ(err, oracle);
		/* The message names the way out. */
		ASSERT(strstr(log.text, "use cpu-clock"));
	}
	lupe_tracer__free(t);
}

/* Without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (root or not), loading fails with
 * EPERM and the message says which privileges lupe needs. Run in a child that drops
 * the capabilities. */
TEST(tracer_without_privileges_says_why)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];
	struct log_capture log = { "" };
	struct lupe_tracer *t;
	int status = -1;
	pid_t child;

	if (geteuid() != 0)
		SKIP("needs root (to drop its capabilities)");
	child = fork();
	if (child == 0) {
		if (syscall(SYS_capget, &hdr, data))
			_exit(10);
		data[0].effective &= ~(1u << CAP_SYS_ADMIN);
		data[1].effective &= ~((1u << (38 - 32)) | (1u << (39 - 32))); /* PERFMON, BPF */
		if (syscall(SYS_capset, &hdr, data))
			_exit(11);
		lupe_set_print(capture_log, &log);
		t = lupe_tracer__new(NULL);
		if (t)
			_exit(1);
		if (errno != EPERM && errno != EACCES)
			_exit(2);
		/* _exit: the parent's atexit handlers are not the child's to run. */
		_exit(strstr(log.text, "CAP_BPF and CAP_PERFMON") ? 0 : 3);
	}
	waitpid(child, &status, 0);
	ASSERT(WIFEXITED(status));
	ASSERT_EQ(WEXITSTATUS(status), 0);
}

/* Not a check: prints the sampler's mean BPF run time per sample at 999 Hz with kernel and
 * user stacks, whole system, two busy threads running. */
TEST(tracer_prog_run_time)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999, .prog_stats = true);
	struct collected c = { 0 };
	struct lupe_tracer_stats st;
	struct lupe_tracer *t;
	pid_t busy;
	int err;

	t = new_tracer(&o);
	if (!t)
		return;
	busy = spawn_busy("2000", "2");
	err = run_for(t, 1500, &c);
	reap(busy);
	collected_free(&c);
	if (err >= 0)
		err = lupe_tracer__stats(t, &st);
	lupe_tracer__free(t);
	ASSERT_OK(err);
	ASSERT(st.prog_run_cnt >= 200);
	printf("    lupe_sample: %llu runs, %.0f ns per run (%llu emitted)\n",
	       (unsigned long long)st.prog_run_cnt,
	       (double)st.prog_run_ns / (double)st.prog_run_cnt, (unsigned long long)st.emitted);
}

/* ---- native unwinding ---------------------------------------------------------------- */

/* A tracer with native unwinding and the process manager that fills its maps, with the
 * real CFI parser: what a session wires up. */
struct unwinder {
	struct lupe_tracer *t;
	struct lupe_procmgr *pm;
	struct lupe_ebpf_handler *h;   /* owned by pm */
};

static void unwinder_free(struct unwinder *u)
{
	lupe_procmgr__free(u->pm);
	lupe_tracer__free(u->t);
	memset(u, 0, sizeof(*u));
}

/* Returns 0, or -1 after SKIP/FAIL has been recorded (the caller returns). */
static int unwinder_new(struct unwinder *u, const struct lupe_tracer_opts *o)
{
	struct lupe_stackdelta_provider *deltas;

	memset(u, 0, sizeof(*u));
	u->t = new_tracer(o);
	if (!u->t)
		return -1;
	u->h = lupe_tracer__ebpf_handler(u->t);
	deltas = lupe_ehframe_provider_new();
	if (!u->h || !deltas) {
		lupe_test_state = LUPE_TEST_FAIL;
		printf("    handler %p, provider %p: %s\n", (void *)u->h, (void *)deltas,
		       lupe_errstr(errno));
		if (u->h)
			u->h->ops->free(u->h);
		if (deltas)
			deltas->ops->free(deltas);
		unwinder_free(u);
		return -1;
	}
	{
		LUPE_OPTS(lupe_procmgr_opts, po, .ebpf = u->h, .deltas = deltas);

		u->pm = lupe_procmgr__new(&po);
	}
	if (!u->pm) {
		lupe_test_state = LUPE_TEST_FAIL;
		printf("    lupe_procmgr__new: %s\n", lupe_errstr(errno));
		lupe_tracer__free(u->t);
		return -1;
	}
	return 0;
}

/* What the session does: read the maps, then let BPF unwind the pid. */
static int unwinder_sync(struct unwinder *u, pid_t pid)
{
	uint64_t t0 = lupe_ktime_now();
	int err = lupe_procmgr__synchronize_process(u->pm, pid);

	return err ? err : lupe_stackdeltas__commit(u->h, pid, t0);
}

static pid_t spawn_nofp(const char *ms)
{
	char *argv[] = { nofp_path, (char *)ms, NULL };

	return spawn(argv, NULL);
}

/* busy_nofp's functions and where its text is mapped, to turn sampled addresses into
 * ELF addresses independently of lupe. */
struct layout {
	struct sym syms[64];
	int nsyms;
	struct exec_load load;
	uint64_t start, end, off;
};

static int read_layout(pid_t pid, struct layout *l)
{
	if (exec_mapping(pid, nofp_path, &l->start, &l->end, &l->off) ||
	    read_exec_load_of(nofp_path, &l->load))
		return -1;
	l->nsyms = nm_syms_of(nofp_path, l->syms, 64);
	return l->nsyms > 0 ? 0 : -1;
}

/* Whether the user frame j of s is in function name of busy_nofp (a return address: the
 * call is the byte before it; a leaf or post-signal frame: exact). */
static bool frame_in(const struct layout *l, const struct lupe_sample *s, size_t j, const char *name)
{
	const struct sym *f = sym_find(l->syms, l->nsyms, name);
	uint64_t a = s->frames[s->kernel_len + j] - (j > 0), v;

	if (!f || a < l->start || a >= l->end || file_off_to_vaddr(&l->load, a - l->start + l->off, &v))
		return false;
	return v >= f->start && v < f->start + f->size;
}

TEST(tracer_unwind_handler_and_opts)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 99, .start_paused = true);
	struct lupe_ebpf_handler *h;
	struct lupe_mapping m = { .vaddr = 0x400000, .length = 0x1000 };
	struct lupe_tracer *t;

	t = new_tracer(&o);
	if (!t)
		return;
	/* Frame pointers only: nothing to hand out. */
	ASSERT(!lupe_tracer__ebpf_handler(t));
	ASSERT_EQ(errno, EINVAL);
	ASSERT(!lupe_tracer__unwinding(t));
	lupe_tracer__free(t);

	o.unwind = true;
	t = lupe_tracer__new(&o);
	ASSERT(t);
	ASSERT(lupe_tracer__unwinding(t));
	h = lupe_tracer__ebpf_handler(t);
	ASSERT(h && lupe_stackdeltas_is(h));
	ASSERT(!lupe_tracer__ebpf_handler(t));
	ASSERT_EQ(errno, EBUSY);
	/* The handler keeps the maps: it outlives the tracer. */
	lupe_tracer__free(t);
	ASSERT_OK(h->ops->new_pid(h, 12345));
	ASSERT_OK(h->ops->add_mapping(h, 12345, &m));
	ASSERT_OK(lupe_stackdeltas__commit(h, 12345, 1));
	ASSERT_OK(h->ops->delete_mapping(h, 12345, &m));
	h->ops->free(h);

	/* Less than one chunk of budget, or more frames than a record holds. */
	o.unwind_budget_bytes = 4096;
	ASSERT(!lupe_tracer__new(&o));
	ASSERT_EQ(errno, EINVAL);
	o.unwind_budget_bytes = 0;
	o.unwind_max_frames = LUPE_MAX_FRAMES + 1;
	ASSERT(!lupe_tracer__new(&o));
	ASSERT_EQ(errno, EINVAL);
}

TEST(tracer_unwinds_without_frame_pointers)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999, .start_paused = true, .unwind = true);
	struct collected c = { 0 };
	struct lupe_tracer_stats st;
	struct layout l;
	struct unwinder u;
	pid_t known, unknown, both[2];
	size_t i, mine = 0, inner = 0, chain = 0, complete = 0, errors = 0;
	size_t other = 0, other_fp = 0, other_unwound = 0;
	int err, lerr;

	if (unwinder_new(&u, &o))
		return;
	known = spawn_nofp("20000");
	unknown = spawn_nofp("20000");
	usleep(100 * 1000); /* past exec */
	both[0] = known;
	both[1] = unknown;
	err = lupe_tracer__target_pids(u.t, both, 2);
	/* Only one is synchronized: the other keeps the frame-pointer walk. */
	if (!err)
		err = unwinder_sync(&u, known);
	if (!err)
		err = lupe_tracer__resume(u.t);
	if (!err)
		err = run_for(u.t, 1000, &c);
	if (err >= 0)
		err = lupe_tracer__pause(u.t);
	if (!err)
		err = run_for(u.t, 50, &c);
	lerr = read_layout(known, &l);
	reap(known);
	reap(unknown);
	if (err >= 0)
		err = lupe_tracer__stats(u.t, &st);
	unwinder_free(&u);
	if (err < 0)
		FAIL("tracer: %s", lupe_errstr(err));
	ASSERT_OK(lerr);
	for (i = 0; i < c.n; i++) {
		const struct lupe_sample *s = &c.samples[i];
		size_t last = s->user_len ? s->user_len - 1u : 0;

		if (s->pid == (__u32)unknown) {
			other++;
			other_fp += !!(s->flags & LUPE_SAMPLE_FP_FALLBACK);
			other_unwound += !!(s->flags & LUPE_SAMPLE_UNWOUND);
			continue;
		}
		if (s->pid != (__u32)known || !s->user_len)
			continue;
		mine++;
		errors += !!(s->flags & LUPE_SAMPLE_UNWIND_ERR);
		/* The walk reached _start, where the CFI says it ends. */
		complete += frame_in(&l, s, last, "_start") && !(s->flags & LUPE_SAMPLE_UNWIND_ERR);
		if (!frame_in(&l, s, 0, "hot_inner"))
			continue;
		inner++;
		/* hot_inner has no frame: only the deltas find hot_middle, then main. */
		chain += s->user_len >= 3 && frame_in(&l, s, 1, "hot_middle") &&
			 frame_in(&l, s, 2, "main");
	}
	printf("    known pid: %zu samples, %zu in hot_inner, %zu of those with hot_middle and main, "
	       "%zu complete to _start, %zu errors; unknown pid: %zu samples, %zu by frame "
	       "pointers; %llu frames unwound (%llu from the rule cache), %llu by frame pointers, "
	       "%llu sync requests\n", mine, inner, chain, complete, errors, other, other_fp,
	       (unsigned long long)st.unwind_frames, (unsigned long long)st.unwind_cache_hits,
	       (unsigned long long)st.fallback_frames, (unsigned long long)st.sync_requests);
	ASSERT(mine >= 100);
	ASSERT(inner >= mine * 8 / 10);
	ASSERT(chain >= inner * 99 / 100);
	ASSERT(complete >= mine * 99 / 100);
	ASSERT(errors <= mine / 100);
	ASSERT(other >= 100);
	ASSERT_EQ(other_unwound, 0);
	ASSERT(other_fp >= other * 99 / 100);
	ASSERT(st.unknown_pid >= other);
	ASSERT(st.unwind_frames >= chain * 3);
	/* BPF asked for the unknown pid, once per unwind_report_ns at most (0.25 s). */
	ASSERT(st.sync_requests >= 1 && st.sync_requests <= 8);
	ASSERT(find_event(&c, LUPE_EV_NEW_PID, unknown));
	collected_free(&c);
}

/* For a sample taken in the kernel, the walk starts from the task's saved user registers. */
TEST(tracer_unwinds_kernel_mode_samples)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999, .start_paused = true, .unwind = true);
	char *argv[] = { "/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=1", NULL };
	uint64_t start = 0, end = 0, off;
	struct collected c = { 0 };
	struct unwinder u;
	size_t i, kmode = 0, whole = 0;
	int err, merr;
	pid_t dd;

	if (unwinder_new(&u, &o))
		return;
	dd = spawn(argv, NULL);
	usleep(100 * 1000);
	err = lupe_tracer__target_add_pid(u.t, dd);
	if (!err)
		err = unwinder_sync(&u, dd);
	if (!err)
		err = lupe_tracer__resume(u.t);
	if (!err)
		err = run_for(u.t, 600, &c);
	merr = exec_mapping(dd, "/usr/bin/dd", &start, &end, &off);
	if (merr)
		merr = exec_mapping(dd, "/bin/dd", &start, &end, &off);
	reap(dd);
	unwinder_free(&u);
	if (err < 0)
		FAIL("tracer: %s", lupe_errstr(err));
	ASSERT_OK(merr);
	for (i = 0; i < c.n; i++) {
		const struct lupe_sample *s = &c.samples[i];
		uint64_t outer;

		if (s->pid != (__u32)dd || !(s->flags & LUPE_SAMPLE_KERNEL_MODE))
			continue;
		kmode++;
		if (!s->user_len || (s->flags & LUPE_SAMPLE_UNWIND_ERR))
			continue;
		/* From the syscall wrapper in libc out to dd's own _start. */
		outer = s->frames[s->kernel_len + s->user_len - 1] - 1;
		whole += s->user_len >= 3 && outer >= start && outer < end;
	}
	printf("    dd: %zu kernel-mode samples, %zu with a user stack unwound to dd's text\n",
	       kmode, whole);
	ASSERT(kmode >= 50);
	ASSERT(whole >= kmode * 9 / 10);
	collected_free(&c);
}

/* Synthetic deltas for busy_nofp: STOP everywhere ends every walk at the leaf; deltas far
 * from its code leave it without a page (NO_DELTA, an error the sample carries). */
TEST(tracer_unwind_stops_and_errors)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999, .start_paused = true, .unwind = true);
	struct lupe_stack_delta stop[] = { { .address = 0, .cfa_opcode = LUPE_CFA_CMD,
					     .cfa_param = LUPE_CMD_STOP } };
	struct lupe_stack_delta far[] = {
		{ .address = 0x10000000, .cfa_opcode = LUPE_CFA_SP, .cfa_param = 8 },
		{ .address = 0x10000010, .cfa_opcode = LUPE_CFA_CMD, .cfa_param = LUPE_CMD_INVALID },
	};
	struct lupe_interval_data d_stop = { stop, 1 }, d_far = { far, 2 };
	struct collected c1 = { 0 }, c2 = { 0 }, c3 = { 0 };
	struct lupe_tracer_stats st1, st2;
	struct lupe_file_id id;
	struct layout l;
	struct unwinder u;
	size_t i, n1 = 0, stopped = 0, n2 = 0, nodelta = 0;
	int err, fd, lerr;
	pid_t busy;

	if (unwinder_new(&u, &o))
		return;
	fd = open(nofp_path, O_RDONLY | O_CLOEXEC);
	err = fd < 0 ? -errno : lupe_file_id_from_fd(fd, &id);
	if (fd >= 0)
		close(fd);
	if (!err)
		err = lupe_procmgr__add_synth_interval_data(u.pm, lupe_file_id_host(id), &d_stop);
	busy = spawn_nofp("20000");
	usleep(100 * 1000);
	if (!err)
		err = lupe_tracer__target_add_pid(u.t, busy);
	if (!err)
		err = unwinder_sync(&u, busy);
	if (!err)
		err = lupe_tracer__resume(u.t);
	if (!err)
		err = run_for(u.t, 400, &c1);
	if (err >= 0)
		err = lupe_tracer__stats(u.t, &st1);
	/* Replacing a loaded table reloads it; a new commit retires cached rules. */
	if (!err)
		err = lupe_procmgr__add_synth_interval_data(u.pm, lupe_file_id_host(id), &d_far);
	if (!err)
		err = unwinder_sync(&u, busy);
	if (!err)
		err = lupe_tracer__pause(u.t);
	if (!err)
		err = run_for(u.t, 50, &c3); /* drop what straddled the change */
	if (err >= 0)
		err = lupe_tracer__resume(u.t);
	if (!err)
		err = run_for(u.t, 400, &c2);
	if (err >= 0)
		err = lupe_tracer__stats(u.t, &st2);
	lerr = read_layout(busy, &l);
	reap(busy);
	unwinder_free(&u);
	if (err < 0)
		FAIL("tracer: %s", lupe_errstr(err));
	ASSERT_OK(lerr);
	for (i = 0; i < c1.n; i++) {
		const struct lupe_sample *s = &c1.samples[i];

		if (s->pid != (__u32)busy || !frame_in(&l, s, 0, "hot_inner"))
			continue;
		n1++;
		stopped += s->user_len == 1 && !(s->flags & LUPE_SAMPLE_UNWIND_ERR);
	}
	for (i = 0; i < c2.n; i++) {
		const struct lupe_sample *s = &c2.samples[i];

		if (s->pid != (__u32)busy || !frame_in(&l, s, 0, "hot_inner"))
			continue;
		n2++;
		nodelta += s->user_len == 1 && (s->flags & LUPE_SAMPLE_UNWIND_ERR) &&
			   s->user_err == LUPE_UNWIND_ERR_NO_DELTA;
	}
	printf("    STOP: %zu of %zu walks end at the leaf; far deltas: %zu of %zu end with "
	       "NO_DELTA (%llu counted)\n", stopped, n1, nodelta, n2,
	       (unsigned long long)(st2.unwind_err[LUPE_UNWIND_ERR_NO_DELTA - LUPE_UNWIND_ERR_NO_MAPPING]));
	ASSERT(n1 >= 100 && n2 >= 100);
	ASSERT(stopped >= n1 * 99 / 100);
	ASSERT(st1.unwind_stops >= stopped);
	ASSERT(nodelta >= n2 * 99 / 100);
	ASSERT(st2.unwind_err[LUPE_UNWIND_ERR_NO_DELTA - LUPE_UNWIND_ERR_NO_MAPPING] >= nodelta);
	collected_free(&c1);
	collected_free(&c2);
	collected_free(&c3);
}

TEST(tracer_unwind_frame_limit)
{
	LUPE_OPTS(lupe_tracer_opts, o, .frequency = 999, .start_paused = true, .unwind = true,
		  .unwind_max_frames = 2);
	struct collected c = { 0 };
	struct layout l;
	struct unwinder u;
	size_t i, n = 0, cut = 0;
	int err, lerr;
	pid_t busy;

	if (unwinder_new(&u, &o))
		return;
	busy = spawn_nofp("20000");
	usleep(100 * 1000);
	err = lupe_tracer__target_add_pid(u.t, busy);
	if (!err)
		err = unwinder_sync(&u, busy);
	if (!err)
		err = lupe_tracer__resume(u.t);
	if (!err)
		err = run_for(u.t, 400, &c);
	lerr = read_layout(busy, &l);
	reap(busy);
	unwinder_free(&u);
	if (err < 0)
		FAIL("tracer: %s", lupe_errstr(err));
	ASSERT_OK(lerr);
	for (i = 0; i < c.n; i++) {
		const struct lupe_sample *s = &c.samples[i];

		if (s->pid != (__u32)busy || !frame_in(&l, s, 0, "hot_inner"))
			continue;
		n++;
		/* hot_inner, hot_middle, then the limit: main and below are cut. */
		cut += s->user_len == 2 && (s->flags & LUPE_SAMPLE_USER_TRUNC) &&
		       frame_in(&l, s, 1, "hot_middle");
	}
	printf("    %zu of %zu samples cut after two frames\n", cut, n);
	ASSERT(n >= 100);
	ASSERT(cut >= n * 99 / 100);
	collected_free(&c);
}
