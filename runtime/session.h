/* A profiling session: the tracer (BPF sampling), the process manager, host symbols, and
 * the aggregation of samples into counted, converted, symbolized traces.
 *
 * Per sample (the hot path, all C): hash the raw stack with its pid; a known one costs one
 * lookup and an increment. A new one is resolved against the process's mappings,
 * converted (lupe_procmgr__convert_trace), symbolized once, and remembered. Lua sees the
 * aggregate, never a sample. Not thread-safe: one thread drives a session. */
#ifndef LUPE_SESSION_H
#define LUPE_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "apm.h"
#include "convert.h"
#include "procmgr.h"
#include "stackdeltas.h"

enum lupe_target_kind {
	LUPE_TARGET_KIND_SYSTEM = 0,  /* every process */
	LUPE_TARGET_KIND_PIDS,        /* the given pids */
	LUPE_TARGET_KIND_COMMAND,     /* a command started by the session, and its descendants */
	LUPE_TARGET_KIND_CGROUP,      /* a cgroup v2 directory and everything below it */
};

struct lupe_session_opts {
	size_t sz;
	unsigned int frequency;       /* Hz per CPU; 0: 99 */
	bool no_kernel;               /* no kernel stacks */
	bool filter_error_frames;
	size_t ringbuf_bytes;         /* 0: the tracer's default */
	/* No BPF at all: samples come from lupe_session__ingest (replay, benchmarks, tests
	 * without privileges). Targets, frequency and pause then return -EOPNOTSUPP. */
	bool offline;
	/* User stacks by frame pointers (bpf_get_stack) rather than the native unwinder
	 * (stack deltas from .eh_frame, in BPF). */
	bool no_unwind;
	size_t unwind_budget_bytes;   /* BPF memory for delta tables; 0: 64 MiB */
	bool no_user;                 /* no user stacks */
	unsigned int max_frames;      /* user frames the native unwinder walks; 0: all (128) */
	/* Replay this raw recording (lupe_session__record_raw) instead of sampling: no BPF,
	 * no privileges; lupe_session__poll then handles one recorded drain per call. */
	const char *replay_path;
	/* Entries (trace, pid, comm) kept before those of exited processes are folded, per
	 * (trace, comm), into entries of pid 0 (see "folding" below); 0: 16384. */
	size_t max_entries;
	size_t :0;
};

struct lupe_session;

/* Loads and attaches the sampler, which samples nothing until a target is set. NULL +
 * errno on failure (the reason is logged: privileges, BTF, ...). */
struct lupe_session *lupe_session__new(const struct lupe_session_opts *opts);
/* Detaches, kills a still-running command (SIGKILL) and frees. NULL ok. */
void lupe_session__free(struct lupe_session *s);

/* Targets: each replaces the previous. Return 0 or a negative errno. */
int lupe_session__target_system(struct lupe_session *s);
int lupe_session__target_pids(struct lupe_session *s, const pid_t *pids, size_t n);
/* path: a cgroup v2 directory (e.g. /sys/fs/cgroup/system.slice/nginx.service). */
int lupe_session__target_cgroup(struct lupe_session *s, const char *path);
/* Forks argv, follows the child and its descendants, then lets it exec. Returns the
 * child's pid, or a negative errno (-ENOENT: no such command, reported before sampling). */
int lupe_session__start_command(struct lupe_session *s, char *const argv[]);
/* For a command target: true once it has exited, with its wait status in *status. */
bool lupe_session__command_done(struct lupe_session *s, int *status);

/* Waits up to timeout_ms, drains samples and events into the aggregate, then releases
 * processes whose traces are all converted, and folds entries past max_entries (below). Returns the number of records, or -EINTR
 * (a signal arrived: check lupe_session__interrupted), or another negative errno. */
int lupe_session__poll(struct lupe_session *s, int timeout_ms);

/* Feeds one sample or process event as if the tracer had drained it (the sample is
 * borrowed for the call). Returns 0 or a negative errno. */
struct lupe_sample;
struct lupe_proc_event;
int lupe_session__ingest_sample(struct lupe_session *s, const struct lupe_sample *smp);
int lupe_session__ingest_event(struct lupe_session *s, const struct lupe_proc_event *ev);

/* SIGINT/SIGTERM (and SIGHUP, unless something else handles it) set a flag that ends the
 * wait (installed once, process-wide). The flag stays set, so that later runs end at once,
 * until cleared (the REPL clears it before each line); a second SIGINT while it is set
 * kills the process as SIGINT's default action does. */
void lupe_session_install_signal_handlers(void);
bool lupe_session_interrupted(void);
int lupe_session_interrupt_signal(void);
void lupe_session_clear_interrupted(void);

int lupe_session__set_frequency(struct lupe_session *s, unsigned int hz);
unsigned int lupe_session__frequency(const struct lupe_session *s);
int lupe_session__pause(struct lupe_session *s);
int lupe_session__resume(struct lupe_session *s);

/* ---- the aggregate ------------------------------------------------------------------ */

enum lupe_sym_kind {
	LUPE_SYM_NATIVE = 0,   /* name is a function, or NULL: unsymbolized (module+offset) */
	LUPE_SYM_KERNEL,
	LUPE_SYM_UNKNOWN,      /* no mapping covered the address */
	LUPE_SYM_ERROR,        /* an error frame: addr is the reason code */
};

/* One frame of a trace, symbolized. Strings are owned by the session (interned). */
struct lupe_sym_frame {
	const char *name;      /* function, or NULL */
	const char *module;    /* file basename ("[vdso]", "[kernel]", kernel module), or NULL */
	uint64_t addr;         /* ELF address (native), address (kernel/unknown), reason (error) */
	uint64_t offset;       /* addr - function start, when name is set */
	uint8_t kind;          /* enum lupe_sym_kind */
	uint8_t type;          /* enum lupe_frame_type */
};

/* A unique trace. Owned by the session; valid until it is freed. */
struct lupe_sym_trace {
	struct lupe_file_id hash;
	uint32_t nframes;
	const struct lupe_sym_frame *frames;   /* leaf first */
	/* The converted frames, kept only until the trace is symbolized (then NULL): they
	 * cost more than the symbolized ones and nothing reads them afterwards. */
	const struct lupe_trace *converted;
};

/* One (trace, process, thread name) and how often it was sampled. */
struct lupe_profile_entry {
	uint32_t trace;        /* index for lupe_session__trace */
	pid_t pid;
	char comm[16];
	uint64_t count;        /* since the session started */
	uint64_t interval;     /* since the last lupe_session__interval_reset */
	uint64_t first_ktime, last_ktime;
	/* The APM agent's service name for the process (interned), or NULL: no agent. */
	const char *service;
};

/* Folding: the aggregate gains an entry per (trace, pid, comm), so a fork storm would grow
 * it without bound. When a poll ends with max_entries entries or more, the entries of
 * processes that exited or exec'd since (no sample can reach them any more) are folded
 * into one entry per (trace, comm, service, entry verdict) with pid 0, their counts,
 * interval counts and time ranges added: totals, per-trace counts and the entries of live
 * processes stay as they were. Entries keep their relative order (a folded entry takes its
 * first member's place), and entry verdicts move with them. If too few entries are
 * folded, the next fold waits until the aggregate has doubled. Counted in stats
 * (folded_entries, folds). */

/* Entries so far (borrowed array, valid until the next poll). */
const struct lupe_profile_entry *lupe_session__entries(struct lupe_session *s, size_t *n);
const struct lupe_sym_trace *lupe_session__trace(struct lupe_session *s, uint32_t idx);
size_t lupe_session__ntraces(struct lupe_session *s);
/* Zeroes every entry's interval count. */
void lupe_session__interval_reset(struct lupe_session *s);
/* How many times entries were folded: entry indexes moved when this changed. */
uint64_t lupe_session__folds(const struct lupe_session *s);
/* Forgets the aggregate: entries, traces, their verdicts and interval counts, for a
 * script that exports what it needs as it goes; memory then follows the unique stacks of
 * one export period, not of the whole run. Processes, mappings, symbols, interned strings
 * and every counter stay; entry and trace indexes start again from 0. Call it between
 * polls (a replay calls it where the recorded script did: it needs no record). Returns 0
 * or -ENOMEM with nothing forgotten. Counted in stats (resets). */
int lupe_session__reset(struct lupe_session *s);

struct lupe_session_stats {
	/* BPF */
	uint64_t samples_seen, idle, filtered, emitted, lost, kernel_stack_err, user_stack_err;
	uint64_t kernel_trunc, user_trunc, events_lost, bpf_bad_records;
	/* user space */
	uint64_t samples;         /* samples aggregated */
	uint64_t cache_hits, cache_misses, hash_collisions;
	uint64_t unknown_frames;  /* user addresses no known mapping covered */
	uint64_t resyncs;         /* synchronizations caused by unknown addresses */
	uint64_t traces;          /* unique converted traces */
	uint64_t entries;
	uint64_t folded_entries;  /* entries of exited processes folded into pid 0 ones */
	uint64_t folds;           /* times entries were folded */
	uint64_t resets;          /* lupe_session__reset calls */
	/* Heap bytes of the aggregate: entries, their raw keys and index, traces with their
	 * frames, interned strings and their maps. */
	uint64_t aggregate_bytes;
	uint64_t symbol_misses;   /* native frames left unsymbolized */
	uint64_t symbolize_errors; /* traces left without frames: out of memory */
	uint64_t exec_events, exit_events, new_pid_events;
	/* Native unwinding (0 without it): from BPF ... */
	uint64_t unwind_samples;    /* user stacks walked by the native unwinder */
	uint64_t unwind_frames;     /* frames unwound with deltas */
	uint64_t unwind_cache_hits; /* rule lookups BPF's per-CPU rule cache answered */
	uint64_t fallback_frames;   /* frames by frame pointers: unknown pid, or no table */
	uint64_t no_table_frames;   /* of those: the file had no table in BPF */
	uint64_t unknown_pid_samples; /* samples of pids BPF did not know yet */
	uint64_t unwind_errors;     /* walks ended by an error frame (sum of unwind_err) */
	uint64_t unwind_err[LUPE_UNWIND_NERR]; /* by reason - LUPE_UNWIND_ERR_NO_MAPPING */
	uint64_t sync_requests;     /* NEW_PID events BPF sent for an unknown pid */
	/* ... and from user space. */
	uint64_t exec_syncs;        /* new images synchronized after an EXEC event */
	uint64_t exec_sync_ns;      /* time spent on those */
	struct lupe_stackdeltas_stats deltas;
	/* Sampling policy, from BPF: skipped by per-target rates, by closed windows, and
	 * dropped by the comm / cgroup filter pushed into BPF (also counted in filtered). */
	uint64_t rate_skipped, window_skipped, filter_dropped;
	uint64_t bpf_map_bytes;     /* kernel memory of the sampler's maps */
	uint64_t proc_events_dropped; /* process events not queued for on_process: queue full */
	/* Raw recording and replay. */
	uint64_t raw_bytes;         /* written to the recording so far */
	uint64_t raw_write_errors;  /* records that could not be written */
	uint64_t replay_errors;     /* a corrupt or truncated recording, records not applied */
	unsigned int ncpus;
	struct lupe_procmgr_stats pm;
	/* APM correlation: BPF's reads of agents' correlation buffers; the samples aggregated
	 * with transaction IDs, and how many of them were handed to the registry per drain,
	 * per (process, transaction, trace) (apm_samples - apm_notified were not: no memory
	 * for the drain's tally, counted in apm_tally_errors); the agents' registry. */
	struct lupe_apm_counters apm_bpf;
	uint64_t apm_samples, apm_notified, apm_tally_errors;
	struct lupe_apm_stats apm;
};
void lupe_session__stats(struct lupe_session *s, struct lupe_session_stats *out);

struct lupe_procmgr *lupe_session__procmgr(struct lupe_session *s);

/* APM correlation. Every session keeps a registry of APM agents (apm.h) that its manager
 * feeds: a process whose agent is found gets its samples' transaction IDs read in BPF;
 * at the end of each poll, each agent is told, per transaction and trace, how many samples
 * were taken (one datagram, never blocking), and entries are labelled with the agent's
 * service name. Borrowed, valid while the session lives. */
struct lupe_apm *lupe_session__apm(struct lupe_session *s);
/* How many times an entry's service name changed after it was made (an agent found late):
 * verdicts that read the service must be decided again when this moves. */
uint64_t lupe_session__relabelled(const struct lupe_session *s);

/* ---- hooks: verdicts, batches and process events (for lupe/session.lua) -------------
 * Nothing here runs unless a script asks: without verdicts the batch is every entry,
 * and process events are queued only after lupe_session__want_events(s, true). */

/* Verdict values: undecided entries and traces are kept. */
#define LUPE_VERDICT_UNDECIDED 0
#define LUPE_VERDICT_KEEP      1
#define LUPE_VERDICT_DROP      2

/* One verdict per entry (the filter's, per (trace, pid, comm)) and one per trace (the
 * on_trace hook's), writable by the caller: *entry_v has lupe_session__entries' n
 * elements, *trace_v lupe_session__ntraces'. Both arrays are owned by the session and
 * valid until the next poll or ingest. Returns 0 or -ENOMEM. */
int lupe_session__verdicts(struct lupe_session *s, uint8_t **entry_v, uint8_t **trace_v);

/* lupe_session__batch flags */
#define LUPE_BATCH_INTERVAL 0x1   /* only entries sampled since the last interval_reset */
#define LUPE_BATCH_VERDICTS 0x2   /* leave out entries whose entry or trace verdict drops */

/* The indexes of the entries a batch holds, in entry order: *idx is owned by the
 * session and valid until the next batch, poll or ingest; *n its length. *dropped (may
 * be NULL) gets the samples verdicts left out (interval counts with LUPE_BATCH_INTERVAL).
 * Returns 0 or -ENOMEM. */
int lupe_session__batch(struct lupe_session *s, unsigned int flags, const uint32_t **idx,
			size_t *n, uint64_t *dropped);

/* Process events for on_process: LUPE_EV_EXEC, LUPE_EV_EXIT, LUPE_EV_FORK as drained, and
 * LUPE_EV_NEW_PID once the session has synchronized the pid. Queued while wanted (and,
 * with on, every exec and exit of the machine is reported, not only the targets'); at
 * most 65536 between two takes, the rest counted (proc_events_dropped). */
int lupe_session__want_events(struct lupe_session *s, bool on);
/* Takes the events queued since the last take (borrowed, valid until the next poll or
 * ingest, which may queue more). */
const struct lupe_proc_event *lupe_session__events(struct lupe_session *s, size_t *n);

/* ---- sampling policy, live (see bpf/sampler.h); -EOPNOTSUPP offline ----------------- */

/* Filters pushed down into BPF; n == 0 turns each off. Comm globs: "literal" or
 * "prefix*"; cgroup paths: cgroup v2 directories (each with everything below it). */
int lupe_session__filter_comms(struct lupe_session *s, const char *const *globs, size_t n);
int lupe_session__filter_cgroups(struct lupe_session *s, const char *const *paths, size_t n);
/* Keep one sample in `every` of a pid, a cgroup directory, or the rest (1: all; 0 removes
 * a pid's or cgroup's rate, so the next one up applies). */
int lupe_session__rate_pid(struct lupe_session *s, pid_t pid, unsigned int every);
int lupe_session__rate_cgroup(struct lupe_session *s, const char *path, unsigned int every);
int lupe_session__rate_default(struct lupe_session *s, unsigned int every);
/* Samples during a fraction of windows of period_ns (0: always). */
int lupe_session__window(struct lupe_session *s, uint64_t period_ns, double fraction,
			 uint64_t seed);
/* Adds a pid to a pid target set (follow: and its future children), or removes one. */
int lupe_session__target_add_pid(struct lupe_session *s, pid_t pid, bool follow);
int lupe_session__target_remove_pid(struct lupe_session *s, pid_t pid);

/* ---- raw recording and replay (docs/raw-format.md) ------------------------------------
 *
 * Recording writes, from now on, every drained sample and event, the mappings and symbols
 * their traces needed from this host, the end of each drain with the session's clock, and
 * what the script read between drains (counters, clock marks, the end of a run). Replaying
 * the file with the same script gives the same aggregate, symbols, counters and clock.
 * Write errors are counted (stats.raw_write_errors), never fatal. Returns 0 or a negative
 * errno (-EBUSY: already recording, or a replay). */
int lupe_session__record_raw(struct lupe_session *s, const char *path);
/* A fact the script wants in the recording (its target, ...): returns 0 or a negative
 * errno; nothing when not recording. Replay: the last value recorded for key (owned by the
 * session), or NULL. */
int lupe_session__note(struct lupe_session *s, const char *key, const char *value);
const char *lupe_session__replay_note(struct lupe_session *s, const char *key);
bool lupe_session__replaying(const struct lupe_session *s);
/* The session's clock (CLOCK_MONOTONIC ns): the end of the last drain or clock mark, or
 * the session's start. In a replay, as recorded. */
uint64_t lupe_session__clock(const struct lupe_session *s);
/* Sets the clock to now (replay: to the recorded mark) and returns it. */
uint64_t lupe_session__clock_mark(struct lupe_session *s);
/* A run loop ended (written to a recording; exit_status of a command, or -1). */
void lupe_session__mark_stop(struct lupe_session *s, int exit_status);
/* Replay: true once the recorded run loop ended here (its exit status in *exit_status,
 * -1 for none) or the recording is exhausted. Always false when not replaying. */
bool lupe_session__replay_stopped(struct lupe_session *s, int *exit_status);

#endif
