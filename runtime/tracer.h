/* The tracer: loads bpf/sampler.bpf.c, attaches one perf event per online CPU and the
 * process lifecycle tracepoints, and drains the two ring buffers (samples, process events)
 * into caller-supplied handlers. It does not interpret samples (no symbols, no maps); with
 * native unwinding it hands out the eBPF handler that fills the unwinder's maps.
 * Needs root, or CAP_BPF + CAP_PERFMON. Not thread-safe: one thread drives a tracer. */
#ifndef LUPE_TRACER_H
#define LUPE_TRACER_H

#include <linux/types.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <sys/types.h>

#include "sampler.h"

#include "opts.h"

struct lupe_tracer_opts {
	size_t sz;                      /* sizeof(struct lupe_tracer_opts) */
	unsigned int frequency;         /* samples per second per CPU; 0: 99 */
	/* The perf event to sample on. Unless custom_event, cpu-clock (a software hrtimer
	 * event that exists everywhere, VMs without a PMU included). */
	bool custom_event;
	__u32 event_type;               /* PERF_TYPE_* */
	__u64 event_config;
	bool no_kernel_stacks;          /* skip bpf_get_stack(kernel) */
	bool no_user_stacks;            /* skip bpf_get_stack(USER) */
	size_t ringbuf_bytes;           /* samples ring: a power of two >= page size; 0: 8 MiB */
	size_t events_ringbuf_bytes;    /* process events ring; 0: 256 KiB */
	size_t max_pids;                /* target pid set and reported-pid LRU; 0: 8192 */
	size_t max_cgroups;             /* target cgroup set; 0: 256 */
	/* Turns on kernel-wide BPF run-time statistics (BPF_STATS_RUN_TIME) for the tracer's
	 * lifetime, so lupe_tracer__stats reports prog_run_ns/prog_run_cnt. Costs two clock
	 * reads per run of every BPF program on the machine. */
	bool prog_stats;
	/* Attach with the perf events disabled: nothing is sampled until lupe_tracer__resume,
	 * so targets can be set first. (Process events flow from the start.) */
	bool start_paused;
	/* Native unwinding: user stacks are walked in BPF with stack deltas (bpf/unwind.bpf.h)
	 * that the handler of lupe_tracer__ebpf_handler writes, instead of frame pointers
	 * (bpf_get_stack). A pid the handler has not committed, or a file without a table,
	 * is walked by frame pointers, and the pid is reported (LUPE_EV_NEW_PID). */
	bool unwind;
	size_t unwind_budget_bytes;     /* delta tables' BPF memory; 0: 64 MiB */
	unsigned int unwind_max_frames; /* user frames per sample, <= LUPE_MAX_FRAMES; 0: all */
	size_t unwind_max_prefixes;     /* LPM entries for mappings, all pids; 0: 262144 */
	size_t unwind_max_files;        /* files with a table (resident or not); 0: 16384 */
	size_t :0;
};

struct lupe_tracer;

/* Called for each record during lupe_tracer__poll. The record is borrowed: it lives in the
 * ring buffer and is valid only during the call (copy what you keep). A sample's frames are
 * valid up to kernel_len + user_len only: the record is cut there. A negative return stops
 * the drain and is returned by lupe_tracer__poll. Either callback may be NULL (records are
 * then consumed unseen). */
struct lupe_tracer_handlers {
	int (*sample)(void *ctx, const struct lupe_sample *s);
	int (*event)(void *ctx, const struct lupe_proc_event *e);
};

struct lupe_tracer_stats {
	/* Summed over CPUs from the BPF counters (see struct lupe_sampler_counters). */
	__u64 samples_seen, idle, filtered, emitted, ringbuf_full;
	__u64 kernel_stack_err, user_stack_err, kernel_trunc, user_trunc;
	__u64 events_emitted, events_lost, events_ratelimited, follow_full;
	/* User space: records read, and records dropped as malformed. */
	__u64 samples_read, events_read, bad_records;
	/* Native unwinding (see struct lupe_sampler_counters). */
	__u64 unwind_samples, unwind_frames, fallback_frames, unknown_pid, no_table_frames;
	__u64 unwind_stops, sync_requests, unwind_cache_hits;
	__u64 unwind_err[LUPE_UNWIND_NERR];    /* by reason - LUPE_UNWIND_ERR_NO_MAPPING */
	/* Sampling policy (see sampler.h): skipped by rates, by closed windows; dropped by
	 * the comm / cgroup filter (included in filtered). */
	__u64 rate_skipped, window_skipped, filter_dropped;
	/* Kernel memory of the tracer's BPF maps (the memlock each map's fdinfo reports). */
	__u64 map_bytes;
	/* With opts.prog_stats: the perf_event program's total run time and run count since
	 * load (run_ns / run_cnt is the mean cost of one sample); else 0. */
	__u64 prog_run_ns, prog_run_cnt;
	unsigned int ncpus;             /* CPUs with an attached perf event */
};

/* Opens, configures, loads and attaches the sampler on every online CPU, sampling every
 * process (lupe_tracer__target_all) from the moment it returns unless opts.start_paused.
 * opts may be NULL.
 * Returns a tracer owned by the caller (lupe_tracer__free), or NULL with errno set:
 * EINVAL (bad opts), EPERM/EACCES (privileges), EOPNOTSUPP (no kernel BTF), ENOENT
 * (no such perf event here), ENOMEM. The reason has been logged. */
struct lupe_tracer *lupe_tracer__new(const struct lupe_tracer_opts *opts);
/* Detaches and frees everything; NULL is fine. */
void lupe_tracer__free(struct lupe_tracer *t);

/* Targets. The set lives in BPF maps and is checked before any stack work; untargeted
 * samples are only counted (filtered). Pids are thread group ids; a pid whose process
 * exits leaves the set (pids get reused). All return 0 or a negative errno (-E2BIG: more
 * than max_pids / max_cgroups). */
int lupe_tracer__target_all(struct lupe_tracer *t);
/* Replaces the target set with these pids and samples only them (n == 0: nothing). */
int lupe_tracer__target_pids(struct lupe_tracer *t, const pid_t *pids, size_t n);
/* Adds one pid to the set, switching to pid mode if in another mode (with an empty set). */
int lupe_tracer__target_add_pid(struct lupe_tracer *t, pid_t pid);
/* Like target_add_pid, and every process pid forks from now on, recursively, is added
 * too: for "profile this command and its descendants" add the child before it runs. */
int lupe_tracer__follow_pid(struct lupe_tracer *t, pid_t pid);
/* Replaces the target set with one cgroup v2 id (the cgroup directory's inode number);
 * tasks in it or in any cgroup below it (up to LUPE_CGROUP_MAX_DEPTH levels from the
 * root) are sampled. */
int lupe_tracer__target_cgroup(struct lupe_tracer *t, __u64 cgroup_id);
/* Adds one more cgroup to a cgroup target set (switching to cgroup mode if needed). */
int lupe_tracer__target_add_cgroup(struct lupe_tracer *t, __u64 cgroup_id);

/* Waits up to timeout_ms (0: not at all), then drains both rings through h (may be NULL).
 * The sampler does not wake the poller per record, so this normally sleeps the whole
 * timeout; it wakes early only when a ring is more than half full. Returns the number of
 * records drained, -EINTR when a signal interrupted the wait (nothing drained), or the
 * first negative value a handler returned. */
int lupe_tracer__poll(struct lupe_tracer *t, int timeout_ms,
		      const struct lupe_tracer_handlers *h, void *ctx);
/* Fills *st. Returns 0 or a negative errno. */
int lupe_tracer__stats(struct lupe_tracer *t, struct lupe_tracer_stats *st);
/* Changes the sampling frequency of every CPU's event, live (PERF_EVENT_IOC_PERIOD sets
 * sample_freq in frequency mode). Returns 0, -EINVAL (0, or above
 * kernel.perf_event_max_sample_rate) or another negative errno. */
int lupe_tracer__set_frequency(struct lupe_tracer *t, unsigned int hz);
unsigned int lupe_tracer__frequency(const struct lupe_tracer *t);
/* Stops / restarts the perf events; tracepoints (process events) keep running. */
int lupe_tracer__pause(struct lupe_tracer *t);
int lupe_tracer__resume(struct lupe_tracer *t);

/* ---- sampling policy (sampler.h), all switchable while sampling ---------------------- */

/* Drops every sample whose thread comm matches none of globs[0..n): each is a literal
 * comm ("nginx") or a prefix followed by one '*' ("ngin*"); n == 0 turns the comm
 * filter off. Returns 0, -EINVAL (another glob shape, or longer than a comm), -E2BIG
 * (more than 256) or another negative errno. */
int lupe_tracer__filter_comms(struct lupe_tracer *t, const char *const *globs, size_t n);
/* Drops every sample whose task is not in one of these cgroup v2 ids or below them;
 * n == 0 turns the cgroup filter off. */
int lupe_tracer__filter_cgroups(struct lupe_tracer *t, const __u64 *ids, size_t n);
/* Keeps one sample in `every` of pid (1: all of them, whatever the default; 0 removes the
 * pid's rate, so the cgroup's or the default applies). A pid's rate goes when it exits. */
int lupe_tracer__rate_pid(struct lupe_tracer *t, pid_t pid, unsigned int every);
/* The same for the tasks of a cgroup and below it (the nearest ancestor with a rate
 * applies). */
int lupe_tracer__rate_cgroup(struct lupe_tracer *t, __u64 cgroup_id, unsigned int every);
/* The same for every target without a pid or cgroup rate (0 or 1: all). */
int lupe_tracer__rate_default(struct lupe_tracer *t, unsigned int every);
/* Samples only during a fraction of fixed windows of period_ns: each window is open
 * with probability `fraction` (0..1), drawn from its index and seed, so the open ones
 * are spread over time and repeatable. period_ns == 0: always sample. */
int lupe_tracer__window(struct lupe_tracer *t, __u64 period_ns, double fraction, __u64 seed);
/* Whether the window open at ktime now (what the sampler decides; for tests). */
bool lupe_tracer_window_open(__u64 now, __u64 period_ns, double fraction, __u64 seed);
/* Reports every exec and exit to user space, not only the targets' (on). */
int lupe_tracer__report_all(struct lupe_tracer *t, bool on);
/* Removes one pid from a pid target set (its descendants followed so far stay). */
int lupe_tracer__target_remove_pid(struct lupe_tracer *t, pid_t pid);

/* With opts.unwind: the process manager's eBPF handler over this tracer's unwinding maps
 * (runtime/stackdeltas.h), owned by the caller (give it to lupe_procmgr_opts.ebpf). One per
 * tracer. It keeps its own references to the maps, so it may outlive the tracer (its
 * writes then reach no program). NULL + errno: EINVAL (no unwinding), EBUSY (made already),
 * ENOMEM, or the error creating the first slot array. */
struct lupe_ebpf_handler;
struct lupe_ebpf_handler *lupe_tracer__ebpf_handler(struct lupe_tracer *t);
bool lupe_tracer__unwinding(const struct lupe_tracer *t);

/* APM correlation: the sampler's apm_procs map (tgid -> the TLS offset of an APM agent's
 * per-thread correlation pointer, bpf/apm.h), which makes BPF copy the thread's trace and
 * transaction IDs into each sample of that process (LUPE_SAMPLE_APM). BPF deletes a pid's
 * entry when it execs or exits.
 * apm_map_fd returns a new descriptor of the map, owned by the caller (close it), so its
 * writers may outlive the tracer; or a negative errno. */
int lupe_tracer__apm_map_fd(struct lupe_tracer *t);
/* Write / delete apm_procs[pid] through such a descriptor. Return 0 or a negative errno
 * (-E2BIG: LUPE_APM_MAX_PROCS processes have agents; delete: -ENOENT when absent). */
int lupe_tracer_apm_set(int map_fd, pid_t pid, __s64 tls_offset);
int lupe_tracer_apm_delete(int map_fd, pid_t pid);
/* The sampler's reads of correlation buffers, summed over CPUs. Returns 0 or a negative
 * errno. */
int lupe_tracer__apm_counters(struct lupe_tracer *t, struct lupe_apm_counters *out);

/* Parses a kernel CPU list ("0-3,5,7-8\n", as in /sys/devices/system/cpu/online) into
 * online[0..n): online[i] is set for each listed CPU below n. Returns the number of CPUs
 * listed (those >= n included), or -EINVAL on malformed text. */
int lupe_tracer_parse_cpus(const char *text, bool *online, size_t n);

#endif
