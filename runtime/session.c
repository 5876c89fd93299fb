#define LUPE_LOG_PREFIX "session: "
#include "session.h"

#include "ehframe.h"
#include "hashmap.h"
#include "log.h"
#include "rawfile.h"
#include "symcache.h"
#include "tracer.h"
#include "unwind.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

/* Evicted delta tables that were sampled again are reloaded at most this often. */
#define MAINTAIN_INTERVAL_NS 1000000000ull
/* Error-frame reasons the session adds itself (BPF's are LUPE_UNWIND_ERR_* in unwind.h). */
#define LUPE_ERR_USER_TRUNCATED 1
#define LUPE_ERR_KERNEL_TRUNCATED 2

/* A (raw stack, pid, comm) seen before: the per-sample cache and the aggregate at once.
 * A folded entry (gen FOLDED_GEN) has no frames and no slot: no sample can match it. */
#define FOLDED_GEN UINT32_MAX
#define DEFAULT_MAX_ENTRIES 16384
struct entry_raw {
	uint64_t hash;
	uint32_t gen;
	uint16_t klen, ulen;
	uint64_t *frames;
};

struct slot {
	uint64_t hash;
	uint32_t idx;   /* entry index + 1; 0: empty */
};

struct lupe_session {
	struct lupe_tracer *tracer;
	struct lupe_procmgr *pm;
	struct lupe_ebpf_handler *unwinder; /* the manager's handler when unwinding; borrowed */
	struct lupe_symcache *syms;
	uint64_t kernel_host;
	bool filter_errors;

	/* The aggregate: entries[i] with their raw keys raws[i], indexed by slots. */
	struct lupe_profile_entry *entries;
	struct entry_raw *raws;
	size_t nentries, cap_entries;
	struct slot *slots;
	size_t nslots;
	/* Folding (session.h): at fold_at entries or more, a poll folds exited processes'. */
	size_t max_entries, fold_at;
	uint64_t agg_heap;                  /* bytes of frame arrays of entries and traces */

	/* Unique traces, by their 128-bit hash. */
	struct lupe_sym_trace *traces;
	size_t ntraces, cap_traces;
	size_t nsymbolized;                 /* traces[0..nsymbolized) have frames */
	uint32_t *kpending;                 /* traces whose kernel frames await names */
	size_t nkpending, cap_kpending;
	struct lupe_hashmap *trace_index;   /* {hash.hi, hash.lo} -> index + 1 */
	struct lupe_hashmap *strings;       /* {fnv64, len} -> char * */
	struct lupe_hashmap *gens;          /* {pid, 0} -> generation (exec/exit count) */

	/* Processes synchronized because of an unknown address, in this poll and the last:
	 * each is read once more one poll later, when a young process has mapped its
	 * libraries. Samples from a short-lived process's last moments then find them even
	 * if it is gone by the time they are drained. */
	pid_t *young, *young_prev;
	size_t nyoung, nyoung_prev, cap_young;
	/* Processes that exec'd in this drain: their new image is read after it, unless they
	 * exited meanwhile (most execs of a busy machine are short-lived commands). */
	pid_t *execd;
	size_t nexecd, cap_execd;

	bool targeted, paused_by_user;
	bool system_wide;               /* the target is every process */
	pid_t child;
	bool child_done;
	int child_status;

	uint64_t batch_min_ktime;
	struct lupe_session_stats st;

	/* APM correlation: the registry the manager's decorators feed; this session's own
	 * descriptor of BPF's apm_procs map (-1: offline); the samples of this drain taken in
	 * transactions, per (entry, IDs), notified at its end; pids whose agent was attached
	 * since the last drain, whose older entries get the service name then. */
	struct lupe_apm *apm;
	int apm_fd;
	struct apm_tally *tally;
	size_t ntally, cap_tally;
	pid_t *relabel;
	size_t nrelabel, cap_relabel;
	uint64_t relabelled;            /* entries whose service name changed: verdicts redo */
	struct session_hooks *hooks;    /* NULL until a script asks for verdicts or events */
	/* The session's clock: ktime after the last drain or clock mark (replay: as recorded). */
	uint64_t clock;
	/* Raw recording (lupe_session__record_raw): what was written once already. */
	struct lupe_rawfile_writer *raw;
	struct lupe_hashmap *raw_maps;      /* {pid << 32 | gen, vaddr} -> host file ID */
	struct lupe_hashmap *raw_syms;      /* {host, addr} -> 1 */
	struct lupe_hashmap *raw_ksyms;     /* {addr, 0} -> 1 */
	struct lupe_hashmap *raw_files;     /* {host, 0} -> 1 */
	struct lupe_hashmap *raw_svc;       /* {pid << 32 | gen, 0} -> interned service */
	bool raw_kready;
	/* Replay (opts.replay_path): the recording, one record read ahead, and what it told. */
	struct lupe_rawfile_reader *rp;
	struct lupe_raw_record *rp_rec;
	bool rp_have, rp_done, rp_stopped, rp_kready;
	int rp_exit_status;
	struct lupe_hashmap *rp_maps;       /* {pid << 32 | gen, 0} -> struct rp_mappings */
	struct lupe_hashmap *rp_syms;       /* {host, addr} -> struct rp_sym */
	struct lupe_hashmap *rp_ksyms;      /* {addr, 0} -> struct rp_sym */
	struct lupe_hashmap *rp_files;      /* {host, 0} -> interned path */
	struct lupe_hashmap *rp_svc;        /* {pid << 32 | gen, 0} -> interned service */
	uint32_t rp_frequency, rp_ncpus;
	uint64_t rp_counters[LUPE_RAW_NSTATS];
	struct lupe_hashmap *rp_notes;      /* {fnv64(key), len} -> struct rp_note */
};

/* What lupe/session.lua's hooks need (see "hooks" in session.h). */
struct session_hooks {
	uint8_t *entry_v, *trace_v;
	size_t cap_entry_v, cap_trace_v;
	uint32_t *batch;
	size_t cap_batch;
	bool want_events;
	struct lupe_proc_event *events;
	size_t nevents, cap_events;
};

static void queue_event(struct lupe_session *s, const struct lupe_proc_event *ev);
static void hooks_free(struct session_hooks *h);
static int fold_entries(struct lupe_session *s);

struct rp_note {
	const char *key, *value;            /* interned */
};

struct rp_mappings {
	size_t n, cap;
	struct lupe_mapping m[];
};

struct rp_sym {
	const char *name, *module;          /* interned, or NULL */
	uint64_t offset;
};

struct lupe_tracer_stats;
static void raw_stats(struct lupe_session *s, struct lupe_tracer_stats *ts);

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
	static const char msg[] = "lupe: interrupted again: quitting without writing output\n";

	/* A script that runs again after an interrupt (a loop of runs) would end each run at
	 * once and never stop: a second Ctrl-C quits, as the default action would. */
	if (interrupted && sig == SIGINT) {
		if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0) {
			/* nothing else to do in a handler */
		}
		signal(SIGINT, SIG_DFL);
		raise(SIGINT);
		return;
	}
	interrupted = sig;
}

void lupe_session_install_signal_handlers(void)
{
	struct sigaction sa = { .sa_handler = on_signal };

	struct sigaction old;

	/* No SA_RESTART: the tracer's wait must return EINTR. */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	/* A closed terminal ends the run like Ctrl-C (the profile is still written), unless
	 * SIGHUP already means something else (lupe run --watch reloads on it). */
	if (sigaction(SIGHUP, NULL, &old) == 0 && old.sa_handler == SIG_DFL)
		sigaction(SIGHUP, &sa, NULL);
}

bool lupe_session_interrupted(void)
{
	return interrupted;
}

/* The signal that set the flag (record exits 128 + it), 0 when none did. */
int lupe_session_interrupt_signal(void)
{
	return interrupted;
}

void lupe_session_clear_interrupted(void)
{
	interrupted = 0;
}

/* ---- small helpers -------------------------------------------------------------------- */

static uint64_t mix64(uint64_t h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return h;
}

static uint64_t hash_words(uint64_t h, const uint64_t *w, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		h = (h ^ w[i]) * 0x9e3779b97f4a7c15ull + (h >> 29);
	return mix64(h);
}

static uint64_t fnv64(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	size_t i;

	for (i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* Interned strings live as long as the session; equal strings share one pointer. */
static const char *intern(struct lupe_session *s, const char *str)
{
	size_t len = strlen(str);
	struct lupe_key k = { fnv64(str, len), len };
	char *v;

	for (;;) {
		v = lupe_hashmap__get(s->strings, k);
		if (!v)
			break;
		if (strcmp(v, str) == 0)
			return v;
		k.a++; /* a true 64-bit collision: probe the next key */
	}
	v = strdup(str);
	if (!v || lupe_hashmap__set(s->strings, k, v, NULL)) {
		free(v);
		return NULL;
	}
	s->agg_heap += len + 1;
	return v;
}

static const char *basename_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash ? slash + 1 : path;
}

static uint32_t pid_gen(struct lupe_session *s, pid_t pid)
{
	return (uint32_t)(uintptr_t)lupe_hashmap__get(s->gens, (struct lupe_key){ (uint32_t)pid, 0 });
}

static void bump_gen(struct lupe_session *s, pid_t pid)
{
	uint32_t g = pid_gen(s, pid) + 1;

	lupe_hashmap__set(s->gens, (struct lupe_key){ (uint32_t)pid, 0 }, (void *)(uintptr_t)g, NULL);
}

/* The kernel's file ID: the ID of its build-ID notes, so it changes with the kernel. */
static int kernel_file_id(struct lupe_file_id *id)
{
	int fd = open("/sys/kernel/notes", O_RDONLY | O_CLOEXEC);
	char buf[4096];
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf));
	close(fd);
	if (n <= 0)
		return n < 0 ? -errno : -ENODATA;
	lupe_file_id_from_bytes(buf, (size_t)n, id);
	return 0;
}

/* ---- raw recording and replay: lookups ----------------------------------------------------
 *
 * Recording writes every answer a trace's conversion and symbolization got from this host
 * (mappings, symbols, paths) the first time it is used; replay answers the same questions
 * from those records instead of the host. */

static void raw_write(struct lupe_session *s, const struct lupe_raw_record *r)
{
	if (s->raw && lupe_rawfile_writer__write(s->raw, r))
		s->st.raw_write_errors++;
}

/* Writes r unless key was written before in seen (where ENOMEM only means a duplicate). */
static void raw_write_once(struct lupe_session *s, struct lupe_hashmap *seen, struct lupe_key k,
			   void *v, const struct lupe_raw_record *r)
{
	if (lupe_hashmap__get(seen, k) == v)
		return;
	lupe_hashmap__set(seen, k, v, NULL);
	raw_write(s, r);
}

/* The mapping of pid covering addr at ktime: the manager's (recorded), or the replay's. */
static int find_mapping(struct lupe_session *s, pid_t pid, uint32_t gen, uint64_t addr,
			uint64_t ktime, struct lupe_mapping *m)
{
	struct lupe_key k = { (uint64_t)(uint32_t)pid << 32 | gen, 0 };
	struct rp_mappings *pm;
	size_t i;
	int err;

	if (s->rp) {
		pm = lupe_hashmap__get(s->rp_maps, k);
		/* The newest first: a region mapped again replaces the old one. */
		for (i = pm ? pm->n : 0; i-- > 0;) {
			if (addr >= pm->m[i].vaddr && addr - pm->m[i].vaddr < pm->m[i].length) {
				*m = pm->m[i];
				return 0;
			}
		}
		return -ENOENT;
	}
	err = lupe_procmgr__find_mapping(s->pm, pid, addr, ktime, m, NULL, 0);
	if (!err && s->raw) {
		struct lupe_raw_record r = { .type = LUPE_RAW_MAPPING };

		r.mapping.pid = (uint32_t)pid;
		r.mapping.gen = gen;
		r.mapping.vaddr = m->vaddr;
		r.mapping.length = m->length;
		r.mapping.bias = m->bias;
		r.mapping.file_offset = m->file_offset;
		r.mapping.host = lupe_file_id_host(m->file_id);
		r.mapping.file_id = m->file_id;
		k.b = m->vaddr;
		raw_write_once(s, s->raw_maps, k, (void *)(uintptr_t)(r.mapping.host | 1), &r);
	}
	return err;
}

static const char *sym_native(struct lupe_session *s, uint64_t host, uint64_t addr, uint64_t *offset)
{
	struct lupe_key k = { host, addr };
	struct lupe_raw_record r = { .type = LUPE_RAW_SYMBOL };
	const char *name;

	if (s->rp) {
		struct rp_sym *y = lupe_hashmap__get(s->rp_syms, k);

		*offset = y ? y->offset : 0;
		return y ? y->name : NULL;
	}
	name = lupe_symcache__native(s->syms, host, addr, offset);
	if (s->raw) {
		r.symbol.host = host;
		r.symbol.addr = addr;
		r.symbol.offset = name ? *offset : 0;
		r.symbol.name = name;
		raw_write_once(s, s->raw_syms, k, (void *)1, &r);
	}
	return name;
}

static const char *sym_path(struct lupe_session *s, uint64_t host)
{
	struct lupe_key k = { host, 0 };
	struct lupe_raw_record r = { .type = LUPE_RAW_FILE };
	const char *path;

	if (s->rp)
		return lupe_hashmap__get(s->rp_files, k);
	path = lupe_symcache__path(s->syms, host);
	if (s->raw) {
		r.file.host = host;
		r.file.path = path;
		raw_write_once(s, s->raw_files, k, (void *)1, &r);
	}
	return path;
}

static const char *sym_kernel(struct lupe_session *s, uint64_t addr, uint64_t *offset,
			      const char **module)
{
	struct lupe_key k = { addr, 0 };
	struct lupe_raw_record r = { .type = LUPE_RAW_KSYMBOL };
	const char *name;

	if (s->rp) {
		struct rp_sym *y = lupe_hashmap__get(s->rp_ksyms, k);

		*offset = y ? y->offset : 0;
		*module = y ? y->module : NULL;
		return y ? y->name : NULL;
	}
	name = lupe_symcache__kernel(s->syms, addr, offset, module);
	if (s->raw) {
		r.ksymbol.addr = addr;
		r.ksymbol.offset = name ? *offset : 0;
		r.ksymbol.name = name;
		r.ksymbol.module = *module;
		raw_write_once(s, s->raw_ksyms, k, (void *)1, &r);
	}
	return name;
}

/* ---- symbolization of a new trace ------------------------------------------------------ */

static const char *reason_str(uint64_t code)
{
	switch (code) {
	case LUPE_ERR_USER_TRUNCATED: return "[truncated: user stack too deep]";
	case LUPE_ERR_KERNEL_TRUNCATED: return "[truncated: kernel stack too deep]";
	case LUPE_UNWIND_ERR_NO_MAPPING: return "[unwind error: no mapping]";
	case LUPE_UNWIND_ERR_NO_DELTA: return "[unwind error: no delta]";
	case LUPE_UNWIND_ERR_INVALID: return "[unwind error: invalid rule]";
	case LUPE_UNWIND_ERR_READ_FAULT: return "[unwind error: stack read fault]";
	case LUPE_UNWIND_ERR_TOO_DEEP: return "[unwind error: too deep]";
	case LUPE_UNWIND_ERR_ZERO_PC: return "[unwind error: zero return address]";
	case LUPE_UNWIND_ERR_FP_CHAIN: return "[unwind error: frame-pointer chain]";
	default: return "[unwind error]";
	}
}

/* Fills out[] from t. Kernel frames get their names only when with_kernel is set (the
 * kernel symbols may still be loading); their kind and address are set either way. */
static int symbolize(struct lupe_session *s, const struct lupe_trace *t, struct lupe_sym_frame *out,
		     bool with_kernel)
{
	uint32_t i;

	for (i = 0; i < t->nframes; i++) {
		const struct lupe_frame *f = &t->frames[i];
		struct lupe_sym_frame *o = &out[i];
		uint8_t kind = f->type & ~LUPE_FRAME_ERROR;
		bool unknown_file = f->file_id.hi == UINT64_MAX && f->file_id.lo == UINT64_MAX;
		const char *name = NULL, *module = NULL, *path;

		*o = (struct lupe_sym_frame){ .addr = f->addr_or_line, .type = f->type };
		if (lupe_frame_is_error(f->type)) {
			o->kind = LUPE_SYM_ERROR;
			o->name = intern(s, reason_str(f->addr_or_line));
			continue;
		}
		if (kind == LUPE_FRAME_KERNEL) {
			o->kind = LUPE_SYM_KERNEL;
			if (!with_kernel)
				continue;
			name = sym_kernel(s, f->addr_or_line, &o->offset, &module);
			o->module = intern(s, module ? module : "[kernel]");
		} else if (kind == LUPE_FRAME_NATIVE && !unknown_file) {
			o->kind = LUPE_SYM_NATIVE;
			name = sym_native(s, lupe_file_id_host(f->file_id), f->addr_or_line,
					  &o->offset);
			path = sym_path(s, lupe_file_id_host(f->file_id));
			o->module = path ? intern(s, basename_of(path)) : NULL;
			if (!name)
				s->st.symbol_misses++;
		} else {
			o->kind = LUPE_SYM_UNKNOWN;
		}
		if (name) {
			o->name = intern(s, name);
			if (!o->name)
				return -ENOMEM;
		}
	}
	return 0;
}

static size_t converted_bytes(const struct lupe_trace *t)
{
	return sizeof(*t) + (size_t)t->nframes * sizeof(t->frames[0]);
}

/* Converted frames are read by symbolization only: once it is done they go. */
static void drop_converted(struct lupe_session *s, struct lupe_sym_trace *t)
{
	if (!t->converted)
		return;
	s->agg_heap -= converted_bytes(t->converted);
	free((void *)t->converted);
	t->converted = NULL;
}

/* The index of the trace with this hash, remembering it if new. Symbolizing waits for
 * symbolize_pending: a drain first resolves every sample of the batch against its
 * process's mappings (which must happen while short-lived processes still exist), and
 * only then loads symbol tables, which can take milliseconds. */
static int intern_trace(struct lupe_session *s, struct lupe_trace *t, uint32_t *idx)
{
	struct lupe_key k = { t->hash.hi, t->hash.lo };
	uintptr_t v = (uintptr_t)lupe_hashmap__get(s->trace_index, k);

	if (v) {
		free(t);
		*idx = (uint32_t)(v - 1);
		return 0;
	}
	if (s->ntraces == s->cap_traces) {
		size_t cap = s->cap_traces ? s->cap_traces * 2 : 256;
		void *p = realloc(s->traces, cap * sizeof(*s->traces));

		if (!p)
			goto nomem;
		s->traces = p;
		s->cap_traces = cap;
	}
	if (lupe_hashmap__set(s->trace_index, k, (void *)(uintptr_t)(s->ntraces + 1), NULL))
		goto nomem;
	s->traces[s->ntraces] = (struct lupe_sym_trace){
		.hash = t->hash, .nframes = t->nframes, .converted = t };
	s->agg_heap += converted_bytes(t);
	*idx = (uint32_t)s->ntraces++;
	s->st.traces = s->ntraces;
	return 0;
nomem:
	free(t);
	return -ENOMEM;
}

static int push_kpending(struct lupe_session *s, uint32_t idx)
{
	if (s->nkpending == s->cap_kpending) {
		size_t cap = s->cap_kpending ? s->cap_kpending * 2 : 64;
		uint32_t *p = realloc(s->kpending, cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		s->kpending = p;
		s->cap_kpending = cap;
	}
	s->kpending[s->nkpending++] = idx;
	return 0;
}

static bool has_kernel_frames(const struct lupe_trace *t)
{
	return t->nframes && (t->frames[0].type & ~LUPE_FRAME_ERROR) == LUPE_FRAME_KERNEL;
}

/* Symbolizes the traces added since the last call. Native frames must be done before the
 * manager releases their files (symbolization_complete); kernel frames wait, without
 * blocking, for the kernel symbols loading in the background (wait: block for them). A
 * trace that cannot get memory for its frames keeps none, and is counted. */
static void symbolize_pending(struct lupe_session *s, bool wait)
{
	bool kready = wait || (s->rp ? s->rp_kready : lupe_symcache__kernel_ready(s->syms));
	size_t i;

	if (kready && !wait && s->raw && !s->raw_kready) {
		struct lupe_raw_record r = { .type = LUPE_RAW_KREADY };

		s->raw_kready = true;
		raw_write(s, &r);
	}

	for (; s->nsymbolized < s->ntraces; s->nsymbolized++) {
		struct lupe_sym_trace *t = &s->traces[s->nsymbolized];
		struct lupe_sym_frame *frames = calloc(t->nframes ? t->nframes : 1, sizeof(*frames));
		bool later = !kready && has_kernel_frames(t->converted);

		if (!frames || symbolize(s, t->converted, frames, !later) ||
		    (later && push_kpending(s, (uint32_t)s->nsymbolized))) {
			free(frames);
			t->nframes = 0;
			s->st.symbolize_errors++;
			drop_converted(s, t);
			continue;
		}
		t->frames = frames;
		s->agg_heap += (t->nframes ? t->nframes : 1) * sizeof(*frames);
		if (!later)
			drop_converted(s, t);
	}
	if (!kready || !s->nkpending)
		return;
	for (i = 0; i < s->nkpending; i++) {
		struct lupe_sym_trace *t = &s->traces[s->kpending[i]];

		if (symbolize(s, t->converted, (struct lupe_sym_frame *)t->frames, true))
			s->st.symbolize_errors++;
		drop_converted(s, t);
	}
	s->nkpending = 0;
}

/* ---- the per-sample path ------------------------------------------------------------- */

/* Indexes the entries that samples can still reach (folded ones cannot) in slots, an
 * empty array of n (a power of two), which replaces the old index. */
static void fill_slots(struct lupe_session *s, struct slot *slots, size_t n)
{
	size_t i, j;

	for (i = 0; i < s->nentries; i++) {
		if (s->raws[i].gen == FOLDED_GEN)
			continue;
		for (j = s->raws[i].hash & (n - 1); slots[j].idx; j = (j + 1) & (n - 1))
			;
		slots[j] = (struct slot){ s->raws[i].hash, (uint32_t)i + 1 };
	}
	free(s->slots);
	s->slots = slots;
	s->nslots = n;
}

static int grow_slots(struct lupe_session *s)
{
	size_t n = s->nslots ? s->nslots * 2 : 4096;
	struct slot *slots = calloc(n, sizeof(*slots));

	if (!slots)
		return -ENOMEM;
	fill_slots(s, slots, n);
	return 0;
}

static bool same_raw(const struct entry_raw *r, const struct lupe_profile_entry *e,
		     const struct lupe_sample *smp, uint32_t gen)
{
	return r->gen == gen && e->pid == (pid_t)smp->pid && r->klen == smp->kernel_len &&
	       r->ulen == smp->user_len && memcmp(e->comm, smp->comm, sizeof(e->comm)) == 0 &&
	       memcmp(r->frames, smp->frames, 8 * (size_t)(r->klen + r->ulen)) == 0;
}

/* Synchronizes pid and, with native unwinding, lets BPF unwind it from now on: its
 * marker carries the time before /proc/PID/maps was read, so an exec that BPF sees after
 * that time still voids it. */
static int sync_pid(struct lupe_session *s, pid_t pid)
{
	uint64_t t0 = lupe_ktime_now();
	int err;

	if (s->rp)
		return 0;   /* a replay has no processes to read: its mappings are recorded */
	err = lupe_procmgr__synchronize_process(s->pm, pid);
	if (!err && s->unwinder)
		lupe_stackdeltas__commit(s->unwinder, pid, t0);
	return err;
}

static void remember_young(struct lupe_session *s, pid_t pid)
{
	size_t i;

	for (i = 0; i < s->nyoung; i++)
		if (s->young[i] == pid)
			return;
	if (s->nyoung == s->cap_young) {
		size_t cap = s->cap_young ? s->cap_young * 2 : 64;
		pid_t *a = realloc(s->young, cap * sizeof(*a)), *b;

		if (!a)
			return;
		s->young = a;
		b = realloc(s->young_prev, cap * sizeof(*b));
		if (!b)
			return;
		s->young_prev = b;
		s->cap_young = cap;
	}
	s->young[s->nyoung++] = pid;
}

static bool synced_this_poll(const struct lupe_session *s, pid_t pid)
{
	size_t i;

	for (i = 0; i < s->nyoung; i++)
		if (s->young[i] == pid)
			return true;
	return false;
}

static void resync_young(struct lupe_session *s)
{
	pid_t *t;
	size_t i;

	for (i = 0; i < s->nyoung_prev; i++)
		sync_pid(s, s->young_prev[i]);
	t = s->young_prev;
	s->young_prev = s->young;
	s->young = t;
	s->nyoung_prev = s->nyoung;
	s->nyoung = 0;
}

/* A miss: resolve user addresses to (file, ELF address), convert, symbolize, add. */
static int new_entry(struct lupe_session *s, const struct lupe_sample *smp, uint64_t hash,
		     uint32_t gen, size_t slot)
{
	struct lupe_raw_frame rf[LUPE_MAX_FRAMES + 2];
	size_t n = 0, i, nf = (size_t)smp->kernel_len + smp->user_len;
	struct lupe_raw_trace raw = { .pid = (pid_t)smp->pid, .tid = (pid_t)smp->tid,
				      .ktime = smp->ktime };
	struct lupe_profile_entry *e;
	struct entry_raw *r;
	struct lupe_trace *t;
	bool resynced = false;
	uint32_t tidx;
	int err;

	for (i = 0; i < smp->kernel_len; i++)
		rf[n++] = (struct lupe_raw_frame){ .file = s->kernel_host, .addr_or_line = smp->frames[i],
						   .type = LUPE_FRAME_KERNEL, .return_address = i > 0 };
	if (smp->flags & LUPE_SAMPLE_KERNEL_TRUNC)
		rf[n++] = (struct lupe_raw_frame){ .addr_or_line = LUPE_ERR_KERNEL_TRUNCATED,
						   .type = LUPE_FRAME_KERNEL | LUPE_FRAME_ERROR };
	for (i = 0; i < smp->user_len; i++) {
		uint64_t addr = smp->frames[smp->kernel_len + i];
		struct lupe_mapping m;
		int miss;

		/* A return address points after the call, possibly past the mapping's end. */
		miss = find_mapping(s, raw.pid, gen, i > 0 ? addr - 1 : addr, smp->ktime, &m);
		/* Junk return addresses (frame-pointer walks through code without frame
		 * pointers) never resolve: read a process's maps at most once per drain.
		 * A replay has its recorded mappings only. */
		if (miss && !resynced && !s->rp && !synced_this_poll(s, raw.pid)) {
			resynced = true;
			s->st.resyncs++;
			remember_young(s, raw.pid);
			err = sync_pid(s, raw.pid);
			if (err)
				pr_debug("pid %d: cannot read its mappings %llu us after the sample: %s",
					 raw.pid, (unsigned long long)(lupe_ktime_now() - smp->ktime) / 1000,
					 lupe_errstr(err));
			miss = find_mapping(s, raw.pid, gen, i > 0 ? addr - 1 : addr, smp->ktime,
					    &m);
		}
		if (miss) {
			s->st.unknown_frames++;
			rf[n++] = (struct lupe_raw_frame){ .addr_or_line = addr,
							   .type = LUPE_FRAME_NATIVE,
							   .return_address = i > 0 };
			continue;
		}
		rf[n++] = (struct lupe_raw_frame){ .file = lupe_file_id_host(m.file_id),
						   .addr_or_line = addr - m.bias,
						   .type = LUPE_FRAME_NATIVE, .return_address = i > 0 };
	}
	if (smp->flags & LUPE_SAMPLE_USER_TRUNC)
		rf[n++] = (struct lupe_raw_frame){ .addr_or_line = LUPE_ERR_USER_TRUNCATED,
						   .type = LUPE_FRAME_NATIVE | LUPE_FRAME_ERROR };
	else if (smp->flags & LUPE_SAMPLE_UNWIND_ERR)
		rf[n++] = (struct lupe_raw_frame){ .addr_or_line = smp->user_err,
						   .type = LUPE_FRAME_NATIVE | LUPE_FRAME_ERROR };
	raw.nframes = (uint32_t)n;
	raw.frames = rf;
	err = lupe_procmgr__convert_trace(s->pm, &raw, &t);
	if (err)
		return err;
	err = intern_trace(s, t, &tidx);
	if (err)
		return err;

	if (s->nentries == s->cap_entries) {
		size_t cap = s->cap_entries ? s->cap_entries * 2 : 1024;
		void *e2 = realloc(s->entries, cap * sizeof(*s->entries));

		if (!e2)
			return -ENOMEM;
		s->entries = e2;
		e2 = realloc(s->raws, cap * sizeof(*s->raws));
		if (!e2)
			return -ENOMEM;
		s->raws = e2;
		s->cap_entries = cap;
	}
	r = &s->raws[s->nentries];
	r->frames = malloc(8 * (nf ? nf : 1));
	if (!r->frames)
		return -ENOMEM;
	memcpy(r->frames, smp->frames, 8 * nf);
	s->agg_heap += 8 * (nf ? nf : 1);
	r->hash = hash;
	r->gen = gen;
	r->klen = smp->kernel_len;
	r->ulen = smp->user_len;
	e = &s->entries[s->nentries];
	*e = (struct lupe_profile_entry){ .trace = tidx, .pid = raw.pid, .count = 1, .interval = 1,
					  .first_ktime = smp->ktime, .last_ktime = smp->ktime };
	memcpy(e->comm, smp->comm, sizeof(e->comm));
	s->slots[slot] = (struct slot){ hash, (uint32_t)++s->nentries };
	s->st.entries = s->nentries;
	if (s->nentries * 2 > s->nslots)
		return grow_slots(s);
	return 0;
}

/* ---- APM correlation ---------------------------------------------------------------------
 * Samples in transactions are aggregated into the same entries as the others (the
 * per-sample key stays the raw stack), and also tallied per (entry, trace ID, transaction
 * ID) for the current drain: a small open-addressing table, emptied when the drain's
 * notifications are sent. Samples without LUPE_SAMPLE_APM cost one flag test. */

struct apm_tally {
	uint32_t entry;               /* entry index + 1; 0: empty slot */
	uint32_t count;
	struct lupe_apm_ids ids;
};

static uint64_t tally_hash(uint32_t entry, const struct lupe_apm_ids *ids)
{
	uint64_t w[3];

	memcpy(w, ids, sizeof(w));
	return hash_words(entry, w, 3);
}

static int tally_grow(struct lupe_session *s)
{
	size_t cap = s->cap_tally ? s->cap_tally * 2 : 256, i, j;
	struct apm_tally *t = calloc(cap, sizeof(*t));

	if (!t)
		return -ENOMEM;
	for (i = 0; i < s->cap_tally; i++) {
		if (!s->tally[i].entry)
			continue;
		for (j = tally_hash(s->tally[i].entry, &s->tally[i].ids) & (cap - 1); t[j].entry;
		     j = (j + 1) & (cap - 1))
			;
		t[j] = s->tally[i];
	}
	free(s->tally);
	s->tally = t;
	s->cap_tally = cap;
	return 0;
}

static void apm_tally(struct lupe_session *s, size_t idx, const struct lupe_sample *smp)
{
	uint32_t entry = (uint32_t)idx + 1;
	size_t j;

	s->st.apm_samples++;
	if (!s->apm)    /* a replay: nobody to tell */
		return;
	if (s->ntally * 2 >= s->cap_tally && tally_grow(s)) {
		s->st.apm_tally_errors++;
		return;
	}
	for (j = tally_hash(entry, &smp->apm) & (s->cap_tally - 1); s->tally[j].entry;
	     j = (j + 1) & (s->cap_tally - 1)) {
		if (s->tally[j].entry == entry &&
		    !memcmp(&s->tally[j].ids, &smp->apm, sizeof(smp->apm))) {
			s->tally[j].count++;
			return;
		}
	}
	s->tally[j] = (struct apm_tally){ .entry = entry, .count = 1, .ids = smp->apm };
	s->ntally++;
}

static struct lupe_key svc_key(pid_t pid, uint32_t gen)
{
	return (struct lupe_key){ (uint64_t)(uint32_t)pid << 32 | gen, 0 };
}

/* Recording: a (pid, generation)'s service name each time it is first given or changes,
 * since a replay has no agent to ask. svc is interned: a pointer compare tells a change. */
static void raw_service(struct lupe_session *s, pid_t pid, uint32_t gen, const char *svc)
{
	struct lupe_raw_record r = { .type = LUPE_RAW_SERVICE };

	if (!s->raw || !svc)
		return;
	r.service.pid = (uint32_t)pid;
	r.service.gen = gen;
	r.service.name = svc;
	raw_write_once(s, s->raw_svc, svc_key(pid, gen), (void *)svc, &r);
}

/* The service name of pid's agent (pid in its generation gen), interned; NULL without
 * one. A replay answers from the recording's SERVICE records. */
static const char *apm_service(struct lupe_session *s, pid_t pid, uint32_t gen)
{
	const char *svc;

	if (s->rp)
		return lupe_hashmap__get(s->rp_svc, svc_key(pid, gen));
	svc = s->apm ? lupe_apm__service(s->apm, pid) : NULL;
	svc = svc ? intern(s, svc) : NULL;
	raw_service(s, pid, gen, svc);
	return svc;
}

/* The entries of (pid, gen) made before its service was known get it (interned svc);
 * counted, so that filter verdicts, which may read the service, are redone. */
static void relabel_entries(struct lupe_session *s, pid_t pid, uint32_t gen, const char *svc)
{
	size_t j;

	for (j = 0; j < s->nentries; j++) {
		if (s->entries[j].pid == pid && s->raws[j].gen == gen &&
		    s->entries[j].service != svc) {
			s->entries[j].service = svc;
			s->relabelled++;
		}
	}
}

/* Replay of a SERVICE record: later entries of (pid, gen) get the name, and so do its
 * earlier ones, as the live session's relabelling at the end of that drain did. */
static int rp_service(struct lupe_session *s, const struct lupe_raw_record *r)
{
	const char *svc = intern(s, r->service.name);

	if (!svc || lupe_hashmap__set(s->rp_svc, svc_key((pid_t)r->service.pid, r->service.gen),
				      (void *)svc, NULL))
		return -ENOMEM;
	relabel_entries(s, (pid_t)r->service.pid, r->service.gen, svc);
	return 0;
}

/* A new entry (index idx) of smp's process: labelled if the process has an agent. */
static void apm_new_entry(struct lupe_session *s, size_t idx, const struct lupe_sample *smp)
{
	s->entries[idx].service = apm_service(s, s->entries[idx].pid, s->raws[idx].gen);
	if (smp->flags & LUPE_SAMPLE_APM)
		apm_tally(s, idx, smp);
}

/* The registry's callbacks (under its lock: they must not call into it). */
static int apm_attached(void *ctx, pid_t pid, int64_t tls_offset)
{
	struct lupe_session *s = ctx;

	if (s->nrelabel == s->cap_relabel) {
		size_t cap = s->cap_relabel ? s->cap_relabel * 2 : 16;
		pid_t *p = realloc(s->relabel, cap * sizeof(*p));

		/* Entries sampled before the agent was found stay unlabelled; newer ones get
		 * it as they are made. */
		if (p) {
			s->relabel = p;
			s->cap_relabel = cap;
		}
	}
	if (s->nrelabel < s->cap_relabel)
		s->relabel[s->nrelabel++] = pid;
	return s->apm_fd >= 0 ? lupe_tracer_apm_set(s->apm_fd, pid, tls_offset) : 0;
}

static void apm_detached(void *ctx, pid_t pid)
{
	struct lupe_session *s = ctx;

	/* -ENOENT: BPF forgot it already (the process exec'd or exited). */
	if (s->apm_fd >= 0)
		lupe_tracer_apm_delete(s->apm_fd, pid);
}

/* End of a drain: agents pending are tried again; entries of processes whose agent was
 * just found get its service name; each (entry, transaction) tallied is notified. */
static void apm_poll(struct lupe_session *s)
{
	size_t i;

	if (!s->apm)
		return;
	lupe_apm__retry(s->apm, 0);
	for (i = 0; i < s->nrelabel; i++) {
		pid_t pid = s->relabel[i];
		uint32_t gen = pid_gen(s, pid);
		const char *svc = apm_service(s, pid, gen);

		if (svc)
			relabel_entries(s, pid, gen, svc);
	}
	s->nrelabel = 0;
	if (!s->ntally)
		return;
	for (i = 0; i < s->cap_tally; i++) {
		struct apm_tally *t = &s->tally[i];
		struct lupe_profile_entry *e;
		struct lupe_raw_trace raw;
		const char *svc;

		if (!t->entry)
			continue;
		e = &s->entries[t->entry - 1];
		raw = (struct lupe_raw_trace){ .pid = e->pid, .apm = &t->ids };
		svc = lupe_procmgr__notify_apm(s->pm, &raw, s->traces[e->trace].hash, t->count);
		s->st.apm_notified += t->count;
		if (svc && (!e->service || strcmp(e->service, svc))) {
			e->service = intern(s, svc);
			raw_service(s, e->pid, s->raws[t->entry - 1].gen, e->service);
		}
		*t = (struct apm_tally){ 0 };
	}
	s->ntally = 0;
}

static void apm_stats(struct lupe_session *s)
{
	if (s->tracer)
		lupe_tracer__apm_counters(s->tracer, &s->st.apm_bpf);
	if (s->apm)
		lupe_apm__stats(s->apm, &s->st.apm);
}

/* Makes the registry and wraps the manager's handler and reporter (both owned by the
 * wrappers from here, also on failure). Returns 0 or a negative errno. */
static int apm_setup(struct lupe_session *s, struct lupe_ebpf_handler **ebpf,
		     struct lupe_symbol_reporter **reporter)
{
	LUPE_OPTS(lupe_apm_opts, o, .attached = apm_attached, .detached = apm_detached, .ctx = s);
	int fd = s->tracer ? lupe_tracer__apm_map_fd(s->tracer) : -1;

	if (s->tracer && fd < 0)
		pr_warn("map 'apm_procs': %s: APM agents get no transaction IDs", lupe_errstr(fd));
	s->apm_fd = fd < 0 ? -1 : fd;
	s->apm = lupe_apm__new(&o);
	if (!s->apm) {
		(*ebpf)->ops->free(*ebpf);
		if (*reporter)
			(*reporter)->ops->free(*reporter);
		*ebpf = NULL;
		*reporter = NULL;
		return -errno;
	}
	*ebpf = lupe_apm_ebpf_new(s->apm, *ebpf);
	*reporter = lupe_apm_reporter_new(s->apm, *reporter);
	if (!*ebpf || !*reporter) {
		if (*ebpf)
			(*ebpf)->ops->free(*ebpf);
		if (*reporter)
			(*reporter)->ops->free(*reporter);
		*ebpf = NULL;
		*reporter = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* After the manager is gone: it tells the registry of the processes it releases. */
static void apm_free(struct lupe_session *s)
{
	lupe_apm__free(s->apm);
	if (s->apm_fd >= 0)
		close(s->apm_fd);
	free(s->tally);
	free(s->relabel);
}

uint64_t lupe_session__relabelled(const struct lupe_session *s)
{
	return s->relabelled;
}

struct lupe_apm *lupe_session__apm(struct lupe_session *s)
{
	return s->apm;
}

static int on_sample(void *ctx, const struct lupe_sample *smp)
{
	struct lupe_session *s = ctx;
	size_t nf = (size_t)smp->kernel_len + smp->user_len;
	uint32_t gen = pid_gen(s, (pid_t)smp->pid);
	uint64_t head[4], hash;
	size_t j, before;
	int err;

	if (nf > LUPE_MAX_FRAMES) {
		s->st.bpf_bad_records++;
		return 0;
	}
	if (smp->ktime < s->batch_min_ktime)
		s->batch_min_ktime = smp->ktime;
	s->st.samples++;
	head[0] = ((uint64_t)smp->pid << 32) | gen;
	head[1] = ((uint64_t)smp->kernel_len << 16) | smp->user_len;
	memcpy(&head[2], smp->comm, 16);
	hash = hash_words(hash_words(0, head, 4), (const uint64_t *)smp->frames, nf);

	for (j = hash & (s->nslots - 1); s->slots[j].idx; j = (j + 1) & (s->nslots - 1)) {
		size_t i = s->slots[j].idx - 1;

		if (s->slots[j].hash != hash)
			continue;
		if (same_raw(&s->raws[i], &s->entries[i], smp, gen)) {
			s->entries[i].count++;
			s->entries[i].interval++;
			s->entries[i].last_ktime = smp->ktime;
			s->st.cache_hits++;
			if (smp->flags & LUPE_SAMPLE_APM)
				apm_tally(s, i, smp);
			return 0;
		}
		s->st.hash_collisions++;
	}
	s->st.cache_misses++;
	before = s->nentries;
	err = new_entry(s, smp, hash, gen, j);
	if (s->nentries > before)
		apm_new_entry(s, before, smp);
	return err;
}

static void push_execd(struct lupe_session *s, pid_t pid)
{
	size_t i;

	for (i = 0; i < s->nexecd; i++)
		if (s->execd[i] == pid)
			return;
	if (s->nexecd == s->cap_execd) {
		size_t cap = s->cap_execd ? s->cap_execd * 2 : 64;
		pid_t *p = realloc(s->execd, cap * sizeof(*p));

		/* Lost: the pid's next sample asks for it (LUPE_EV_NEW_PID). */
		if (!p)
			return;
		s->execd = p;
		s->cap_execd = cap;
	}
	s->execd[s->nexecd++] = pid;
}

static void drop_execd(struct lupe_session *s, pid_t pid)
{
	size_t i;

	for (i = 0; i < s->nexecd; i++) {
		if (s->execd[i] == pid) {
			s->execd[i] = s->execd[--s->nexecd];
			return;
		}
	}
}

static void sync_execd(struct lupe_session *s)
{
	uint64_t t0;
	size_t i;

	if (!s->nexecd)
		return;
	t0 = lupe_ktime_now();
	for (i = 0; i < s->nexecd; i++)
		if (sync_pid(s, s->execd[i]) == 0)
			s->st.exec_syncs++;
	s->st.exec_sync_ns += lupe_ktime_now() - t0;
	s->nexecd = 0;
}

static int on_event(void *ctx, const struct lupe_proc_event *ev)
{
	struct lupe_session *s = ctx;
	pid_t pid = (pid_t)ev->pid;
	bool known;

	switch (ev->type) {
	case LUPE_EV_EXEC:
		/* The old image stays for samples captured before the exec (conversion looks
		 * mappings up by capture time). The new one is read when a sample needs it,
		 * so the many execs of a busy machine cost nothing unless they are sampled:
		 * BPF asks for a pid it cannot unwind (LUPE_EV_NEW_PID) at its first sample.
		 * A targeted process (a command, pids, a cgroup: only those report execs) is
		 * read right after the drain if it still runs, so that its first samples
		 * need no request; ~0.1 ms per process here, of which ~20 us for the
		 * unwinder's maps. */
		s->st.exec_events++;
		known = lupe_procmgr__pid_exit(s->pm, pid, ev->ktime);
		bump_gen(s, pid);
		/* While on_process wants every exec of the machine (report_all), only processes
		 * the session tracks are read again: not every short-lived command. */
		if (s->unwinder && !s->system_wide &&
		    (known || !s->hooks || !s->hooks->want_events))
			push_execd(s, pid);
		break;
	case LUPE_EV_EXIT:
		s->st.exit_events++;
		lupe_procmgr__pid_exit(s->pm, pid, ev->ktime);
		bump_gen(s, pid);
		drop_execd(s, pid);
		break;
	case LUPE_EV_NEW_PID:
		s->st.new_pid_events++;
		/* on_process hears of a pid once it is synchronized ("sync"). */
		if (sync_pid(s, pid) != 0)
			return 0;
		break;
	default:
		break;
	}
	if (s->hooks && s->hooks->want_events)
		queue_event(s, ev);
	return 0;
}

int lupe_session__ingest_sample(struct lupe_session *s, const struct lupe_sample *smp)
{
	return on_sample(s, smp);
}

int lupe_session__ingest_event(struct lupe_session *s, const struct lupe_proc_event *ev)
{
	return on_event(s, ev);
}

/* ---- raw recording and replay: the stream -------------------------------------------------
 *
 * A drain's samples and events are written after the session handled them, so the
 * mappings and symbols they needed come first; a POLL record ends each drain. Replay reads
 * a drain up to its POLL record and handles it the same way; what the script asked between
 * drains (stats, clock marks, symbols of traces it looked at, the end of a run) follows
 * the POLL record and is read when replay is asked the same. */

static int record_sample(void *ctx, const struct lupe_sample *smp)
{
	struct lupe_session *s = ctx;
	int err = on_sample(s, smp);

	if (s->raw && lupe_rawfile_writer__write_sample(s->raw, smp))
		s->st.raw_write_errors++;
	return err;
}

static int record_event(void *ctx, const struct lupe_proc_event *ev)
{
	struct lupe_session *s = ctx;
	struct lupe_raw_record r = { .type = LUPE_RAW_EVENT };
	int err = on_event(s, ev);

	r.event = *ev;
	raw_write(s, &r);
	return err;
}

/* The record read ahead, or NULL at the end of the recording (or an error: logged once). */
static const struct lupe_raw_record *rp_peek(struct lupe_session *s)
{
	int n;

	if (s->rp_have)
		return s->rp_rec;
	if (s->rp_done)
		return NULL;
	n = lupe_rawfile_reader__next(s->rp, s->rp_rec);
	if (n <= 0) {
		if (n < 0) {
			s->st.replay_errors++;
			pr_warn("replay: %s; the replay ends there", lupe_rawfile_reader__error(s->rp));
		}
		s->rp_done = true;
		return NULL;
	}
	s->rp_have = true;
	return s->rp_rec;
}

static int rp_add_mapping(struct lupe_session *s, const struct lupe_raw_record *r)
{
	struct lupe_key k = { (uint64_t)r->mapping.pid << 32 | r->mapping.gen, 0 };
	struct rp_mappings *pm = lupe_hashmap__get(s->rp_maps, k), *p2;
	struct lupe_fileid_mapper *fm = lupe_procmgr__file_id_mapper(s->pm);

	if (!pm || pm->n == pm->cap) {
		size_t cap = pm ? pm->cap * 2 : 8;

		p2 = realloc(pm, sizeof(*pm) + cap * sizeof(pm->m[0]));
		if (!p2)
			return -ENOMEM;
		if (!pm)
			p2->n = 0;
		p2->cap = cap;
		pm = p2;
		if (lupe_hashmap__set(s->rp_maps, k, pm, NULL)) {
			/* Still reachable only if it was there before the realloc. */
			if (!pm->n)
				free(pm);
			return -ENOMEM;
		}
	}
	pm->m[pm->n++] = (struct lupe_mapping){ .file_id = r->mapping.file_id,
						.vaddr = r->mapping.vaddr,
						.length = r->mapping.length,
						.bias = r->mapping.bias,
						.file_offset = r->mapping.file_offset };
	/* Conversion finds the 128-bit ID through the manager's mapper, as live. */
	return fm->ops->set(fm, r->mapping.host, r->mapping.file_id);
}

static int rp_add_sym(struct lupe_session *s, struct lupe_hashmap *m, struct lupe_key k,
		      const char *name, const char *module, uint64_t offset)
{
	struct rp_sym *y = calloc(1, sizeof(*y)), *old = NULL;

	if (!y)
		return -ENOMEM;
	y->offset = offset;
	if ((name && !(y->name = intern(s, name))) || (module && !(y->module = intern(s, module))) ||
	    lupe_hashmap__set(m, k, y, (void **)&old)) {
		free(y);
		return -ENOMEM;
	}
	free(old);
	return 0;
}

/* Handles the record read ahead and consumes it. */
static int rp_apply(struct lupe_session *s)
{
	const struct lupe_raw_record *r = s->rp_rec;
	const char *path;
	int i, err = 0;

	s->rp_have = false;
	switch (r->type) {
	case LUPE_RAW_SAMPLE:
		return on_sample(s, &r->sample);
	case LUPE_RAW_EVENT:
		return on_event(s, &r->event);
	case LUPE_RAW_MAPPING:
		return rp_add_mapping(s, r);
	case LUPE_RAW_FILE:
		path = r->file.path ? intern(s, r->file.path) : NULL;
		if (r->file.path && !path)
			return -ENOMEM;
		if (path && lupe_hashmap__set(s->rp_files, (struct lupe_key){ r->file.host, 0 },
					      (void *)path, NULL))
			return -ENOMEM;
		return 0;
	case LUPE_RAW_SYMBOL:
		return rp_add_sym(s, s->rp_syms, (struct lupe_key){ r->symbol.host, r->symbol.addr },
				  r->symbol.name, NULL, r->symbol.offset);
	case LUPE_RAW_KSYMBOL:
		return rp_add_sym(s, s->rp_ksyms, (struct lupe_key){ r->ksymbol.addr, 0 },
				  r->ksymbol.name, r->ksymbol.module, r->ksymbol.offset);
	case LUPE_RAW_POLL:
		s->clock = r->poll.ktime;
		break;
	case LUPE_RAW_CLOCK:
		s->clock = r->clock.ktime;
		break;
	case LUPE_RAW_STATS:
		s->rp_frequency = r->stats.frequency;
		s->rp_ncpus = r->stats.ncpus;
		for (i = 0; i < LUPE_RAW_NSTATS; i++)
			s->rp_counters[i] = r->stats.counters[i];
		break;
	case LUPE_RAW_STOP:
		s->rp_stopped = true;
		s->rp_exit_status = r->stop.exit_status;
		break;
	case LUPE_RAW_KREADY:
		s->rp_kready = true;
		break;
	case LUPE_RAW_NOTE: {
		size_t len = strlen(r->note.key);
		struct rp_note *nt = calloc(1, sizeof(*nt)), *old = NULL;

		if (!nt || !(nt->key = intern(s, r->note.key)) ||
		    !(nt->value = intern(s, r->note.value)) ||
		    lupe_hashmap__set(s->rp_notes, (struct lupe_key){ fnv64(r->note.key, len), len },
				      nt, (void **)&old)) {
			free(nt);
			return -ENOMEM;
		}
		free(old);
		break;
	}
	case LUPE_RAW_END:
		s->rp_done = true;
		break;
	case LUPE_RAW_SERVICE:
		return rp_service(s, r);
	}
	return err;
}

/* Handles the records written between two drains that answer nothing in particular
 * (mappings, symbols, notes). It stops at the next drain and at the answers to the
 * script's questions (CLOCK, STATS, STOP): each is taken by the same question in replay
 * (rp_answer), so a script that asks twice between drains gets both answers in order. */
static void rp_absorb(struct lupe_session *s)
{
	const struct lupe_raw_record *r;

	while (s->rp && (r = rp_peek(s)) && r->type != LUPE_RAW_SAMPLE &&
	       r->type != LUPE_RAW_EVENT && r->type != LUPE_RAW_POLL &&
	       r->type != LUPE_RAW_CLOCK && r->type != LUPE_RAW_STATS && r->type != LUPE_RAW_STOP)
		if (rp_apply(s))
			s->st.replay_errors++;
}

/* The recorded answer of this type, if it is the next one. A replay of another script may
 * find none: the last answer holds, and the next drain reads past what was not asked. */
static bool rp_answer(struct lupe_session *s, uint32_t type)
{
	const struct lupe_raw_record *r;

	rp_absorb(s);
	r = rp_peek(s);
	if (!r || r->type != type)
		return false;
	rp_apply(s);
	return true;
}

/* One recorded drain: everything up to and including its POLL record. Returns what the
 * live drain returned, or 0 at the end of the recording. */
static int rp_drain(struct lupe_session *s)
{
	const struct lupe_raw_record *r;
	uint32_t type;

	while ((r = rp_peek(s))) {
		type = r->type;
		if (type == LUPE_RAW_POLL) {
			int n = (int32_t)r->poll.nrecords;

			rp_apply(s);
			return n;
		}
		if (rp_apply(s))
			s->st.replay_errors++;
	}
	return 0;
}

int lupe_session__poll(struct lupe_session *s, int timeout_ms)
{
	static const struct lupe_tracer_handlers h = { .sample = record_sample,
						       .event = record_event };
	uint64_t start = lupe_ktime_now();
	int n = 0;

	s->batch_min_ktime = UINT64_MAX;
	if (s->rp) {
		n = rp_drain(s);
		start = s->clock;
	} else if (s->tracer) {
		n = lupe_tracer__poll(s->tracer, timeout_ms, &h, s);
	} else if (timeout_ms > 0) {
		usleep((useconds_t)timeout_ms * 1000);
	}
	sync_execd(s);
	resync_young(s);
	if (s->unwinder)
		lupe_stackdeltas__maintain(s->unwinder, start, MAINTAIN_INTERVAL_NS);
	symbolize_pending(s, false);
	apm_poll(s);
	/* After apm_poll, which emptied the tally of entry indexes. */
	if (s->nentries >= s->fold_at && fold_entries(s))
		pr_debug("no memory to fold entries: %zu kept", s->nentries);
	/* Everything captured before the oldest sample of this batch (or before the drain
	 * began, if it was empty) has been converted: processes that exited by then can go. */
	lupe_procmgr__symbolization_complete(s->pm, s->batch_min_ktime < start ? s->batch_min_ktime
										 : start);
	lupe_procmgr__tick(s->pm, start);
	if (s->child > 0 && !s->child_done && waitpid(s->child, &s->child_status, WNOHANG) == s->child)
		s->child_done = true;
	if (!s->rp) {
		s->clock = lupe_ktime_now();
		if (s->raw) {
			struct lupe_raw_record r = { .type = LUPE_RAW_POLL };

			r.poll.ktime = s->clock;
			r.poll.nrecords = (uint32_t)n;
			raw_write(s, &r);
		}
	}
	return n;
}

/* ---- targets and the command ------------------------------------------------------------ */

/* Sampling starts (or goes on) once a target is set: see start_paused in __new. */
static int targeted(struct lupe_session *s, int err)
{
	if (err < 0 || s->paused_by_user)
		return err;
	s->targeted = true;
	return lupe_tracer__resume(s->tracer) ?: err;
}

int lupe_session__target_system(struct lupe_session *s)
{
	if (!s->tracer)
		return -EOPNOTSUPP;
	s->system_wide = true;
	return targeted(s, lupe_tracer__target_all(s->tracer));
}

int lupe_session__target_pids(struct lupe_session *s, const pid_t *pids, size_t n)
{
	size_t i;
	int err = s->tracer ? lupe_tracer__target_pids(s->tracer, pids, n) : -EOPNOTSUPP;

	if (!err)
		s->system_wide = false;
	for (i = 0; !err && i < n; i++)
		sync_pid(s, pids[i]);
	return s->tracer ? targeted(s, err) : err;
}

int lupe_session__target_cgroup(struct lupe_session *s, const char *path)
{
	struct stat st;

	if (!s->tracer)
		return -EOPNOTSUPP;
	if (stat(path, &st) < 0) {
		int err = -errno;

		pr_warn("cgroup '%s': %s", path, lupe_errstr(err));
		return err;
	}
	if (!S_ISDIR(st.st_mode)) {
		pr_warn("cgroup '%s': not a cgroup v2 directory", path);
		return -ENOTDIR;
	}
	s->system_wide = false;
	return targeted(s, lupe_tracer__target_cgroup(s->tracer, st.st_ino));
}

int lupe_session__start_command(struct lupe_session *s, char *const argv[])
{
	int go[2], fail[2], err = 0, child_err;
	ssize_t n;
	pid_t pid;

	if (!argv || !argv[0])
		return -EINVAL;
	if (!s->tracer)
		return -EOPNOTSUPP;
	if (pipe2(go, O_CLOEXEC) < 0)
		return -errno;
	if (pipe2(fail, O_CLOEXEC) < 0) {
		err = -errno;
		close(go[0]);
		close(go[1]);
		return err;
	}
	pid = fork();
	if (pid < 0) {
		err = -errno;
		goto out;
	}
	if (pid == 0) {
		char c;

		/* Wait until the tracer follows us, so the exec itself is profiled. */
		close(go[1]);
		close(fail[0]);
		if (read(go[0], &c, 1) != 1)
			_exit(127);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGHUP, SIG_DFL);
		/* lupe may run with ambient capabilities (CAP_BPF, CAP_PERFMON, ...: see
		 * docs/security.md); the profiled command gets none of them. */
		prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
		execvp(argv[0], argv);
		child_err = errno;
		if (write(fail[1], &child_err, sizeof(child_err)) < 0)
			_exit(127);
		_exit(127);
	}
	close(go[0]);
	go[0] = -1;
	close(fail[1]);
	fail[1] = -1;
	s->system_wide = false;
	err = targeted(s, lupe_tracer__follow_pid(s->tracer, pid));
	if (err) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		goto out;
	}
	if (write(go[1], "g", 1) != 1) {
		err = -errno;
		goto out;
	}
	/* EOF: exec succeeded (the pipe closed on exec); else the child's errno. */
	n = read(fail[0], &child_err, sizeof(child_err));
	if (n == sizeof(child_err)) {
		waitpid(pid, NULL, 0);
		err = -child_err;
		pr_warn("cannot run '%s': %s", argv[0], lupe_errstr(err));
		goto out;
	}
	s->child = pid;
	err = pid;
out:
	if (go[0] >= 0)
		close(go[0]);
	close(go[1]);
	close(fail[0]);
	if (fail[1] >= 0)
		close(fail[1]);
	return err;
}

bool lupe_session__command_done(struct lupe_session *s, int *status)
{
	if (s->child > 0 && !s->child_done && waitpid(s->child, &s->child_status, WNOHANG) == s->child)
		s->child_done = true;
	if (s->child_done && status)
		*status = s->child_status;
	return s->child_done;
}

int lupe_session__set_frequency(struct lupe_session *s, unsigned int hz)
{
	return s->tracer ? lupe_tracer__set_frequency(s->tracer, hz) : -EOPNOTSUPP;
}

unsigned int lupe_session__frequency(const struct lupe_session *s)
{
	if (s->rp)
		return s->rp_frequency;
	return s->tracer ? lupe_tracer__frequency(s->tracer) : 0;
}

int lupe_session__pause(struct lupe_session *s)
{
	if (!s->tracer)
		return -EOPNOTSUPP;
	s->paused_by_user = true;
	return lupe_tracer__pause(s->tracer);
}

int lupe_session__resume(struct lupe_session *s)
{
	if (!s->tracer)
		return -EOPNOTSUPP;
	s->paused_by_user = false;
	/* Nothing to sample before a target is set. */
	return s->targeted ? lupe_tracer__resume(s->tracer) : 0;
}

/* ---- the aggregate ----------------------------------------------------------------------- */

const struct lupe_profile_entry *lupe_session__entries(struct lupe_session *s, size_t *n)
{
	*n = s->nentries;
	return s->entries;
}

const struct lupe_sym_trace *lupe_session__trace(struct lupe_session *s, uint32_t idx)
{
	rp_absorb(s);
	symbolize_pending(s, true);
	return idx < s->ntraces ? &s->traces[idx] : NULL;
}

size_t lupe_session__ntraces(struct lupe_session *s)
{
	return s->ntraces;
}

void lupe_session__interval_reset(struct lupe_session *s)
{
	size_t i;

	for (i = 0; i < s->nentries; i++)
		s->entries[i].interval = 0;
}

uint64_t lupe_session__folds(const struct lupe_session *s)
{
	return s->st.folds;
}

/* ---- folding the entries of exited processes (session.h) -------------------------------- */

static uint8_t entry_verdict(const struct lupe_session *s, size_t i)
{
	const struct session_hooks *h = s->hooks;

	return h && i < h->cap_entry_v ? h->entry_v[i] : LUPE_VERDICT_UNDECIDED;
}

/* An entry no sample can reach any more: folded already, or its process exited or exec'd
 * (samples are keyed by the pid's generation when they are aggregated). */
static bool entry_dead(struct lupe_session *s, size_t i)
{
	return s->raws[i].gen == FOLDED_GEN || s->raws[i].gen != pid_gen(s, s->entries[i].pid);
}

/* Entries that fold together share trace, comm, service and verdict (a filter may have
 * kept one process's entry and dropped another's: they stay apart). */
static uint64_t fold_key(const struct lupe_profile_entry *e, uint8_t verdict)
{
	uint64_t w[4];

	w[0] = (uint64_t)e->trace << 8 | verdict;
	w[1] = (uint64_t)(uintptr_t)e->service;
	memcpy(&w[2], e->comm, sizeof(e->comm));
	return hash_words(0, w, 4);
}

static bool same_fold(const struct lupe_session *s, size_t k, const struct lupe_profile_entry *e,
		      uint64_t key, uint8_t verdict)
{
	const struct lupe_profile_entry *f = &s->entries[k];

	return s->raws[k].hash == key && f->trace == e->trace && f->service == e->service &&
	       memcmp(f->comm, e->comm, sizeof(e->comm)) == 0 && entry_verdict(s, k) == verdict;
}

/* Entry i moves to j <= i, with its verdict v. */
static void move_entry(struct lupe_session *s, size_t i, size_t j, uint8_t v)
{
	if (s->hooks && j < s->hooks->cap_entry_v)
		s->hooks->entry_v[j] = v;
	if (i == j)
		return;
	s->entries[j] = s->entries[i];
	s->raws[j] = s->raws[i];
}

/* One pass over the aggregate, in place and in order. Returns 0, or -ENOMEM with nothing
 * changed. */
static int fold_entries(struct lupe_session *s)
{
	size_t n = s->nentries, cap = 16, i, j = 0, k, folded = 0;
	struct slot *slots = calloc(s->nslots, sizeof(*slots));
	uint32_t *tab;   /* fold key -> the folded entry's new index + 1 */

	while (cap < 2 * n)
		cap *= 2;
	tab = calloc(cap, sizeof(*tab));
	if (!tab || !slots) {
		free(tab);
		free(slots);
		return -ENOMEM;
	}
	for (i = 0; i < n; i++) {
		struct lupe_profile_entry *e = &s->entries[i];
		struct entry_raw *r = &s->raws[i];
		uint8_t v = entry_verdict(s, i);
		uint64_t key;

		if (!entry_dead(s, i)) {
			move_entry(s, i, j++, v);
			continue;
		}
		key = fold_key(e, v);
		for (k = key & (cap - 1); tab[k]; k = (k + 1) & (cap - 1))
			if (same_fold(s, tab[k] - 1, e, key, v))
				break;
		if (r->gen != FOLDED_GEN) {
			size_t nf = (size_t)r->klen + r->ulen;

			folded++;
			s->agg_heap -= 8 * (nf ? nf : 1);
			free(r->frames);
			*r = (struct entry_raw){ .gen = FOLDED_GEN };
		}
		if (tab[k]) {
			struct lupe_profile_entry *f = &s->entries[tab[k] - 1];

			f->count += e->count;
			f->interval += e->interval;
			if (e->first_ktime < f->first_ktime)
				f->first_ktime = e->first_ktime;
			if (e->last_ktime > f->last_ktime)
				f->last_ktime = e->last_ktime;
			continue;
		}
		e->pid = 0;
		r->hash = key;
		tab[k] = (uint32_t)j + 1;
		move_entry(s, i, j++, v);
	}
	/* The entries made from here on start undecided. */
	if (s->hooks && j < s->hooks->cap_entry_v) {
		size_t end = n < s->hooks->cap_entry_v ? n : s->hooks->cap_entry_v;

		memset(s->hooks->entry_v + j, 0, end - j);
	}
	s->nentries = j;
	s->st.entries = j;
	s->st.folded_entries += folded;
	s->st.folds++;
	fill_slots(s, slots, s->nslots);
	free(tab);
	/* Too few were folded: wait until the aggregate doubles rather than fold every poll. */
	s->fold_at = 2 * j > s->max_entries ? 2 * j : s->max_entries;
	return 0;
}

/* Frees every entry's and trace's frames (their arrays stay, empty). */
static void drop_aggregate(struct lupe_session *s)
{
	size_t i;

	for (i = 0; i < s->nentries; i++) {
		size_t nf = (size_t)s->raws[i].klen + s->raws[i].ulen;

		if (s->raws[i].gen != FOLDED_GEN)
			s->agg_heap -= 8 * (nf ? nf : 1);
		free(s->raws[i].frames);
	}
	for (i = 0; i < s->ntraces; i++) {
		struct lupe_sym_trace *t = &s->traces[i];

		drop_converted(s, t);
		if (t->frames)
			s->agg_heap -= (t->nframes ? t->nframes : 1) * sizeof(*t->frames);
		free((void *)t->frames);
	}
	s->nentries = s->ntraces = s->nsymbolized = s->nkpending = 0;
}

int lupe_session__reset(struct lupe_session *s)
{
	struct lupe_hashmap *index = lupe_hashmap__new();

	if (!index)
		return -ENOMEM;
	lupe_hashmap__free(s->trace_index);
	s->trace_index = index;
	drop_aggregate(s);
	if (s->slots)
		memset(s->slots, 0, s->nslots * sizeof(*s->slots));
	/* Tallies name entries; a drain notifies and empties them before it returns. */
	if (s->tally)
		memset(s->tally, 0, s->cap_tally * sizeof(*s->tally));
	s->ntally = 0;
	/* Either verdict array may not exist yet (a filter without on_trace, or before a poll). */
	if (s->hooks && s->hooks->entry_v)
		memset(s->hooks->entry_v, LUPE_VERDICT_UNDECIDED, s->hooks->cap_entry_v);
	if (s->hooks && s->hooks->trace_v)
		memset(s->hooks->trace_v, LUPE_VERDICT_UNDECIDED, s->hooks->cap_trace_v);
	s->fold_at = s->max_entries;
	s->st.traces = s->st.entries = 0;
	s->st.resets++;
	return 0;
}

void lupe_session__stats(struct lupe_session *s, struct lupe_session_stats *out)
{
	struct lupe_tracer_stats ts = { 0 };
	size_t i;

	if (s->tracer)
		lupe_tracer__stats(s->tracer, &ts);
	raw_stats(s, &ts);
	s->st.samples_seen = ts.samples_seen;
	s->st.idle = ts.idle;
	s->st.filtered = ts.filtered;
	s->st.emitted = ts.emitted;
	s->st.lost = ts.ringbuf_full;
	s->st.kernel_stack_err = ts.kernel_stack_err;
	s->st.user_stack_err = ts.user_stack_err;
	s->st.kernel_trunc = ts.kernel_trunc;
	s->st.user_trunc = ts.user_trunc;
	s->st.events_lost = ts.events_lost;
	s->st.ncpus = ts.ncpus;
	s->st.unwind_samples = ts.unwind_samples;
	s->st.unwind_frames = ts.unwind_frames;
	s->st.unwind_cache_hits = ts.unwind_cache_hits;
	s->st.fallback_frames = ts.fallback_frames;
	s->st.no_table_frames = ts.no_table_frames;
	s->st.unknown_pid_samples = ts.unknown_pid;
	s->st.sync_requests = ts.sync_requests;
	s->st.unwind_errors = 0;
	for (i = 0; i < LUPE_UNWIND_NERR; i++) {
		s->st.unwind_err[i] = ts.unwind_err[i];
		s->st.unwind_errors += ts.unwind_err[i];
	}
	s->st.rate_skipped = ts.rate_skipped;
	s->st.window_skipped = ts.window_skipped;
	s->st.filter_dropped = ts.filter_dropped;
	s->st.bpf_map_bytes = ts.map_bytes;
	lupe_stackdeltas__stats(s->unwinder, &s->st.deltas);
	lupe_procmgr__stats(s->pm, &s->st.pm);
	apm_stats(s);
	s->st.raw_bytes = lupe_rawfile_writer__bytes(s->raw);
	s->st.aggregate_bytes = s->agg_heap +
		s->cap_entries * (sizeof(*s->entries) + sizeof(*s->raws)) +
		s->nslots * sizeof(*s->slots) + s->cap_traces * sizeof(*s->traces) +
		s->cap_kpending * sizeof(*s->kpending) + lupe_hashmap__mem(s->trace_index) +
		lupe_hashmap__mem(s->strings) + lupe_hashmap__mem(s->gens);
	*out = s->st;
	out->bpf_bad_records += ts.bad_records;
}

struct lupe_procmgr *lupe_session__procmgr(struct lupe_session *s)
{
	return s->pm;
}

/* ---- raw recording and replay: the API ---------------------------------------------------- */

/* The tracer's counters in the STATS record's order, and back. */
#define RAW_STATS(X)                                                                        \
	X(SAMPLES_SEEN, samples_seen) X(IDLE, idle) X(FILTERED, filtered) X(EMITTED, emitted) \
	X(RINGBUF_FULL, ringbuf_full) X(KERNEL_STACK_ERR, kernel_stack_err)                  \
	X(USER_STACK_ERR, user_stack_err) X(KERNEL_TRUNC, kernel_trunc)                      \
	X(USER_TRUNC, user_trunc) X(EVENTS_EMITTED, events_emitted)                          \
	X(EVENTS_LOST, events_lost) X(EVENTS_RATELIMITED, events_ratelimited)                \
	X(FOLLOW_FULL, follow_full) X(SAMPLES_READ, samples_read)                            \
	X(EVENTS_READ, events_read) X(BAD_RECORDS, bad_records)                              \
	X(UNWIND_SAMPLES, unwind_samples) X(UNWIND_FRAMES, unwind_frames)                    \
	X(FALLBACK_FRAMES, fallback_frames) X(UNKNOWN_PID, unknown_pid)                      \
	X(NO_TABLE_FRAMES, no_table_frames) X(UNWIND_STOPS, unwind_stops)                    \
	X(SYNC_REQUESTS, sync_requests) X(UNWIND_CACHE_HITS, unwind_cache_hits)              \
	X(PROG_RUN_NS, prog_run_ns) X(PROG_RUN_CNT, prog_run_cnt)

/* Live and recording: writes the tracer's counters as the script reads them. Replay:
 * replaces them with the recorded ones. */
static void raw_stats(struct lupe_session *s, struct lupe_tracer_stats *ts)
{
	struct lupe_raw_record r = { .type = LUPE_RAW_STATS };
	int i;

	if (s->rp) {
		rp_answer(s, LUPE_RAW_STATS);
#define FROM(NAME, field) ts->field = s->rp_counters[LUPE_RAW_ST_##NAME];
		RAW_STATS(FROM)
#undef FROM
		for (i = 0; i < LUPE_UNWIND_NERR; i++)
			ts->unwind_err[i] = s->rp_counters[LUPE_RAW_ST_UNWIND_ERR + i];
		ts->ncpus = s->rp_ncpus;
		return;
	}
	if (!s->raw)
		return;
#define TO(NAME, field) r.stats.counters[LUPE_RAW_ST_##NAME] = ts->field;
	RAW_STATS(TO)
#undef TO
	for (i = 0; i < LUPE_UNWIND_NERR; i++)
		r.stats.counters[LUPE_RAW_ST_UNWIND_ERR + i] = ts->unwind_err[i];
	r.stats.frequency = lupe_session__frequency(s);
	r.stats.ncpus = ts->ncpus;
	raw_write(s, &r);
}

int lupe_session__record_raw(struct lupe_session *s, const char *path)
{
	struct lupe_raw_header h = { .start_ktime = s->clock };
	struct lupe_fileid_mapper *fm = lupe_procmgr__file_id_mapper(s->pm);
	struct lupe_tracer_stats ts = { 0 };
	struct utsname u;
	FILE *f;
	int err;

	if (s->rp || s->raw)
		return -EBUSY;
	s->raw_maps = lupe_hashmap__new();
	s->raw_syms = lupe_hashmap__new();
	s->raw_ksyms = lupe_hashmap__new();
	s->raw_files = lupe_hashmap__new();
	s->raw_svc = lupe_hashmap__new();
	if (!s->raw_maps || !s->raw_syms || !s->raw_ksyms || !s->raw_files || !s->raw_svc)
		return -ENOMEM;
	f = fopen(path, "we");
	if (!f) {
		err = -errno;
		pr_warn("raw recording '%s': cannot create it: %s", path, lupe_errstr(err));
		return err;
	}
	/* Samples arrive in bursts of a drain: write them in large blocks. */
	setvbuf(f, NULL, _IOFBF, 1 << 20);
	if (s->tracer)
		lupe_tracer__stats(s->tracer, &ts);
	h.ncpus = ts.ncpus;
	h.frequency = lupe_session__frequency(s);
	h.flags = (s->unwinder ? LUPE_RAW_F_UNWIND : 0);
	fm->ops->get(fm, s->kernel_host, &h.kernel_id);
	if (uname(&u) == 0)
		snprintf(h.release, sizeof(h.release), "%s", u.release);
	s->raw = lupe_rawfile_writer__new(f, &h);
	if (!s->raw) {
		err = -errno;
		pr_warn("raw recording '%s': %s", path, lupe_errstr(err));
		return err;
	}
	return 0;
}

int lupe_session__note(struct lupe_session *s, const char *key, const char *value)
{
	struct lupe_raw_record r = { .type = LUPE_RAW_NOTE };

	if (!s->raw)
		return 0;
	r.note.key = key;
	r.note.value = value;
	return lupe_rawfile_writer__write(s->raw, &r);
}

const char *lupe_session__replay_note(struct lupe_session *s, const char *key)
{
	size_t len = strlen(key);
	struct rp_note *nt;

	if (!s->rp)
		return NULL;
	rp_absorb(s);
	/* Keys hash without probing: a colliding key reads as absent. */
	nt = lupe_hashmap__get(s->rp_notes, (struct lupe_key){ fnv64(key, len), len });
	return nt && strcmp(nt->key, key) == 0 ? nt->value : NULL;
}

bool lupe_session__replaying(const struct lupe_session *s)
{
	return s->rp != NULL;
}

uint64_t lupe_session__clock(const struct lupe_session *s)
{
	return s->clock;
}

uint64_t lupe_session__clock_mark(struct lupe_session *s)
{
	struct lupe_raw_record r = { .type = LUPE_RAW_CLOCK };

	if (s->rp) {
		rp_answer(s, LUPE_RAW_CLOCK);
		return s->clock;
	}
	s->clock = lupe_ktime_now();
	r.clock.ktime = s->clock;
	raw_write(s, &r);
	return s->clock;
}

void lupe_session__mark_stop(struct lupe_session *s, int exit_status)
{
	struct lupe_raw_record r = { .type = LUPE_RAW_STOP };

	r.stop.exit_status = exit_status;
	raw_write(s, &r);
}

bool lupe_session__replay_stopped(struct lupe_session *s, int *exit_status)
{
	if (!s->rp)
		return false;
	rp_answer(s, LUPE_RAW_STOP);
	if (s->rp_stopped) {
		s->rp_stopped = false;
		if (exit_status)
			*exit_status = s->rp_exit_status;
		return true;
	}
	if (exit_status)
		*exit_status = -1;
	return s->rp_done;
}

/* Opens the recording for __new; returns 0 or a negative errno (logged). */
static int open_replay(struct lupe_session *s, const char *path)
{
	const struct lupe_raw_header *h;
	struct lupe_fileid_mapper *fm;
	char msg[200];
	FILE *f;
	int err;

	s->rp_maps = lupe_hashmap__new();
	s->rp_syms = lupe_hashmap__new();
	s->rp_ksyms = lupe_hashmap__new();
	s->rp_files = lupe_hashmap__new();
	s->rp_notes = lupe_hashmap__new();
	s->rp_svc = lupe_hashmap__new();
	s->rp_rec = malloc(sizeof(*s->rp_rec));
	if (!s->rp_maps || !s->rp_syms || !s->rp_ksyms || !s->rp_files || !s->rp_notes ||
	    !s->rp_svc || !s->rp_rec)
		return -ENOMEM;
	f = fopen(path, "re");
	if (!f) {
		err = -errno;
		pr_warn("replay '%s': %s", path, lupe_errstr(err));
		return err;
	}
	s->rp = lupe_rawfile_reader__new(f, msg, sizeof(msg));
	if (!s->rp) {
		err = -errno;
		pr_warn("replay '%s': %s", path, msg);
		return err;
	}
	h = lupe_rawfile_reader__header(s->rp);
	s->clock = h->start_ktime;
	s->rp_frequency = h->frequency;
	s->rp_ncpus = h->ncpus;
	/* Kernel frames carry the recorded kernel's file ID, as they did live. */
	s->kernel_host = lupe_file_id_host(h->kernel_id);
	fm = lupe_procmgr__file_id_mapper(s->pm);
	if (s->kernel_host && fm->ops->set(fm, s->kernel_host, h->kernel_id))
		return -ENOMEM;
	pr_info("replaying '%s': recorded on kernel %s, %u CPUs at %u Hz", path, h->release,
		h->ncpus, h->frequency);
	return 0;
}

/* ---- construction ------------------------------------------------------------------------ */

#define OPT(opts, field, def) \
	((opts) && (opts)->sz > offsetof(typeof(*(opts)), field) ? (opts)->field : (def))

struct lupe_session *lupe_session__new(const struct lupe_session_opts *opts)
{
	/* Paused until a target is set: a command's profile must not start with a moment of
	 * every other process. */
	LUPE_OPTS(lupe_tracer_opts, topts, .frequency = OPT(opts, frequency, 0), .start_paused = true,
		  .no_kernel_stacks = OPT(opts, no_kernel, false),
		  .ringbuf_bytes = OPT(opts, ringbuf_bytes, 0),
		  .unwind = !OPT(opts, no_unwind, false),
		  .unwind_budget_bytes = OPT(opts, unwind_budget_bytes, 0),
		  .no_user_stacks = OPT(opts, no_user, false),
		  .unwind_max_frames = OPT(opts, max_frames, 0));
	struct lupe_stackdelta_provider *deltas = NULL;
	struct lupe_symbol_reporter *reporter;
	struct lupe_ebpf_handler *ebpf, *inner;
	struct lupe_session *s = calloc(1, sizeof(*s));
	struct lupe_file_id kid;
	int err = -ENOMEM;

	if (!s) {
		errno = ENOMEM;
		return NULL;
	}
	s->filter_errors = OPT(opts, filter_error_frames, false);
	s->max_entries = OPT(opts, max_entries, 0) ?: DEFAULT_MAX_ENTRIES;
	s->fold_at = s->max_entries;
	s->apm_fd = -1;
	/* A replay names frames from its recording, never from this host: no symbol cache. */
	if (!OPT(opts, replay_path, NULL) && !(s->syms = lupe_symcache__new(NULL)))
		goto err_out;
	s->trace_index = lupe_hashmap__new();
	s->strings = lupe_hashmap__new();
	s->gens = lupe_hashmap__new();
	if (!s->trace_index || !s->strings || !s->gens || grow_slots(s))
		goto err_out;
	/* The tracer first: with native unwinding, the manager writes its maps. */
	if (!OPT(opts, offline, false) && !OPT(opts, replay_path, NULL)) {
		s->tracer = lupe_tracer__new(&topts);
		if (!s->tracer) {
			err = -errno;
			goto err_out;
		}
	}
	if (lupe_tracer__unwinding(s->tracer)) {
		ebpf = lupe_tracer__ebpf_handler(s->tracer);
		if (!ebpf) {
			err = -errno;
			goto err_out;
		}
		deltas = lupe_ehframe_provider_new();
		if (!deltas) {
			err = -errno;
			ebpf->ops->free(ebpf);
			goto err_out;
		}
	} else {
		ebpf = lupe_ebpf_null_new();
		if (!ebpf)
			goto err_out;
	}
	inner = ebpf;
	reporter = s->syms ? lupe_symcache__reporter(s->syms) : NULL;
	/* A replay tells no agent anything: the processes it names are another machine's,
	 * or long gone. */
	err = OPT(opts, replay_path, NULL) ? 0 : apm_setup(s, &ebpf, &reporter);
	if (err) {
		if (deltas)
			deltas->ops->free(deltas);
		goto err_out;
	}
	{
		/* The manager owns both from here, also if it fails. */
		LUPE_OPTS(lupe_procmgr_opts, popts, .ebpf = ebpf, .deltas = deltas,
			  .reporter = reporter,
			  .filter_error_frames = s->filter_errors);
		s->pm = lupe_procmgr__new(&popts);
	}
	err = -ENOMEM;
	if (!s->pm)
		goto err_out;
	lupe_procmgr__set_apm(s->pm, s->apm);
	if (deltas)
		s->unwinder = inner;
	if (OPT(opts, replay_path, NULL)) {
		err = open_replay(s, opts->replay_path);
		if (err)
			goto err_out;
	} else if (kernel_file_id(&kid) == 0) {
		struct lupe_fileid_mapper *m = lupe_procmgr__file_id_mapper(s->pm);

		s->kernel_host = lupe_file_id_host(kid);
		m->ops->set(m, s->kernel_host, kid);
	}
	if (!s->rp)
		s->clock = lupe_ktime_now();
	return s;
err_out:
	lupe_session__free(s);
	errno = -err;
	return NULL;
}

void lupe_session__free(struct lupe_session *s)
{
	if (!s)
		return;
	if (s->raw) {
		int err = lupe_rawfile_writer__close(s->raw, lupe_ktime_now());

		if (err)
			pr_warn("raw recording: %s; %llu records not written", lupe_errstr(err),
				(unsigned long long)s->st.raw_write_errors);
	}
	lupe_hashmap__free(s->raw_maps);
	lupe_hashmap__free(s->raw_syms);
	lupe_hashmap__free(s->raw_ksyms);
	lupe_hashmap__free(s->raw_files);
	lupe_hashmap__free(s->raw_svc);
	lupe_rawfile_reader__free(s->rp);
	free(s->rp_rec);
	lupe_hashmap__free_values(s->rp_maps, free);
	lupe_hashmap__free_values(s->rp_syms, free);
	lupe_hashmap__free_values(s->rp_ksyms, free);
	lupe_hashmap__free_values(s->rp_notes, free);
	lupe_hashmap__free(s->rp_files);   /* interned strings: freed with the others */
	lupe_hashmap__free(s->rp_svc);
	/* Sampling stops with the tracer: the manager's release of every process need not
	 * write the unwinder's maps, which go with it. */
	lupe_stackdeltas__detach(s->unwinder);
	lupe_tracer__free(s->tracer);
	if (s->child > 0 && !s->child_done) {
		kill(s->child, SIGKILL);
		waitpid(s->child, NULL, 0);
	}
	lupe_procmgr__free(s->pm);    /* before the symbol cache it reports to */
	apm_free(s);
	lupe_symcache__free(s->syms);
	drop_aggregate(s);
	free(s->entries);
	free(s->raws);
	free(s->slots);
	free(s->traces);
	free(s->kpending);
	free(s->young);
	free(s->young_prev);
	free(s->execd);
	hooks_free(s->hooks);
	lupe_hashmap__free_values(s->strings, free);
	lupe_hashmap__free(s->trace_index);
	lupe_hashmap__free(s->gens);
	free(s);
}

/* ---- hooks: verdicts, batches, process events ------------------------------------------ */

#define MAX_QUEUED_EVENTS 65536

static struct session_hooks *get_hooks(struct lupe_session *s)
{
	if (!s->hooks)
		s->hooks = calloc(1, sizeof(*s->hooks));
	return s->hooks;
}

static void hooks_free(struct session_hooks *h)
{
	if (!h)
		return;
	free(h->entry_v);
	free(h->trace_v);
	free(h->batch);
	free(h->events);
	free(h);
}

/* Grows *v (zero-filling) to hold n verdicts. */
static int grow_verdicts(uint8_t **v, size_t *cap, size_t n)
{
	size_t c = *cap ? *cap : 1024;
	uint8_t *p;

	if (n <= *cap)
		return 0;
	while (c < n)
		c *= 2;
	p = realloc(*v, c);
	if (!p)
		return -ENOMEM;
	memset(p + *cap, 0, c - *cap);
	*v = p;
	*cap = c;
	return 0;
}

int lupe_session__verdicts(struct lupe_session *s, uint8_t **entry_v, uint8_t **trace_v)
{
	struct session_hooks *h = get_hooks(s);

	if (!h || grow_verdicts(&h->entry_v, &h->cap_entry_v, s->nentries) ||
	    grow_verdicts(&h->trace_v, &h->cap_trace_v, s->ntraces))
		return -ENOMEM;
	*entry_v = h->entry_v;
	*trace_v = h->trace_v;
	return 0;
}

int lupe_session__batch(struct lupe_session *s, unsigned int flags, const uint32_t **idx,
			size_t *n, uint64_t *dropped)
{
	struct session_hooks *h = get_hooks(s);
	bool interval = flags & LUPE_BATCH_INTERVAL;
	uint64_t lost = 0;
	size_t i, k = 0;

	if (!h)
		return -ENOMEM;
	if (flags & LUPE_BATCH_VERDICTS) {
		/* Entries and traces added since the caller's verdicts are undecided: kept. */
		if (grow_verdicts(&h->entry_v, &h->cap_entry_v, s->nentries) ||
		    grow_verdicts(&h->trace_v, &h->cap_trace_v, s->ntraces))
			return -ENOMEM;
	}
	if (h->cap_batch < s->nentries) {
		size_t c = h->cap_batch ? h->cap_batch : 1024;
		uint32_t *p;

		while (c < s->nentries)
			c *= 2;
		p = realloc(h->batch, c * sizeof(*p));
		if (!p)
			return -ENOMEM;
		h->batch = p;
		h->cap_batch = c;
	}
	for (i = 0; i < s->nentries; i++) {
		const struct lupe_profile_entry *e = &s->entries[i];
		uint64_t c = interval ? e->interval : e->count;

		if (interval && !c)
			continue;
		if ((flags & LUPE_BATCH_VERDICTS) &&
		    (h->entry_v[i] == LUPE_VERDICT_DROP || h->trace_v[e->trace] == LUPE_VERDICT_DROP)) {
			lost += c;
			continue;
		}
		h->batch[k++] = (uint32_t)i;
	}
	*idx = h->batch;
	*n = k;
	if (dropped)
		*dropped = lost;
	return 0;
}

int lupe_session__want_events(struct lupe_session *s, bool on)
{
	struct session_hooks *h = get_hooks(s);

	if (!h)
		return -ENOMEM;
	h->want_events = on;
	h->nevents = 0;
	return s->tracer ? lupe_tracer__report_all(s->tracer, on) : 0;
}

static void queue_event(struct lupe_session *s, const struct lupe_proc_event *ev)
{
	struct session_hooks *h = s->hooks;

	if (h->nevents == h->cap_events) {
		size_t c = h->cap_events ? h->cap_events * 2 : 256;
		struct lupe_proc_event *p;

		p = c <= MAX_QUEUED_EVENTS ? realloc(h->events, c * sizeof(*p)) : NULL;
		if (!p) {
			s->st.proc_events_dropped++;
			return;
		}
		h->events = p;
		h->cap_events = c;
	}
	h->events[h->nevents++] = *ev;
}

const struct lupe_proc_event *lupe_session__events(struct lupe_session *s, size_t *n)
{
	*n = s->hooks ? s->hooks->nevents : 0;
	/* Taken: the next event queued reuses the array from its start. */
	if (s->hooks)
		s->hooks->nevents = 0;
	return s->hooks ? s->hooks->events : NULL;
}

/* ---- sampling policy ------------------------------------------------------------------- */

/* A cgroup v2 directory's id: its inode number. */
static int cgroup_id(const char *path, uint64_t *id)
{
	struct stat st;
	int err;

	if (stat(path, &st) < 0) {
		err = -errno;
		pr_warn("cgroup '%s': %s", path, lupe_errstr(err));
		return err;
	}
	if (!S_ISDIR(st.st_mode)) {
		pr_warn("cgroup '%s': not a cgroup v2 directory", path);
		return -ENOTDIR;
	}
	*id = st.st_ino;
	return 0;
}

int lupe_session__filter_comms(struct lupe_session *s, const char *const *globs, size_t n)
{
	return s->tracer ? lupe_tracer__filter_comms(s->tracer, globs, n) : -EOPNOTSUPP;
}

int lupe_session__filter_cgroups(struct lupe_session *s, const char *const *paths, size_t n)
{
	uint64_t *ids;
	size_t i;
	int err = 0;

	if (!s->tracer)
		return -EOPNOTSUPP;
	ids = calloc(n ? n : 1, sizeof(*ids));
	if (!ids)
		return -ENOMEM;
	for (i = 0; !err && i < n; i++)
		err = cgroup_id(paths[i], &ids[i]);
	if (!err)
		err = lupe_tracer__filter_cgroups(s->tracer, (const __u64 *)ids, n);
	free(ids);
	return err;
}

int lupe_session__rate_pid(struct lupe_session *s, pid_t pid, unsigned int every)
{
	return s->tracer ? lupe_tracer__rate_pid(s->tracer, pid, every) : -EOPNOTSUPP;
}

int lupe_session__rate_cgroup(struct lupe_session *s, const char *path, unsigned int every)
{
	uint64_t id;
	int err;

	if (!s->tracer)
		return -EOPNOTSUPP;
	err = cgroup_id(path, &id);
	return err ? err : lupe_tracer__rate_cgroup(s->tracer, id, every);
}

int lupe_session__rate_default(struct lupe_session *s, unsigned int every)
{
	return s->tracer ? lupe_tracer__rate_default(s->tracer, every) : -EOPNOTSUPP;
}

int lupe_session__window(struct lupe_session *s, uint64_t period_ns, double fraction,
			 uint64_t seed)
{
	return s->tracer ? lupe_tracer__window(s->tracer, period_ns, fraction, seed) : -EOPNOTSUPP;
}

int lupe_session__target_add_pid(struct lupe_session *s, pid_t pid, bool follow)
{
	int err;

	if (!s->tracer)
		return -EOPNOTSUPP;
	err = follow ? lupe_tracer__follow_pid(s->tracer, pid)
		     : lupe_tracer__target_add_pid(s->tracer, pid);
	if (!err) {
		s->system_wide = false;
		sync_pid(s, pid);
	}
	return targeted(s, err);
}

int lupe_session__target_remove_pid(struct lupe_session *s, pid_t pid)
{
	return s->tracer ? lupe_tracer__target_remove_pid(s->tracer, pid) : -EOPNOTSUPP;
}
