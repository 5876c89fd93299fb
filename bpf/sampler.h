/* Shared with runtime/tracer.c: the records the sampler writes into its two ring buffers
 * and the counters it keeps. Fixed-width types only; everything is prefixed lupe_ because
 * vmlinux.h already defines names such as "struct sample". */
#ifndef LUPE_BPF_SAMPLER_H
#define LUPE_BPF_SAMPLER_H

#ifndef LUPE_MAX_FRAMES
#define LUPE_MAX_FRAMES 128
#endif
#ifndef LUPE_COMM_LEN
#define LUPE_COMM_LEN 16
#endif

/* lupe_sample.flags */
#define LUPE_SAMPLE_KERNEL_TRUNC 0x1 /* the kernel stack filled its limit: frames were cut */
#define LUPE_SAMPLE_USER_TRUNC   0x2 /* the user stack filled its limit or the record */
#define LUPE_SAMPLE_USER_ERR     0x4 /* bpf_get_stack(USER) failed; errno in user_err */
#define LUPE_SAMPLE_KERNEL_MODE  0x8 /* the sampled instruction was in the kernel */

/* One sample. frames[] holds kernel_len kernel frames, then user_len user frames, each a
 * raw instruction address as bpf_get_stack returns it: the first of each part is the
 * sampled IP (kernel part) or the user IP, the rest are return addresses.
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
	__u32 user_err;         /* positive errno when LUPE_SAMPLE_USER_ERR */
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
                           * process older than the tracer, or after a lost report) */

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
};

#endif
