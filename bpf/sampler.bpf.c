// SPDX-License-Identifier: GPL-2.0
/* The sampler: a perf_event program run on every CPU at N Hz that filters the interrupted
 * task against the target set, reads its kernel stack and its user stack (frame pointers
 * through bpf_get_stack, or the native unwinder of unwind.bpf.h when loaded with
 * unwind_enabled) and writes one lupe_sample into the samples ring; plus three sched
 * tracepoints that keep the target set in step with forks and report exec/exit/fork to
 * user space.
 * Nothing wakes user space per record: it drains the rings on a timer (a wakeup costs
 * ~5 us per sample here, more than the rest of the program). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "sampler.h"

/* vmlinux.h carries no errno macros. */
#define E2BIG 7

/* Fixed at load by the loader. */
const volatile bool kernel_stacks = true;
const volatile bool user_stacks = true;
/* Frames bpf_get_stack returns at most: min(LUPE_MAX_FRAMES, kernel.perf_event_max_stack).
 * A stack that reaches it is flagged truncated. */
const volatile __u32 stack_limit = LUPE_MAX_FRAMES;
/* An exec less than this long after the pid's last reported exec is not reported; the
 * pid's next sample reports it instead (LUPE_EV_NEW_PID), once the exec chain settled. */
const volatile __u64 report_interval_ns = 100000000;
/* Above this much unread data a submit wakes the consumer, so a consumer that sleeps too
 * long loses nothing while it could still catch up. */
const volatile __u64 samples_wake_bytes = 1 << 22;
const volatile __u64 events_wake_bytes = 1 << 17;

/* Switchable while running (user space writes it through the mmap'd .bss). Fill the target
 * maps before switching to a mode that reads them. */
volatile __u32 target_mode = LUPE_TARGET_ALL;

/* Sampling policy (sampler.h), switchable while running; all off when zero. */
volatile __u32 filter_flags;
volatile __u32 rates_active;
volatile __u32 default_every;
volatile __u32 window_threshold;
volatile __u64 window_period_ns;
volatile __u64 window_seed;
/* Every exec and exit is reported, not only the targets' (for on_process hooks and
 * triggers that start sampling a command when it appears). */
volatile __u32 report_all;
__u64 default_seen;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 23);
} samples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} events SEC(".maps");

/* tgid -> LUPE_TARGET_* flags. Sized before load (max_pids). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u8);
} targets SEC(".maps");

/* cgroup v2 id -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);
	__type(value, __u8);
} cgroups SEC(".maps");

/* Which pids user space has been told about (by fork, exec or NEW_PID). LRU, so a pid
 * evicted by churn is merely reported again. */
struct lupe_report_state {
	__u64 last_exec;        /* ktime of the last exec reported; 0: none */
	__u64 stale;            /* an exec went unreported: the next sample reports the pid */
	__u64 exec_at;          /* ktime of the last exec, reported or not; 0: none seen */
	__u64 last_request;     /* ktime of the last report of the pid as unknown to the
				 * unwinder (0: none) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct lupe_report_state);
} reported SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lupe_sampler_counters);
} counters SEC(".maps");

/* The record is built here (the BPF stack is 512 bytes). The spare frames after it let the
 * user stack be written right after a kernel stack of any length with a constant size;
 * what does not fit in the record is cut before submitting. */
struct lupe_scratch {
	struct lupe_sample s;
	__u64 spare[LUPE_MAX_FRAMES];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lupe_scratch);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lupe_comm_key);
	__type(value, __u8);
} comm_filter SEC(".maps");

/* cgroup v2 id -> 1 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);
	__type(value, __u8);
} cgroup_filter SEC(".maps");

/* tgid -> rate. Sized before load (max_pids). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct lupe_rate);
} rates SEC(".maps");

/* cgroup v2 id -> rate */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);
	__type(value, struct lupe_rate);
} cgroup_rates SEC(".maps");

#include "unwind.bpf.h"

/* ---- APM correlation (bpf/apm.h): tgid -> where the agent's per-thread correlation
 * pointer lies; user space writes an entry when it finds an agent in the process. */
#include "apm.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LUPE_APM_MAX_PROCS);
	__type(key, __u32);
	__type(value, struct lupe_apm_proc);
} apm_procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lupe_apm_counters);
} apm_counters SEC(".maps");

/* Copies the current thread's trace and transaction IDs into s when its process has an
 * agent and the thread is in a transaction; zeroes them otherwise. One hash lookup for
 * processes without an agent. */
static __always_inline void apm_fill(struct lupe_sample *s, __u32 tgid)
{
	struct lupe_apm_proc *p;
	struct lupe_apm_counters *c;
	__u32 zero = 0;
	int err;

	__builtin_memset(&s->apm, 0, sizeof(s->apm));
	p = bpf_map_lookup_elem(&apm_procs, &tgid);
	if (!p)
		return;
	err = lupe_apm_read(bpf_get_current_task_btf(), p->tls_offset, &s->apm);
	c = bpf_map_lookup_elem(&apm_counters, &zero);
	if (!err) {
		s->flags |= LUPE_SAMPLE_APM;
		if (c)
			__sync_fetch_and_add(&c->read, 1);
		return;
	}
	/* lupe_apm_read writes nothing unless it succeeds: s->apm is still zero. */
	if (c && err == -LUPE_APM_EFAULT)
		__sync_fetch_and_add(&c->faults, 1);
	else if (c)
		__sync_fetch_and_add(&c->no_tx, 1);
}

static __always_inline struct lupe_sampler_counters *get_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&counters, &zero);
}

/* Atomic although per-CPU: the perf_event program can interrupt a tracepoint program
 * on the same CPU, and both count events. */
#define COUNT(c, field) do { if (c) __sync_fetch_and_add(&(c)->field, 1); } while (0)

static __always_inline bool cgroup_match(void)
{
	__u64 id;
	int level;

	id = bpf_get_current_cgroup_id();
	if (bpf_map_lookup_elem(&cgroups, &id))
		return true;
	/* Ancestors from the root down; 0 past the task's own level. */
	for (level = 0; level < LUPE_CGROUP_MAX_DEPTH; level++) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			break;
		if (bpf_map_lookup_elem(&cgroups, &id))
			return true;
	}
	return false;
}

/* Whether the current task (of thread group tgid) is a target. */
static __always_inline bool is_target(__u32 tgid)
{
	__u32 mode = target_mode;

	if (mode == LUPE_TARGET_ALL)
		return true;
	if (mode == LUPE_TARGET_PIDS)
		return bpf_map_lookup_elem(&targets, &tgid) != NULL;
	if (mode == LUPE_TARGET_CGROUP)
		return cgroup_match();
	return false;
}

/* The value of the current task's cgroup, or of its nearest ancestor, in map; NULL. */
static __always_inline void *cgroup_lookup(void *map)
{
	void *v;
	__u64 id;
	int level;

	id = bpf_get_current_cgroup_id();
	v = bpf_map_lookup_elem(map, &id);
	if (v)
		return v;
	/* From the root down: the last hit is the nearest ancestor. */
	for (level = 0; level < LUPE_CGROUP_MAX_DEPTH; level++) {
		void *hit;

		id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			break;
		hit = bpf_map_lookup_elem(map, &id);
		if (hit)
			v = hit;
	}
	return v;
}

/* The comm / cgroup filter pushed down from the script's filter expression. */
static __always_inline bool filter_pass(void)
{
	__u32 flags = filter_flags;
	struct lupe_comm_key key = { .prefixlen = 8 * LUPE_COMM_LEN };

	if (!flags)
		return true;
	if (flags & LUPE_FILTER_COMM) {
		bpf_get_current_comm(key.comm, sizeof(key.comm));
		if (!bpf_map_lookup_elem(&comm_filter, &key))
			return false;
	}
	if ((flags & LUPE_FILTER_CGROUP) && !cgroup_lookup(&cgroup_filter))
		return false;
	return true;
}

/* Whether the current sampling window is open (always, without windows). */
static __always_inline bool window_open(void)
{
	__u64 period = window_period_ns, k;

	if (!period)
		return true;
	k = bpf_ktime_get_ns() / period ^ window_seed;
	/* splitmix64's finalizer: consecutive windows get unrelated draws. */
	k ^= k >> 30;
	k *= 0xbf58476d1ce4e5b9ULL;
	k ^= k >> 27;
	k *= 0x94d049bb133111ebULL;
	k ^= k >> 31;
	return (__u32)k <= window_threshold;
}

/* Keeps one sample in N of this target (per-target rates). */
static __always_inline bool rate_keep(__u32 tgid)
{
	struct lupe_rate *r;
	__u64 n;
	__u32 every;

	if (!rates_active)
		return true;
	r = bpf_map_lookup_elem(&rates, &tgid);
	if (!r)
		r = cgroup_lookup(&cgroup_rates);
	if (r) {
		every = r->every;
		n = __sync_fetch_and_add(&r->seen, 1);
	} else {
		every = default_every;
		n = __sync_fetch_and_add(&default_seen, 1);
	}
	return every <= 1 || n % every == 0;
}

/* Returns whether the event was submitted. */
static __always_inline bool emit_event(struct lupe_sampler_counters *c, __u32 type,
				       __u32 pid, __u32 ppid, __s32 exit_code, __u64 now,
				       const char *comm)
{
	struct lupe_proc_event *e;
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > events_wake_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		COUNT(c, events_lost);
		return false;
	}
	e->type = type;
	e->pid = pid;
	e->ppid = ppid;
	e->exit_code = exit_code;
	e->ktime = now;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), comm);
	bpf_ringbuf_submit(e, flags);
	COUNT(c, events_emitted);
	return true;
}

/* One 8-byte load of the sampled registers, written out: clang likes to form ctx + off
 * and load through that, which the verifier rejects for context pointers. */
#define ctx_reg(ctx, off) ({							\
	__u64 v_;								\
	asm volatile("%[v] = *(u64 *)(%[c] + %[o])"				\
		     : [v] "=r"(v_)						\
		     : [c] "r"(ctx), [o] "i"(__builtin_offsetof(struct bpf_perf_event_data, regs) + (off))); \
	v_;									\
})

/* Walks the user stack with the native unwinder into s->frames[klen...]: from the sampled
 * registers, or for a sample taken in the kernel from the task's saved user registers.
 * Sets *ulen and the sample's flags. Returns whether the pid was known to the unwinder
 * (kernel threads, which have no user stack, count as known: nothing to report). */
static __always_inline bool native_unwind(struct bpf_perf_event_data *ctx,
					  struct lupe_sampler_counters *c, struct lupe_sample *s,
					  __u32 klen, __u32 tgid, __u64 now,
					  const struct lupe_report_state *rs, __u32 *ulen)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct unwind_ctx *u;
	struct pt_regs *regs;
	__u32 reason, zero = 0;

	*ulen = 0;
	if (!task->mm)
		return true;
	u = bpf_map_lookup_elem(&unwind_state, &zero);
	if (!u)
		return true;
	__builtin_memset(u, 0, sizeof(*u));
	if (s->flags & LUPE_SAMPLE_KERNEL_MODE) {
		regs = (struct pt_regs *)bpf_task_pt_regs(task);
		if (!regs)
			return true;
		u->pc = regs->ip;
		u->sp = regs->sp;
		u->fp = regs->bp;
	} else {
		u->pc = ctx_reg(ctx, __builtin_offsetof(struct pt_regs, ip));
		u->sp = ctx_reg(ctx, __builtin_offsetof(struct pt_regs, sp));
		u->fp = ctx_reg(ctx, __builtin_offsetof(struct pt_regs, bp));
	}
	u->synced_at = unwind_pid_synced(tgid, rs ? rs->exec_at : 0);
	u->known = u->synced_at != 0;
	u->pid = tgid;
	u->now = now;
	u->base = klen;
	u->limit = unwind_max_frames < LUPE_MAX_FRAMES ? unwind_max_frames : LUPE_MAX_FRAMES;
	u->exact = 1;
	/* One more round than frames: it tells a full stack from a longer one. */
	bpf_loop(LUPE_MAX_FRAMES + 1, unwind_step, NULL, 0);

	*ulen = u->n;
	if (*ulen > LUPE_MAX_FRAMES)
		*ulen = LUPE_MAX_FRAMES;
	if (u->err) {
		s->flags |= LUPE_SAMPLE_UNWIND_ERR;
		s->user_err = u->err;
		reason = u->err - LUPE_UNWIND_ERR_NO_MAPPING;
		if (c && reason < LUPE_UNWIND_NERR)
			__sync_fetch_and_add(&c->unwind_err[reason], 1);
	}
	if (u->truncated) {
		s->flags |= LUPE_SAMPLE_USER_TRUNC;
		COUNT(c, user_trunc);
	}
	if (u->dwarf_frames)
		s->flags |= LUPE_SAMPLE_UNWOUND;
	if (u->fp_used)
		s->flags |= LUPE_SAMPLE_FP_FALLBACK;
	if (c) {
		__sync_fetch_and_add(&c->unwind_samples, 1);
		if (u->dwarf_frames)
			__sync_fetch_and_add(&c->unwind_frames, u->dwarf_frames);
		if (u->fp_frames)
			__sync_fetch_and_add(&c->fallback_frames, u->fp_frames);
		if (u->no_table_frames)
			__sync_fetch_and_add(&c->no_table_frames, u->no_table_frames);
		if (!u->known)
			__sync_fetch_and_add(&c->unknown_pid, 1);
		if (u->stopped)
			__sync_fetch_and_add(&c->unwind_stops, 1);
		if (u->cache_hits)
			__sync_fetch_and_add(&c->unwind_cache_hits, u->cache_hits);
	}
	return u->known;
}

SEC("perf_event")
int lupe_sample(struct bpf_perf_event_data *ctx)
{
	struct lupe_sampler_counters *c = get_counters();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32, zero = 0;
	struct lupe_scratch *sc;
	struct lupe_sample *s;
	struct lupe_report_state *rs, fresh = {};
	struct task_struct *task;
	__u64 now, size, rb_flags = BPF_RB_NO_WAKEUP;
	long kret = 0, uret = 0;
	__u32 klen = 0, ulen = 0, room;
	bool known = true;

	COUNT(c, samples_seen);
	if (tgid == 0) {
		COUNT(c, idle);
		return 0;
	}
	if (!is_target(tgid)) {
		COUNT(c, filtered);
		return 0;
	}
	if (!filter_pass()) {
		COUNT(c, filtered);
		COUNT(c, filter_dropped);
		return 0;
	}
	if (!window_open()) {
		COUNT(c, window_skipped);
		return 0;
	}
	if (!rate_keep(tgid)) {
		COUNT(c, rate_skipped);
		return 0;
	}
	sc = bpf_map_lookup_elem(&scratch, &zero);
	if (!sc)
		return 0;
	s = &sc->s;
	now = bpf_ktime_get_ns();
	s->pid = tgid;
	s->tid = (__u32)pid_tgid;
	s->cpu = bpf_get_smp_processor_id();
	s->ktime = now;
	s->flags = 0;
	s->user_err = 0;
	bpf_get_current_comm(s->comm, sizeof(s->comm));
	/* 8-byte load: narrower ctx loads (regs.cs) are rejected. Kernel addresses have the
	 * top bit set on x86-64 and arm64. */
	if ((__s64)PT_REGS_IP(&ctx->regs) < 0)
		s->flags |= LUPE_SAMPLE_KERNEL_MODE;

	if (kernel_stacks) {
		kret = bpf_get_stack(ctx, s->frames, LUPE_MAX_FRAMES * 8, 0);
		if (kret < 0) {
			COUNT(c, kernel_stack_err);
			kret = 0;
		}
		klen = (__u64)kret / 8;
		if (klen > LUPE_MAX_FRAMES)
			klen = LUPE_MAX_FRAMES;
		if (klen >= stack_limit) {
			s->flags |= LUPE_SAMPLE_KERNEL_TRUNC;
			COUNT(c, kernel_trunc);
		}
	}
	rs = bpf_map_lookup_elem(&reported, &tgid);
	if (user_stacks && unwind_enabled) {
		known = native_unwind(ctx, c, s, klen, tgid, now, rs, &ulen);
	} else if (user_stacks) {
		/* For a sample taken in the kernel the helper unwinds from the task's saved user
		 * registers, so both parts are filled either way. */
		uret = bpf_get_stack(ctx, &s->frames[klen], LUPE_MAX_FRAMES * 8, BPF_F_USER_STACK);
		if (uret < 0) {
			s->flags |= LUPE_SAMPLE_USER_ERR;
			s->user_err = -uret;
			COUNT(c, user_stack_err);
			uret = 0;
		}
		ulen = (__u64)uret / 8;
		if (ulen > LUPE_MAX_FRAMES)
			ulen = LUPE_MAX_FRAMES;
		room = LUPE_MAX_FRAMES - klen;
		if (ulen >= stack_limit || ulen > room) {
			if (ulen > room)
				ulen = room;
			s->flags |= LUPE_SAMPLE_USER_TRUNC;
			COUNT(c, user_trunc);
		}
	}
	s->kernel_len = klen;
	s->user_len = ulen;
	apm_fill(s, tgid);

	size = LUPE_SAMPLE_HDR_SIZE + (__u64)(klen + ulen) * 8;
	if (size > sizeof(struct lupe_sample))
		size = sizeof(struct lupe_sample);
	if (bpf_ringbuf_query(&samples, BPF_RB_AVAIL_DATA) > samples_wake_bytes)
		rb_flags = BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_output(&samples, s, size, rb_flags)) {
		COUNT(c, ringbuf_full);
		return 0;
	}
	COUNT(c, emitted);

	/* First sample of a pid user space was not told about: report it, so processes that
	 * were running before the tracer started become known. A lost report is retried by
	 * the next sample. A pid the unwinder does not know is reported again now and then,
	 * until user space has synchronized it. */
	if (!rs || rs->stale || (!known && now - rs->last_request >= unwind_report_ns)) {
		task = bpf_get_current_task_btf();
		if (emit_event(c, LUPE_EV_NEW_PID, tgid, task->real_parent->tgid, 0, now,
			       task->group_leader->comm)) {
			if (!known)
				COUNT(c, sync_requests);
			if (rs) {
				rs->stale = 0;
				if (!known)
					rs->last_request = now;
			} else {
				fresh.last_request = known ? 0 : now;
				bpf_map_update_elem(&reported, &tgid, &fresh, BPF_ANY);
			}
		}
	}
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(lupe_fork, struct task_struct *parent, struct task_struct *child)
{
	struct lupe_sampler_counters *c;
	__u32 ptgid = parent->tgid, ctgid = child->tgid;
	__u8 *v, inherit = LUPE_TARGET_INHERIT;
	__u32 mode = target_mode;
	struct lupe_report_state fresh = {};

	/* A new thread joins its group, which is already known. */
	if (child->pid != ctgid)
		return 0;
	c = get_counters();
	if (mode == LUPE_TARGET_PIDS) {
		v = bpf_map_lookup_elem(&targets, &ptgid);
		if (!v)
			return 0;
		if ((*v & LUPE_TARGET_INHERIT) &&
		    bpf_map_update_elem(&targets, &ctgid, &inherit, BPF_NOEXIST) == -E2BIG)
			COUNT(c, follow_full);
	} else if (mode == LUPE_TARGET_CGROUP && !cgroup_match()) {
		/* The child starts in the parent's (the current task's) cgroup. */
		return 0;
	}
	/* Reported: its first sample needs no NEW_PID. */
	if (emit_event(c, LUPE_EV_FORK, ctgid, ptgid, 0, bpf_ktime_get_ns(), child->comm))
		bpf_map_update_elem(&reported, &ctgid, &fresh, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(lupe_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct lupe_sampler_counters *c;
	struct lupe_report_state *rs, st = {};
	__u32 tgid = p->tgid;
	__u64 now;

	/* The agent's TLS offset belonged to the old image. */
	bpf_map_delete_elem(&apm_procs, &tgid);
	if (!report_all && !is_target(tgid))
		return 0;
	c = get_counters();
	now = bpf_ktime_get_ns();
	rs = bpf_map_lookup_elem(&reported, &tgid);
	if (rs && rs->last_exec && now - rs->last_exec < report_interval_ns) {
		rs->stale = 1;
		/* The unwinder stops trusting the mappings user space gave for the old image,
		 * and asks for the new ones at the next sample. */
		rs->exec_at = now;
		rs->last_request = 0;
		COUNT(c, events_ratelimited);
		return 0;
	}
	st.last_exec = now;
	st.exec_at = now;
	if (!emit_event(c, LUPE_EV_EXEC, tgid, p->real_parent->tgid, 0, now, p->comm))
		st.stale = 1;
	bpf_map_update_elem(&reported, &tgid, &st, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(lupe_exit, struct task_struct *p)
{
	__u32 tgid = p->tgid;

	/* do_exit() drops signal->live before this tracepoint: 0 means the whole group is
	 * gone. (6.18 also passes group_dead; this works on older kernels too.) */
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	if (report_all || is_target(tgid))
		emit_event(get_counters(), LUPE_EV_EXIT, tgid, p->real_parent->tgid,
			   p->exit_code, bpf_ktime_get_ns(), p->comm);
	/* The pid may be reused by an unrelated process: forget it. */
	bpf_map_delete_elem(&targets, &tgid);
	bpf_map_delete_elem(&reported, &tgid);
	bpf_map_delete_elem(&apm_procs, &tgid);
	bpf_map_delete_elem(&rates, &tgid);
	if (unwind_enabled)
		bpf_map_delete_elem(&unwind_pids, &tgid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
