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
	/* Replay this raw recording (lupe_session__record_raw) instead of sampling: no BPF,
	 * no privileges; lupe_session__poll then handles one recorded drain per call. */
	const char *replay_path;
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
 * processes whose traces are all converted. Returns the number of records, or -EINTR
 * (a signal arrived: check lupe_session__interrupted), or another negative errno. */
int lupe_session__poll(struct lupe_session *s, int timeout_ms);

/* Feeds one sample or process event as if the tracer had drained it (the sample is
 * borrowed for the call). Returns 0 or a negative errno. */
struct lupe_sample;
struct lupe_proc_event;
int lupe_session__ingest_sample(struct lupe_session *s, const struct lupe_sample *smp);
int lupe_session__ingest_event(struct lupe_session *s, const struct lupe_proc_event *ev);

/* SIGINT/SIGTERM set a flag that ends the wait (installed once, process-wide). */
void lupe_session_install_signal_handlers(void);
bool lupe_session_interrupted(void);

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
};

/* Entries so far (borrowed array, valid until the next poll). */
const struct lupe_profile_entry *lupe_session__entries(struct lupe_session *s, size_t *n);
const struct lupe_sym_trace *lupe_session__trace(struct lupe_session *s, uint32_t idx);
size_t lupe_session__ntraces(struct lupe_session *s);
/* Zeroes every entry's interval count. */
void lupe_session__interval_reset(struct lupe_session *s);

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
	/* Raw recording and replay. */
	uint64_t raw_bytes;         /* written to the recording so far */
	uint64_t raw_write_errors;  /* records that could not be written */
	uint64_t replay_errors;     /* a corrupt or truncated recording, records not applied */
	unsigned int ncpus;
	struct lupe_procmgr_stats pm;
};
void lupe_session__stats(struct lupe_session *s, struct lupe_session_stats *out);

struct lupe_procmgr *lupe_session__procmgr(struct lupe_session *s);

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
