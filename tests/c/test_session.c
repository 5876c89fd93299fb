/* The session's per-sample path without BPF: samples built from this process's own
 * functions go through ingest, and come out counted, converted and symbolized. */
#include "lupe_test.h"
#include "session.h"

#include <linux/types.h>
#include "sampler.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noinline, used)) int test_leaf_fn(int x)
{
	int i;

	for (i = 0; i < 16; i++)
		x = x * 31 + i;
	return x;
}

__attribute__((noinline, used)) int test_caller_fn(int x)
{
	int i, r = 0;

	for (i = 0; i < 8; i++)
		r += test_leaf_fn(x + i);
	return r;
}

static struct lupe_session *offline(void)
{
	LUPE_OPTS(lupe_session_opts, o, .offline = true);
	return lupe_session__new(&o);
}

static void make_sample(struct lupe_sample *smp, pid_t pid)
{
	memset(smp, 0, sizeof(*smp));
	smp->pid = smp->tid = (__u32)pid;
	smp->ktime = 1000;
	memcpy(smp->comm, "tester", 7);
	smp->user_len = 2;
	smp->frames[0] = (__u64)(uintptr_t)&test_leaf_fn + 4;     /* the sampled IP */
	smp->frames[1] = (__u64)(uintptr_t)&test_caller_fn + 12;  /* a return address */
}

TEST(repeated_sample_is_one_entry_and_one_lookup_each)
{
	struct lupe_session *s = offline();
	const struct lupe_profile_entry *e;
	const struct lupe_sym_trace *t;
	struct lupe_session_stats st;
	struct lupe_sample smp;
	size_t n;
	int i;

	ASSERT(s);
	make_sample(&smp, getpid());
	for (i = 0; i < 100; i++)
		ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	e = lupe_session__entries(s, &n);
	ASSERT_EQ(n, 1);
	ASSERT_EQ(e[0].count, 100);
	ASSERT_EQ(e[0].pid, getpid());
	ASSERT_STREQ(e[0].comm, "tester");
	lupe_session__stats(s, &st);
	ASSERT_EQ(st.cache_hits, 99);
	ASSERT_EQ(st.cache_misses, 1);
	ASSERT_EQ(st.samples, 100);
	t = lupe_session__trace(s, e[0].trace);
	ASSERT(t);
	ASSERT_EQ(t->nframes, 2);
	ASSERT_EQ(t->frames[0].kind, LUPE_SYM_NATIVE);
	ASSERT_STREQ(t->frames[0].name, "test_leaf_fn");
	ASSERT_EQ(t->frames[0].offset, 4);
	ASSERT_STREQ(t->frames[1].name, "test_caller_fn");
	/* A return address is looked up at address - 1: inside the call. */
	ASSERT_EQ(t->frames[1].offset, 11);
	ASSERT_STREQ(t->frames[0].module, "c_test_session");
	lupe_session__free(s);
}

TEST(same_stack_in_two_processes_shares_the_trace)
{
	struct lupe_session *s = offline();
	const struct lupe_profile_entry *e;
	struct lupe_sample a, b;
	size_t n;
	pid_t child = fork();

	ASSERT(s);
	if (child == 0) {
		pause();
		_exit(0);
	}
	make_sample(&a, getpid());
	make_sample(&b, child);
	ASSERT_OK(lupe_session__ingest_sample(s, &a));
	ASSERT_OK(lupe_session__ingest_sample(s, &b));
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	e = lupe_session__entries(s, &n);
	ASSERT_EQ(n, 2);
	ASSERT_EQ(lupe_session__ntraces(s), 1);
	ASSERT_EQ(e[0].trace, e[1].trace);
	lupe_session__free(s);
}

TEST(unknown_addresses_and_truncation_are_visible)
{
	struct lupe_session *s = offline();
	const struct lupe_profile_entry *e;
	const struct lupe_sym_trace *t;
	struct lupe_session_stats st;
	struct lupe_sample smp;
	size_t n;

	ASSERT(s);
	make_sample(&smp, getpid());
	smp.frames[1] = 0x10; /* nothing is mapped there */
	smp.flags = LUPE_SAMPLE_USER_TRUNC;
	ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	e = lupe_session__entries(s, &n);
	t = lupe_session__trace(s, e[0].trace);
	ASSERT_EQ(t->nframes, 3);
	ASSERT_EQ(t->frames[1].kind, LUPE_SYM_UNKNOWN);
	ASSERT_EQ(t->frames[2].kind, LUPE_SYM_ERROR);
	ASSERT_STREQ(t->frames[2].name, "[truncated: user stack too deep]");
	lupe_session__stats(s, &st);
	ASSERT_EQ(st.unknown_frames, 1);
	ASSERT_EQ(st.resyncs, 1);
	lupe_session__free(s);
}

TEST(exec_starts_a_new_generation_and_interval_counts_reset)
{
	struct lupe_session *s = offline();
	struct lupe_proc_event ev = { .type = LUPE_EV_EXEC, .pid = (__u32)getpid(), .ktime = 2000 };
	const struct lupe_profile_entry *e;
	struct lupe_sample smp;
	size_t n;

	ASSERT(s);
	make_sample(&smp, getpid());
	ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	lupe_session__interval_reset(s);
	ASSERT_OK(lupe_session__ingest_event(s, &ev));
	smp.ktime = 3000;
	ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	e = lupe_session__entries(s, &n);
	ASSERT_EQ(n, 2);
	ASSERT_EQ(e[0].interval, 0);
	ASSERT_EQ(e[0].count, 1);
	ASSERT_EQ(e[1].interval, 1);
	lupe_session__free(s);
}

TEST(kernel_frames_are_symbolized_from_kallsyms)
{
	struct lupe_session *s;
	const struct lupe_profile_entry *e;
	const struct lupe_sym_trace *t;
	struct lupe_sample smp;
	unsigned long long addr = 0;
	char line[512], name[256], type;
	FILE *f = fopen("/proc/kallsyms", "r");
	size_t n;

	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llx %c %255s", &addr, &type, name) == 3 && strcmp(name, "vfs_read") == 0)
			break;
		addr = 0;
	}
	if (f)
		fclose(f);
	if (!addr)
		SKIP("vfs_read's address is hidden here (kptr_restrict or not root)");
	s = offline();
	ASSERT(s);
	make_sample(&smp, getpid());
	smp.kernel_len = 1;
	smp.user_len = 1;
	smp.frames[0] = addr + 5;
	smp.frames[1] = (__u64)(uintptr_t)&test_leaf_fn;
	ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	e = lupe_session__entries(s, &n);
	t = lupe_session__trace(s, e[0].trace);
	ASSERT_EQ(t->frames[0].kind, LUPE_SYM_KERNEL);
	ASSERT_STREQ(t->frames[0].name, "vfs_read");
	ASSERT_EQ(t->frames[0].offset, 5);
	ASSERT_STREQ(t->frames[1].name, "test_leaf_fn");
	lupe_session__free(s);
}

/* ---- folding the entries of exited processes ------------------------------------------ */

/* Pids no process has here (above the usual pid_max of 4194304): their frames stay
 * unknown, and the same addresses make the same trace whatever the pid. */
#define GHOST 4200000

static void ghost_sample(struct lupe_sample *smp, pid_t pid, const char *comm, uint64_t leaf,
			 uint64_t ktime)
{
	memset(smp, 0, sizeof(*smp));
	smp->pid = smp->tid = (__u32)pid;
	smp->ktime = ktime;
	strncpy(smp->comm, comm, sizeof(smp->comm) - 1);
	smp->user_len = 2;
	smp->frames[0] = leaf;
	smp->frames[1] = 0x7000;
}

static void ingest_n(struct lupe_session *s, const struct lupe_sample *smp, int n)
{
	while (n-- > 0)
		lupe_session__ingest_sample(s, smp);
}

static void ghost_exit(struct lupe_session *s, pid_t pid)
{
	struct lupe_proc_event ev = { .type = LUPE_EV_EXIT, .pid = (__u32)pid, .ktime = 9000 };

	lupe_session__ingest_event(s, &ev);
}

/* Sums of counts (or interval counts) over entries matching pid (-1: any) and trace
 * (UINT32_MAX: any): the oracle folding must not change. */
static uint64_t sum(struct lupe_session *s, pid_t pid, uint32_t trace, bool interval)
{
	const struct lupe_profile_entry *e;
	uint64_t total = 0;
	size_t n, i;

	e = lupe_session__entries(s, &n);
	for (i = 0; i < n; i++)
		if ((pid < 0 || e[i].pid == pid) && (trace == UINT32_MAX || e[i].trace == trace))
			total += interval ? e[i].interval : e[i].count;
	return total;
}

static const struct lupe_profile_entry *find(struct lupe_session *s, pid_t pid, const char *comm,
					     uint32_t trace, size_t *count)
{
	const struct lupe_profile_entry *e, *found = NULL;
	size_t n, i;

	*count = 0;
	e = lupe_session__entries(s, &n);
	for (i = 0; i < n; i++) {
		if (e[i].pid == pid && strcmp(e[i].comm, comm) == 0 && e[i].trace == trace) {
			found = &e[i];
			(*count)++;
		}
	}
	return found;
}

TEST(folding_exited_processes_keeps_every_count)
{
	LUPE_OPTS(lupe_session_opts, o, .offline = true, .max_entries = 8);
	struct lupe_session *s = lupe_session__new(&o);
	const struct lupe_profile_entry *e, *f;
	struct lupe_session_stats st;
	uint64_t before_total, before_t[2], before_iv, live_count;
	struct lupe_sample smp;
	uint32_t ta, tb;
	size_t n, c;
	int i;

	ASSERT(s);
	/* A live process (this one) with two stacks; ten ghosts, each with stack A
	 * (comm "storm", i + 1 samples) and the even ones also stack B (comm "other"). */
	make_sample(&smp, getpid());
	ingest_n(s, &smp, 3);
	ghost_sample(&smp, getpid(), "tester", 0x5000, 1000);
	ingest_n(s, &smp, 2);
	for (i = 0; i < 10; i++) {
		ghost_sample(&smp, GHOST + i, "storm", 0x5000, 2000 + (uint64_t)i);
		ingest_n(s, &smp, i + 1);
		if (i % 2 == 0) {
			ghost_sample(&smp, GHOST + i, "other", 0x6000, 3000 + (uint64_t)i);
			ingest_n(s, &smp, 1);
		}
	}
	e = lupe_session__entries(s, &n);
	ASSERT_EQ(n, 2 + 10 + 5);
	ta = e[1].trace;        /* stack A */
	tb = e[3].trace;        /* stack B, of GHOST + 0 */
	ASSERT(ta != tb);
	ASSERT_EQ(e[2].trace, ta);
	before_total = sum(s, -1, UINT32_MAX, false);
	before_t[0] = sum(s, -1, ta, false);
	before_t[1] = sum(s, -1, tb, false);
	before_iv = sum(s, -1, UINT32_MAX, true);
	live_count = sum(s, getpid(), UINT32_MAX, false);
	ASSERT_EQ(before_total, 3 + 2 + 55 + 5);

	/* Ghosts 0..8 exit; ghost 9 lives on. */
	for (i = 0; i < 9; i++)
		ghost_exit(s, GHOST + i);
	ASSERT(lupe_session__poll(s, 0) >= 0);
	lupe_session__stats(s, &st);
	ASSERT_EQ(st.folds, 1);
	ASSERT_EQ(st.folded_entries, 9 + 5);
	e = lupe_session__entries(s, &n);
	/* live: 2 of this process and ghost 9's; folded: (A, storm) and (B, other). */
	ASSERT_EQ(n, 5);
	ASSERT_EQ(st.entries, 5);
	ASSERT_EQ(sum(s, -1, UINT32_MAX, false), before_total);
	ASSERT_EQ(sum(s, -1, ta, false), before_t[0]);
	ASSERT_EQ(sum(s, -1, tb, false), before_t[1]);
	ASSERT_EQ(sum(s, -1, UINT32_MAX, true), before_iv);
	ASSERT_EQ(sum(s, getpid(), UINT32_MAX, false), live_count);
	f = find(s, GHOST + 9, "storm", ta, &c);
	ASSERT(f && c == 1);
	ASSERT_EQ(f->count, 10);
	f = find(s, 0, "storm", ta, &c);
	ASSERT(f && c == 1);
	ASSERT_EQ(f->count, 45);                /* 1 + 2 + ... + 9 */
	ASSERT_EQ(f->first_ktime, 2000);
	ASSERT_EQ(f->last_ktime, 2008);
	f = find(s, 0, "other", tb, &c);
	ASSERT(f && c == 1);
	ASSERT_EQ(f->count, 5);
	/* Order is kept: this process's entries first, the folded one in its first place. */
	ASSERT_EQ(e[0].pid, getpid());
	ASSERT_EQ(e[1].pid, getpid());
	ASSERT_EQ(e[2].pid, 0);

	/* Samples after the fold land where they belong: this process's entries are still
	 * found (no new entry), a new ghost gets its own. */
	make_sample(&smp, getpid());
	ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	ghost_sample(&smp, getpid(), "tester", 0x5000, 1000);
	ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	ghost_sample(&smp, GHOST + 20, "storm", 0x5000, 4000);
	ingest_n(s, &smp, 4);
	lupe_session__entries(s, &n);
	ASSERT_EQ(n, 6);
	ASSERT_EQ(sum(s, getpid(), UINT32_MAX, false), live_count + 2);
	f = find(s, GHOST + 20, "storm", ta, &c);
	ASSERT(f && c == 1);
	ASSERT_EQ(f->count, 4);
	lupe_session__stats(s, &st);
	ASSERT_EQ(st.cache_misses, 2 + 10 + 5 + 1);

	/* Below the next threshold (twice the entries left), nothing folds... */
	ghost_exit(s, GHOST + 20);
	ASSERT(lupe_session__poll(s, 0) >= 0);
	lupe_session__stats(s, &st);
	ASSERT_EQ(st.folds, 1);
	/* ... above it, ghost 20 joins the folded (A, storm) entry. */
	for (i = 0; i < 5; i++) {
		ghost_sample(&smp, GHOST + 30 + i, "late", 0x5000, 5000);
		ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	}
	ASSERT(lupe_session__poll(s, 0) >= 0);
	lupe_session__stats(s, &st);
	ASSERT_EQ(st.folds, 2);
	ASSERT_EQ(st.folded_entries, 9 + 5 + 1);
	f = find(s, 0, "storm", ta, &c);
	ASSERT(f && c == 1);
	ASSERT_EQ(f->count, 45 + 4);
	ASSERT_EQ(f->last_ktime, 4000);
	ASSERT_EQ(sum(s, -1, UINT32_MAX, false), before_total + 2 + 4 + 5);
	lupe_session__free(s);
}

TEST(folding_keeps_verdicts_with_their_entries)
{
	LUPE_OPTS(lupe_session_opts, o, .offline = true, .max_entries = 4);
	struct lupe_session *s = lupe_session__new(&o);
	const struct lupe_profile_entry *e;
	struct lupe_sample smp;
	const uint32_t *idx;
	uint8_t *ev, *tv;
	uint64_t dropped;
	size_t n, k, i;

	ASSERT(s);
	/* Four ghosts with one stack: the filter dropped ghost 1's entry, kept the others;
	 * ghost 3 has not been judged yet. */
	for (i = 0; i < 4; i++) {
		ghost_sample(&smp, GHOST + (pid_t)i, "storm", 0x5000, 1000);
		ingest_n(s, &smp, (int)i + 1);
	}
	ASSERT_OK(lupe_session__verdicts(s, &ev, &tv));
	ev[0] = LUPE_VERDICT_KEEP;
	ev[1] = LUPE_VERDICT_DROP;
	ev[2] = LUPE_VERDICT_KEEP;
	for (i = 0; i < 4; i++)
		ghost_exit(s, GHOST + (pid_t)i);
	ASSERT(lupe_session__poll(s, 0) >= 0);
	ASSERT_EQ(lupe_session__folds(s), 1);
	e = lupe_session__entries(s, &n);
	ASSERT_EQ(n, 3);
	ASSERT_OK(lupe_session__verdicts(s, &ev, &tv));
	/* In first-member order: kept (1 + 3), dropped (2), undecided (4). */
	ASSERT_EQ(e[0].count, 4);
	ASSERT_EQ(ev[0], LUPE_VERDICT_KEEP);
	ASSERT_EQ(e[1].count, 2);
	ASSERT_EQ(ev[1], LUPE_VERDICT_DROP);
	ASSERT_EQ(e[2].count, 4);
	ASSERT_EQ(ev[2], LUPE_VERDICT_UNDECIDED);
	ASSERT_EQ(ev[3], LUPE_VERDICT_UNDECIDED);   /* the next entry starts undecided */
	ASSERT_OK(lupe_session__batch(s, LUPE_BATCH_VERDICTS, &idx, &k, &dropped));
	ASSERT_EQ(k, 2);
	ASSERT_EQ(dropped, 2);
	lupe_session__free(s);
}

/* ---- reset: forgetting the aggregate ------------------------------------------------------ */

TEST(reset_forgets_entries_and_traces_and_keeps_counters)
{
	struct lupe_session *s = offline();
	const struct lupe_profile_entry *e;
	const struct lupe_sym_trace *t;
	struct lupe_session_stats st, after;
	struct lupe_file_id hash_a;
	struct lupe_sample smp;
	size_t n;

	ASSERT(s);
	make_sample(&smp, getpid());
	ingest_n(s, &smp, 3);
	ghost_sample(&smp, GHOST, "storm", 0x5000, 2000);
	ingest_n(s, &smp, 2);
	ASSERT(lupe_session__poll(s, 0) >= 0);
	e = lupe_session__entries(s, &n);
	ASSERT_EQ(n, 2);
	t = lupe_session__trace(s, e[0].trace);
	ASSERT(t && t->nframes == 2 && t->frames);
	hash_a = t->hash;
	lupe_session__stats(s, &st);
	ASSERT_EQ(st.samples, 5);
	ASSERT_EQ(st.traces, 2);

	ASSERT_OK(lupe_session__reset(s));
	lupe_session__entries(s, &n);
	ASSERT_EQ(n, 0);
	ASSERT_EQ(lupe_session__ntraces(s), 0);
	ASSERT(lupe_session__trace(s, 0) == NULL);
	lupe_session__stats(s, &after);
	ASSERT_EQ(after.resets, 1);
	ASSERT_EQ(after.samples, 5);            /* counters are the session's, not the aggregate's */
	ASSERT_EQ(after.traces, 0);
	ASSERT_EQ(after.entries, 0);
	ASSERT(after.aggregate_bytes < st.aggregate_bytes);

	/* The same stack again: a new entry and trace, index 0, the same hash and names; the
	 * per-sample cache must not find the forgotten entry. */
	make_sample(&smp, getpid());
	ingest_n(s, &smp, 4);
	ASSERT(lupe_session__poll(s, 0) >= 0);
	e = lupe_session__entries(s, &n);
	ASSERT_EQ(n, 1);
	ASSERT_EQ(e[0].count, 4);
	ASSERT_EQ(e[0].interval, 4);
	ASSERT_EQ(e[0].trace, 0);
	t = lupe_session__trace(s, 0);
	ASSERT(t && t->nframes == 2 && t->frames);
	ASSERT(t->hash.hi == hash_a.hi && t->hash.lo == hash_a.lo);
	ASSERT(t->frames[0].name && strcmp(t->frames[0].name, "test_leaf_fn") == 0);
	lupe_session__stats(s, &after);
	ASSERT_EQ(after.samples, 9);
	ASSERT_EQ(after.traces, 1);
	/* Twice in a row, and on an empty aggregate: fine. */
	ASSERT_OK(lupe_session__reset(s));
	ASSERT_OK(lupe_session__reset(s));
	lupe_session__stats(s, &after);
	ASSERT_EQ(after.resets, 3);
	lupe_session__free(s);
}
