/* Shared with runtime/tracer.c and runtime/stackdeltas.c: the records the sampler writes
 * into its two ring buffers, the counters it keeps, and the native unwinder's maps. Fixed-width types only; everything is prefixed lupe_ because
 * vmlinux.h already defines names such as "struct sample". */
#ifndef LUPE_BPF_SAMPLER_H
#define LUPE_BPF_SAMPLER_H

#include "apm.h"

#ifndef LUPE_MAX_FRAMES
#define LUPE_MAX_FRAMES 128
#endif
/* Unwinding error reasons counted (LUPE_UNWIND_ERR_NO_MAPPING .. _FP_CHAIN in unwind.h). */
#define LUPE_UNWIND_NERR 7
#ifndef LUPE_COMM_LEN
#define LUPE_COMM_LEN 16
#endif

/* lupe_sample.flags */
#define LUPE_SAMPLE_KERNEL_TRUNC 0x1 /* the kernel stack filled its limit: frames were cut */
#define LUPE_SAMPLE_USER_TRUNC   0x2 /* the user stack filled its limit or the record */
#define LUPE_SAMPLE_USER_ERR     0x4 /* bpf_get_stack(USER) failed; errno in user_err */
#define LUPE_SAMPLE_KERNEL_MODE  0x8 /* the sampled instruction was in the kernel */
/* Native unwinding (the tracer's opts.unwind) sets these instead of USER_ERR: */
#define LUPE_SAMPLE_UNWIND_ERR   0x10 /* the user part ended early: user_err holds the
				       * reason, a LUPE_UNWIND_ERR_* from unwind.h */
#define LUPE_SAMPLE_UNWOUND      0x20 /* stack deltas unwound at least one user frame */
#define LUPE_SAMPLE_FP_FALLBACK  0x40 /* the frame-pointer walk took over for at least one
				       * frame: unknown pid, or a file without delta table */
#define LUPE_SAMPLE_APM          0x80 /* apm holds the IDs of the APM transaction the thread
				       * was in (its process runs an agent: bpf/apm.h) */

/* One sample. frames[] holds kernel_len kernel frames, then user_len user frames, each a
 * raw instruction address as bpf_get_stack returns it: the first of each part is the
 * sampled IP (kernel part) or the user IP, the rest are return addresses. The native
 * unwinder keeps that convention across signal frames: the interrupted instruction's
 * address, which is exact rather than a return address, is written plus one, so that
 * "return address - 1" gives the instruction back.
 * The record in the ring buffer is cut after the last valid frame: its size is
 * offsetof(struct lupe_sample, frames) + 8 * (kernel_len + user_len), never more. */
struct lupe_sample {
	__u32 pid;              /* thread group id (the "process id") */
	__u32 tid;
	__u32 cpu;
	__u32 flags;            /* LUPE_SAMPLE_* */
	__u64 ktime;            /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	char comm[LUPE_COMM_LEN]; /* the thread's comm */
	__u16 kernel_len;
	__u16 user_len;
	__u32 user_err;         /* positive errno when LUPE_SAMPLE_USER_ERR; the
				 * LUPE_UNWIND_ERR_* reason when LUPE_SAMPLE_UNWIND_ERR */
	struct lupe_apm_ids apm; /* with LUPE_SAMPLE_APM; zero otherwise */
	__u64 frames[LUPE_MAX_FRAMES];
};

#define LUPE_SAMPLE_HDR_SIZE __builtin_offsetof(struct lupe_sample, frames)

/* lupe_proc_event.type */
#define LUPE_EV_EXEC    1 /* pid exec'd (comm is the new one). An exec within 100 ms of the
                           * pid's previous one is not reported: its next sample reports
                           * LUPE_EV_NEW_PID instead. */
#define LUPE_EV_EXIT    2 /* the last thread of pid exited */
#define LUPE_EV_FORK    3 /* pid is a new process forked by ppid (threads are not reported) */
#define LUPE_EV_NEW_PID 4 /* pid was sampled and is not known to have been reported (a
                           * process older than the tracer, or after a lost report); with
                           * native unwinding also: pid was sampled and the unwinder does
                           * not know its mappings (at most every unwind_report_ns) */

struct lupe_proc_event {
	__u32 type;             /* LUPE_EV_* */
	__u32 pid;              /* thread group id */
	__u32 ppid;             /* real parent's thread group id */
	__s32 exit_code;        /* LUPE_EV_EXIT: the exiting task's exit_code (wait status) */
	__u64 ktime;
	char comm[LUPE_COMM_LEN];
};

/* Target modes (the sampler's target_mode in .bss, switchable while running). */
#define LUPE_TARGET_ALL    0 /* every process except the idle tasks */
#define LUPE_TARGET_PIDS   1 /* thread groups in the targets map */
#define LUPE_TARGET_CGROUP 2 /* tasks whose cgroup v2, or an ancestor of it, is in cgroups */

/* Values in the targets map (tgid -> flags). */
#define LUPE_TARGET_EXPLICIT 0x1 /* named by user space */
#define LUPE_TARGET_INHERIT  0x2 /* children forked from now on are added (and inherit) */

/* How deep the cgroup ancestor walk goes; deeper ancestors do not match. */
#define LUPE_CGROUP_MAX_DEPTH 16

/* Per-CPU counters, one slot of the counters PERCPU_ARRAY; user space sums them. */
struct lupe_sampler_counters {
	__u64 samples_seen;     /* every run of the perf_event program */
	__u64 idle;             /* pid 0: counted, never emitted */
	__u64 filtered;         /* not a target: dropped before any stack work */
	__u64 emitted;          /* submitted to the samples ring */
	__u64 ringbuf_full;     /* samples lost: the samples ring had no room */
	__u64 kernel_stack_err; /* bpf_get_stack(kernel) failed: sample sent without */
	__u64 user_stack_err;   /* bpf_get_stack(USER) failed: flagged LUPE_SAMPLE_USER_ERR */
	__u64 kernel_trunc;
	__u64 user_trunc;
	__u64 events_emitted;   /* process events submitted */
	__u64 events_lost;      /* process events lost: the events ring had no room */
	__u64 events_ratelimited; /* exec reports suppressed by the per-pid rate limit */
	__u64 follow_full;      /* forks of followed processes not followed: targets map full */
	/* Native unwinding (all 0 without it). */
	__u64 unwind_samples;   /* samples whose user stack the native unwinder walked */
	__u64 unwind_frames;    /* user frames unwound with stack deltas */
	__u64 fallback_frames;  /* user frames unwound by the frame-pointer fallback */
	__u64 unknown_pid;      /* samples of a pid whose mappings BPF did not know */
	__u64 no_table_frames;  /* of fallback_frames: the file had no delta table (none, or
				 * evicted by the memory budget) */
	__u64 unwind_stops;     /* walks that ended at an outermost frame (LUPE_CMD_STOP) */
	__u64 sync_requests;    /* LUPE_EV_NEW_PID sent because the pid was unknown */
	__u64 unwind_cache_hits; /* rule lookups the per-CPU rule cache answered */
	/* Walks that ended in an error, by reason (LUPE_UNWIND_ERR_NO_MAPPING + i). */
	__u64 unwind_err[LUPE_UNWIND_NERR];
	/* Sampling policy (see "sampling policy" below). */
	__u64 rate_skipped;     /* targets' samples skipped by their 1-in-N rate */
	__u64 window_skipped;   /* samples outside an open sampling window */
	__u64 filter_dropped;   /* targets dropped by the comm / cgroup filter (also in
				 * filtered) */
};

/* ---- sampling policy: filters, rates and windows user space switches live ---------
 *
 * Checked after the target set, before any stack work, in this order:
 * filter_flags:  LUPE_FILTER_COMM: the thread's comm must match comm_filter, an LPM trie
 *                over the comm bytes (an exact comm is its bytes and the NUL, a prefix
 *                glob 'ngin*' its 4 bytes); LUPE_FILTER_CGROUP: the task's cgroup or an
 *                ancestor must be in cgroup_filter. Failing samples count as filtered.
 * window:        with window_period_ns set, time is cut into windows of that length, and
 *                window k is sampled when mix(k ^ window_seed) <= window_threshold (so a
 *                fraction threshold / 2^32 of the windows, chosen pseudo-randomly).
 * rates:         with rates_active, a sample is kept one time in `every`: per pid
 *                (rates), else per cgroup or its nearest ancestor (cgroup_rates), else
 *                default_every (0 or 1: all). The perf events run at the highest rate
 *                wanted, so e.g. 499 Hz for one service and ~19 Hz for the rest is a
 *                499 Hz sampler keeping 1 in 26 of the others' samples. */
#define LUPE_FILTER_COMM   0x1
#define LUPE_FILTER_CGROUP 0x2

struct lupe_comm_key {
	__u32 prefixlen;        /* in bits */
	char comm[LUPE_COMM_LEN];
};

struct lupe_rate {
	__u32 every;            /* keep one sample in every (>= 1) */
	__u32 _pad;
	__u64 seen;             /* samples of this target so far (BPF counts) */
};

/* ---- native unwinding: the maps user space fills (runtime/stackdeltas.c) ------------
 *
 * pid -> marker:  unwind_pids. BPF unwinds a pid with deltas only while it has a marker
 *                 newer than the pid's last exec; other pids get the frame-pointer walk
 *                 and are reported (LUPE_EV_NEW_PID) so user space synchronizes them.
 * (pid, address) -> mapping:  unwind_mappings, an LPM trie; a mapping is stored as the
 *                 minimal set of aligned power-of-two prefixes that covers it exactly.
 * file -> state:  unwind_files; BPF records when the file was last sampled there.
 * (file, address >> 16) -> page: unwind_pages; the page's slots in the delta array.
 * slot -> delta:  unwind_tables[slot >> LUPE_UNWIND_CHUNK_BITS], chunks of slot pairs
 *                 that user space adds as needed; each slot is (address & 0xffff) |
 *                 rule << 16. A page's slots are sorted by address, lie in one chunk,
 *                 and its first slot is at address 0 of the page (the rule carried in
 *                 from before the page), so a page is searched on its own.
 * rule -> rule:   unwind_rules, deduplicated; rule 0 is LUPE_CMD_INVALID. */
#define LUPE_UNWIND_PAGE_BITS 16
#define LUPE_UNWIND_CHUNK_BITS 18   /* slots per chunk: 2^18 (1 MiB) */
#define LUPE_UNWIND_MAX_RULES 65536

struct lupe_unwind_pid {
	__u64 synced_at;        /* ktime before user space read the pid's maps */
};

struct lupe_unwind_mapping_key {
	__u32 prefixlen;        /* 32 (the pid) + address bits */
	__u32 pid_be;           /* big-endian, as LPM tries compare bytes */
	__u64 addr_be;
};

struct lupe_unwind_mapping {
	__u64 file_id;          /* host file ID */
	__u64 bias;             /* address in the process - ELF address */
	__u64 start, end;       /* the whole mapping: [start, end) */
};

#define LUPE_UNWIND_FILE_LOADED 0x1 /* its pages are in unwind_pages */

struct lupe_unwind_file {
	__u64 last_sampled;     /* ktime; written by BPF (coarsely), read for eviction */
	__u32 flags;            /* LUPE_UNWIND_FILE_* */
	__u32 _pad;
};

struct lupe_unwind_page_key {
	__u64 file_id;
	__u64 page;             /* ELF address >> LUPE_UNWIND_PAGE_BITS */
};

struct lupe_unwind_page {
	__u32 first;            /* first slot */
	__u32 count;            /* >= 1 */
};

/* Two slots: an array value must be 8 bytes at least. */
struct lupe_unwind_slots {
	__u32 slot[2];
};

struct lupe_unwind_rule {
	__u8 cfa_opcode;        /* LUPE_CFA_* */
	__u8 fp_opcode;         /* LUPE_FP_* */
	__u16 _pad;
	__s32 cfa_param;
	__s32 fp_param;
};

#endif
