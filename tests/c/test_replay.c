/* Replay through the session: a recording written by hand here (the oracle: what each
 * record says), replayed by an offline session, gives traces converted and named from the
 * records alone, generations from its events, the recorded clock, counters and stop. */
#include "lupe_test.h"
#include "rawfile.h"
#include "session.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HOST 0x1234abcdull

static void put(struct lupe_rawfile_writer *w, struct lupe_raw_record *r)
{
	lupe_rawfile_writer__write(w, r);
	memset(r, 0, sizeof(*r));
}

static void sample(struct lupe_raw_record *r, uint32_t pid, uint64_t ktime, uint64_t kaddr,
		   uint64_t u0, uint64_t u1)
{
	r->type = LUPE_RAW_SAMPLE;
	r->sample.pid = r->sample.tid = pid;
	r->sample.ktime = ktime;
	strcpy(r->sample.comm, "app");
	r->sample.kernel_len = kaddr ? 1 : 0;
	r->sample.user_len = 2;
	r->sample.frames[0] = kaddr;
	r->sample.frames[r->sample.kernel_len] = u0;
	r->sample.frames[r->sample.kernel_len + 1] = u1;
}

/* Writes the recording to path. */
static int write_recording(const char *path)
{
	struct lupe_raw_header h = { .frequency = 49, .ncpus = 3, .start_ktime = 5000000000ull,
				     .kernel_id = { 0x4b4b4b4bull, 7 } };
	struct lupe_raw_record *r = calloc(1, sizeof(*r));
	struct lupe_rawfile_writer *w;

	if (!r)
		return -ENOMEM;
	w = lupe_rawfile_writer__new(fopen(path, "w"), &h);
	if (!w) {
		free(r);
		return -errno;
	}
	r->type = LUPE_RAW_CLOCK;               /* a run begins */
	r->clock.ktime = 5100000000ull;
	put(w, r);
	/* Drain 1: pid 10 (generation 0) maps /opt/app at 0x400000, bias 0x3ff000. */
	r->type = LUPE_RAW_MAPPING;
	r->mapping.pid = 10;
	r->mapping.vaddr = 0x400000;
	r->mapping.length = 0x2000;
	r->mapping.bias = 0x3ff000;
	r->mapping.host = HOST;
	r->mapping.file_id = (struct lupe_file_id){ HOST, 99 };
	put(w, r);
	r->type = LUPE_RAW_SYMBOL;              /* leaf: 0x401010 - bias = 0x2010 */
	r->symbol.host = HOST;
	r->symbol.addr = 0x2010;
	r->symbol.offset = 0x10;
	r->symbol.name = "leaf_fn";
	put(w, r);
	r->type = LUPE_RAW_SYMBOL;              /* caller: return address 0x401101 - 1 - bias */
	r->symbol.host = HOST;
	r->symbol.addr = 0x2100;
	r->symbol.name = NULL;                  /* no symbol there */
	put(w, r);
	r->type = LUPE_RAW_FILE;
	r->file.host = HOST;
	r->file.path = "/opt/app";
	put(w, r);
	sample(r, 10, 5150000000ull, 0xffffffff81000040ull, 0x401010, 0x401101);
	put(w, r);
	sample(r, 10, 5160000000ull, 0xffffffff81000040ull, 0x401010, 0x401101);
	put(w, r);
	r->type = LUPE_RAW_POLL;
	r->poll.ktime = 5200000000ull;
	r->poll.nrecords = 2;
	put(w, r);
	/* Between drains: the script looked at the trace; kernel symbols were ready. */
	r->type = LUPE_RAW_KSYMBOL;
	r->ksymbol.addr = 0xffffffff81000040ull;
	r->ksymbol.offset = 0x40;
	r->ksymbol.name = "do_work";
	r->ksymbol.module = "mymod";
	put(w, r);
	/* Drain 2: pid 10 execs (generation 1): the old mapping no longer applies. */
	r->type = LUPE_RAW_EVENT;
	r->event.type = LUPE_EV_EXEC;
	r->event.pid = 10;
	r->event.ktime = 5210000000ull;
	put(w, r);
	sample(r, 10, 5220000000ull, 0, 0x401010, 0x401101);
	put(w, r);
	r->type = LUPE_RAW_POLL;
	r->poll.ktime = 5300000000ull;
	r->poll.nrecords = 2;
	put(w, r);
	r->type = LUPE_RAW_STATS;
	r->stats.frequency = 49;
	r->stats.ncpus = 3;
	r->stats.counters[LUPE_RAW_ST_RINGBUF_FULL] = 17;
	r->stats.counters[LUPE_RAW_ST_KERNEL_TRUNC] = 4;
	put(w, r);
	r->type = LUPE_RAW_STOP;
	r->stop.exit_status = 5;
	put(w, r);
	free(r);
	return lupe_rawfile_writer__close(w, 5400000000ull);
}

TEST(replay_converts_and_names_from_the_records_alone)
{
	char path[] = "/tmp/lupe-test-replay-XXXXXX";
	int fd = mkstemp(path), status = 0;
	const struct lupe_profile_entry *e;
	const struct lupe_sym_trace *t;
	struct lupe_session_stats st;
	struct lupe_session *s;
	size_t n;

	ASSERT(fd >= 0);
	close(fd);
	ASSERT_OK(write_recording(path));
	{
		LUPE_OPTS(lupe_session_opts, o, .replay_path = path);
		s = lupe_session__new(&o);
	}
	ASSERT(s != NULL);
	ASSERT(lupe_session__replaying(s));
	ASSERT_EQ(lupe_session__clock(s), 5000000000ull);
	ASSERT_EQ(lupe_session__frequency(s), 49);
	ASSERT_EQ(lupe_session__clock_mark(s), 5100000000ull);
	ASSERT(!lupe_session__replay_stopped(s, &status));

	ASSERT_EQ(lupe_session__poll(s, 1000), 2);
	ASSERT_EQ(lupe_session__clock(s), 5200000000ull);
	e = lupe_session__entries(s, &n);
	ASSERT_EQ(n, 1);
	ASSERT_EQ(e[0].count, 2);
	t = lupe_session__trace(s, e[0].trace);     /* takes the KSYMBOL after the POLL */
	ASSERT(t != NULL);
	ASSERT_EQ(t->nframes, 3);
	ASSERT_EQ(t->frames[0].kind, LUPE_SYM_KERNEL);
	ASSERT_STREQ(t->frames[0].name, "do_work");
	ASSERT_STREQ(t->frames[0].module, "mymod");
	ASSERT_EQ(t->frames[0].offset, 0x40);
	ASSERT_EQ(t->frames[1].kind, LUPE_SYM_NATIVE);
	ASSERT_STREQ(t->frames[1].name, "leaf_fn");
	ASSERT_STREQ(t->frames[1].module, "app");
	ASSERT_EQ(t->frames[1].addr, 0x2010);
	ASSERT_EQ(t->frames[1].offset, 0x10);
	ASSERT_EQ(t->frames[2].kind, LUPE_SYM_NATIVE);
	ASSERT(t->frames[2].name == NULL);          /* recorded: no symbol */
	ASSERT_EQ(t->frames[2].addr, 0x2100);
	/* Converted with the recorded 128-bit IDs, as live: the manager's mapper answers
	 * with them (the converted frames are gone once the trace is symbolized). */
	ASSERT(t->converted == NULL);
	{
		struct lupe_fileid_mapper *fm =
			lupe_procmgr__file_id_mapper(lupe_session__procmgr(s));
		struct lupe_file_id id;

		ASSERT(fm->ops->get(fm, HOST, &id));
		ASSERT_EQ(id.lo, 99);
		ASSERT(fm->ops->get(fm, 0x4b4b4b4bull, &id));
		ASSERT_EQ(id.lo, 7);
	}

	/* After the exec, pid 10 is another process with no recorded mappings. */
	ASSERT_EQ(lupe_session__poll(s, 1000), 2);
	e = lupe_session__entries(s, &n);
	ASSERT_EQ(n, 2);
	t = lupe_session__trace(s, e[1].trace);
	ASSERT_EQ(t->nframes, 2);
	ASSERT_EQ(t->frames[0].kind, LUPE_SYM_UNKNOWN);
	ASSERT_EQ(t->frames[0].addr, 0x401010);

	lupe_session__stats(s, &st);
	ASSERT_EQ(st.lost, 17);
	ASSERT_EQ(st.kernel_trunc, 4);
	ASSERT_EQ(st.ncpus, 3);
	ASSERT_EQ(st.samples, 3);
	ASSERT_EQ(st.unknown_frames, 2);
	ASSERT_EQ(st.exec_events, 1);
	ASSERT_EQ(st.replay_errors, 0);
	ASSERT(lupe_session__replay_stopped(s, &status));
	ASSERT_EQ(status, 5);
	/* The recording is over: polls return nothing and the run stays stopped. */
	ASSERT_EQ(lupe_session__poll(s, 1000), 0);
	ASSERT(lupe_session__replay_stopped(s, &status));
	ASSERT_EQ(status, -1);
	/* A replay samples nothing and records nothing. */
	ASSERT_EQ(lupe_session__target_system(s), -EOPNOTSUPP);
	ASSERT_EQ(lupe_session__record_raw(s, path), -EBUSY);
	lupe_session__free(s);
	unlink(path);
}

TEST(replay_of_a_missing_or_foreign_file_fails_with_errno)
{
	LUPE_OPTS(lupe_session_opts, o, .replay_path = "/nonexistent/lupe.raw");

	ASSERT(lupe_session__new(&o) == NULL);
	ASSERT_EQ(errno, ENOENT);
	o.replay_path = "/etc/hostname";
	ASSERT(lupe_session__new(&o) == NULL);
	ASSERT(errno == EBADMSG || errno == ENODATA);
}
