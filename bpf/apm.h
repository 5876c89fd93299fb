/* Shared with runtime/apm.c: APM correlation. An APM agent in a profiled process keeps, per
 * thread, a pointer to a correlation buffer naming the trace and transaction the thread is
 * working for; the sampler copies those IDs into the sample, and the runtime tells the
 * agent which stack (by trace hash) was sampled in which transaction.
 * Fixed-width types only. The layouts below are the agents' ("universal profiling
 * integration", version 1), not ours: do not reorder. */
#ifndef LUPE_BPF_APM_H
#define LUPE_BPF_APM_H

#define LUPE_APM_TRACE_ID_LEN 16
#define LUPE_APM_TX_ID_LEN 8

#ifndef LUPE_APM_MAX_PROCS
#define LUPE_APM_MAX_PROCS 4096
#endif

/* What a sample carries when its thread was inside a transaction. */
struct lupe_apm_ids {
	__u8 trace_id[LUPE_APM_TRACE_ID_LEN];
	__u8 tx_id[LUPE_APM_TX_ID_LEN];   /* the transaction (local root span) ID */
};

/* Value of the per-process map, written by user space when an agent is found. The thread's
 * correlation pointer is at (thread pointer + tls_offset): fsbase on x86-64 (negative
 * offset, TLS variant II), tpidr_el0 on arm64 (positive, variant I). */
struct lupe_apm_proc {
	__s64 tls_offset;
};

/* The agent's per-thread correlation buffer, as it lies in the agent's memory (37 bytes,
 * packed, host byte order). Only trace_id and tx_id are used. */
struct lupe_apm_corr_buf {
	__u16 minor;                      /* layout minor version */
	__u8 valid;                       /* 0 while the agent rewrites the buffer */
	__u8 trace_present;               /* the thread is inside a transaction */
	__u8 flags;                       /* W3C trace flags (sampled) */
	__u8 trace_id[LUPE_APM_TRACE_ID_LEN];
	__u8 span_id[8];
	__u8 tx_id[LUPE_APM_TX_ID_LEN];
} __attribute__((packed));

/* Per-CPU counters of the sampler's reads of correlation buffers (its apm_counters map,
 * one slot; user space sums them). Only samples of processes in apm_procs count. */
struct lupe_apm_counters {
	__u64 read;       /* IDs copied into the sample (LUPE_SAMPLE_APM) */
	__u64 no_tx;      /* the thread was not in a transaction (no buffer, not valid) */
	__u64 faults;     /* the pointer or the buffer could not be read (paged out) */
};

/* The per-process map the sampler defines (pid -> TLS offset), filled by the runtime:
 *
 *	struct {
 *		__uint(type, BPF_MAP_TYPE_HASH);
 *		__uint(max_entries, LUPE_APM_MAX_PROCS);
 *		__type(key, __u32);                  // tgid
 *		__type(value, struct lupe_apm_proc);
 *	} apm_procs SEC(".maps");
 */

#endif
