// SPDX-License-Identifier: GPL-2.0
/* The native unwinder: walks a user stack without frame pointers, with the stack deltas
 * user space wrote into the maps below (bpf/sampler.h describes them). Included by
 * sampler.bpf.c, after its per-CPU `scratch`, so the maps live in the one sampler
 * skeleton.
 *
 * One frame per bpf_loop iteration (the verifier checks the callback, not 128 copies):
 * store the PC; take its rule from a per-CPU cache, or else find its mapping (LPM trie,
 * remembered while the PC stays in it), the file's page of deltas (remembered while it
 * stays in the page) and the rule (a binary search of the page's slots); then compute the
 * caller's registers. A file without a table, or a pid whose mappings are unknown, takes
 * one frame-pointer step instead. Every value is read from the user stack on its own (8
 * bytes): a read is all-or-nothing, and one big copy fails near the end of the stack.
 *
 * Cost, measured on the 2-vCPU VM of platform-notes.md: ~20 ns a frame with a cache hit
 * (most of it the bpf_probe_read_user of the return address), ~60 ns without. A table
 * replaced by user space (synthetic deltas) reaches the addresses a CPU has cached for a
 * process at that process's next synchronization. */
#ifndef LUPE_UNWIND_BPF_H
#define LUPE_UNWIND_BPF_H

#include <bpf/bpf_endian.h>
#include "unwind.h"

/* Fixed at load by the loader. */
const volatile bool unwind_enabled = false;
/* User frames the unwinder writes at most (<= LUPE_MAX_FRAMES). */
const volatile __u32 unwind_max_frames = LUPE_MAX_FRAMES;
/* An unknown pid is reported (LUPE_EV_NEW_PID) at most this often. */
const volatile __u64 unwind_report_ns = 250000000;
/* A file's last_sampled is rewritten only when older than this: a shared value written
 * on every sample would bounce its cache line between CPUs. */
const volatile __u64 unwind_touch_ns = 50000000;

/* Sizes are set before load (runtime/tracer.c). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct lupe_unwind_pid);
} unwind_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, struct lupe_unwind_mapping_key);
	__type(value, struct lupe_unwind_mapping);
} unwind_mappings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct lupe_unwind_file);
} unwind_files SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct lupe_unwind_page_key);
	__type(value, struct lupe_unwind_page);
} unwind_pages SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LUPE_UNWIND_MAX_RULES);
	__type(key, __u32);
	__type(value, struct lupe_unwind_rule);
} unwind_rules SEC(".maps");

/* The slots come in chunks, each an inner map: memory grows by a chunk as files are
 * loaded, up to the budget, and user space writes them through mmap. All chunks have
 * the template's size, so the verifier inlines lookups into them. */
struct lupe_slot_chunk {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1 << (LUPE_UNWIND_CHUNK_BITS - 1));
	/* Sizes, not types: clang emits only a forward declaration of a struct that no code
	 * dereferences by value, and libbpf cannot size that. */
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct lupe_unwind_slots));
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 64);
	__type(key, __u32);
	__array(values, struct lupe_slot_chunk);
} unwind_tables SEC(".maps");

/* x86-64 rt_sigframe: the handler's return pops pretcode, so at the trampoline rsp points
 * at the ucontext, whose mcontext holds the interrupted registers. */
#define SIGFRAME_UC   __builtin_offsetof(struct rt_sigframe, uc)
#define SIGFRAME_REG(r) \
	(__builtin_offsetof(struct ucontext, uc_mcontext) + __builtin_offsetof(struct sigcontext_64, r))
_Static_assert(SIGFRAME_UC == 8, "rt_sigframe: pretcode then the ucontext");
_Static_assert(SIGFRAME_REG(bp) == 120 && SIGFRAME_REG(sp) == 160 && SIGFRAME_REG(ip) == 168,
	       "sigcontext_64 layout (uapi)");

/* Page slot counts are at most 1 + 65536: 17 halvings. */
#define SEARCH_STEPS 17

/* The walk's state lives in a map value, not on the stack: the verifier tracks stack
 * constants exactly, so each bpf_loop round would be a new state to verify (128 of
 * them), where map values are just bounded scalars. */
struct unwind_ctx {
	__u64 pc, sp, fp;
	/* The mapping of the last PC looked up. */
	__u64 map_start, map_end, bias, file_id;
	/* The page of the last delta looked up. */
	__u64 page;
	__u32 page_first, page_count;
	__u64 synced_at;        /* the pid's marker: the rule cache's generation */
	__u64 touched;          /* the file touch_file saw last: the next frame is often in it */
	__u64 now;
	__u32 pid;
	__u32 base;             /* where user frames start in frames[] (after the kernel's) */
	__u32 n;                /* user frames written */
	__u32 limit;            /* user frames allowed */
	__u32 err;              /* LUPE_UNWIND_ERR_*, 0 */
	__u32 dwarf_frames, fp_frames, no_table_frames, cache_hits;
	__u8 known;             /* the pid's mappings are in unwind_mappings */
	__u8 exact;             /* pc is exact (the leaf, or after a signal), not a return address */
	__u8 have_map, have_page, file_ok, truncated, stopped;
	__u8 fp_used;           /* a frame-pointer step was tried */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct unwind_ctx);
} unwind_state SEC(".maps");

/* Rules found, by (pid, address): a hit skips the mapping, page and slot lookups, which
 * cost most of a frame. Direct-mapped, per CPU. The pid's marker time is part of the
 * key: user space rewrites it after every synchronization, so entries from before a
 * change of mappings (or from an earlier process with the same pid) never match. */
#define RULE_CACHE_SIZE 1024

struct rule_cache_entry {
	__u64 look;
	__u64 synced_at;
	__u64 file_id;
	__u32 pid;
	__u32 rule;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RULE_CACHE_SIZE);
	__type(key, __u32);
	__type(value, struct rule_cache_entry);
} unwind_rule_cache SEC(".maps");

/* When this CPU last wrote a file's last_sampled, so that cache hits keep hot files
 * from eviction for one hash-map write per file per unwind_touch_ns. */
#define TOUCH_CACHE_SIZE 64

struct touch_entry {
	__u64 file_id;
	__u64 at;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TOUCH_CACHE_SIZE);
	__type(key, __u32);
	__type(value, struct touch_entry);
} unwind_touched SEC(".maps");

static __always_inline void touch_file(__u64 file_id, __u64 now)
{
	__u32 k = (__u32)((file_id * 0x9e3779b97f4a7c15ull) >> 58) & (TOUCH_CACHE_SIZE - 1);
	struct touch_entry *t = bpf_map_lookup_elem(&unwind_touched, &k);
	struct lupe_unwind_file *f;

	if (!t || (t->file_id == file_id && now - t->at < unwind_touch_ns))
		return;
	t->file_id = file_id;
	t->at = now;
	f = bpf_map_lookup_elem(&unwind_files, &file_id);
	/* Racy by design: any recent time will do for eviction. */
	if (f)
		f->last_sampled = now;
}

static __always_inline long unwind_fail(struct unwind_ctx *u, __u32 reason)
{
	u->err = reason;
	return 1;
}

static __always_inline int read_user_u64(__u64 addr, __u64 *out)
{
	return bpf_probe_read_user(out, sizeof(*out), (const void *)addr);
}

/* One frame-pointer step: rbp points at the saved rbp, the return address above it. A
 * zero rbp ends the chain (the outermost frame clears it), as bpf_get_stack does. */
static __always_inline long fp_step(struct unwind_ctx *u)
{
	__u64 ra, next_fp;

	u->fp_used = 1;
	if (!u->fp) {
		u->stopped = 1;
		return 1;
	}
	if (u->fp < u->sp || (u->fp & 7))
		return unwind_fail(u, LUPE_UNWIND_ERR_FP_CHAIN);
	if (read_user_u64(u->fp + 8, &ra) || read_user_u64(u->fp, &next_fp))
		return unwind_fail(u, LUPE_UNWIND_ERR_FP_CHAIN);
	if (!ra) {
		u->stopped = 1;
		return 1;
	}
	u->sp = u->fp + 16;
	u->fp = next_fp;
	u->pc = ra;
	u->exact = 0;
	u->fp_frames++;
	return 0;
}

/* The registers the signal interrupted, from the rt_sigframe at rsp. */
static __always_inline long signal_step(struct unwind_ctx *u)
{
	__u64 ip, sp, bp;

	if (read_user_u64(u->sp + SIGFRAME_REG(ip), &ip) ||
	    read_user_u64(u->sp + SIGFRAME_REG(sp), &sp) ||
	    read_user_u64(u->sp + SIGFRAME_REG(bp), &bp))
		return unwind_fail(u, LUPE_UNWIND_ERR_READ_FAULT);
	if (!ip)
		return unwind_fail(u, LUPE_UNWIND_ERR_ZERO_PC);
	u->pc = ip;
	u->sp = sp;
	u->fp = bp;
	u->exact = 1;
	u->dwarf_frames++;
	return 0;
}

static __always_inline long apply_rule(struct unwind_ctx *u, const struct lupe_unwind_rule *r)
{
	__u64 cfa, ra, fp = u->fp;
	__s32 param = r->cfa_param;

	switch (r->cfa_opcode) {
	case LUPE_CFA_CMD:
		if (param == LUPE_CMD_STOP) {
			u->stopped = 1;
			return 1;
		}
		if (param == LUPE_CMD_SIGNAL)
			return signal_step(u);
		if (param != LUPE_CMD_PLT)
			return unwind_fail(u, LUPE_UNWIND_ERR_INVALID);
		/* The lazy-binding stub pushes the relocation index at offset 6..10. */
		cfa = u->sp + 8 + ((u->pc & 15) >= 11 ? 8 : 0);
		goto caller;
	case LUPE_CFA_SP:
		cfa = u->sp + (__s64)param;
		break;
	case LUPE_CFA_FP:
		cfa = u->fp + (__s64)param;
		break;
	case LUPE_CFA_DEREF_SP:
		if (read_user_u64(u->sp + (__s64)param, &cfa))
			return unwind_fail(u, LUPE_UNWIND_ERR_READ_FAULT);
		break;
	case LUPE_CFA_DEREF_FP:
		if (read_user_u64(u->fp + (__s64)param, &cfa))
			return unwind_fail(u, LUPE_UNWIND_ERR_READ_FAULT);
		break;
	default:
		return unwind_fail(u, LUPE_UNWIND_ERR_INVALID);
	}
	if (r->fp_opcode == LUPE_FP_AT_CFA) {
		if (read_user_u64(cfa + (__s64)r->fp_param, &fp))
			return unwind_fail(u, LUPE_UNWIND_ERR_READ_FAULT);
	} else if (r->fp_opcode == LUPE_FP_UNDEFINED) {
		fp = 0;
	}
caller:
	/* The caller's frame is above this one: a CFA at or below rsp means a wrong rule or a
	 * garbage rbp, and would loop. */
	if (cfa <= u->sp)
		return unwind_fail(u, LUPE_UNWIND_ERR_INVALID);
	if (read_user_u64(cfa - 8, &ra))
		return unwind_fail(u, LUPE_UNWIND_ERR_READ_FAULT);
	if (!ra)
		return unwind_fail(u, LUPE_UNWIND_ERR_ZERO_PC);
	u->pc = ra;
	u->sp = cfa;
	u->fp = fp;
	u->exact = 0;
	u->dwarf_frames++;
	return 0;
}

/* The rule index of the last slot at or below low in the current page. The page's first
 * slot is at address 0, so there always is one. Returns -1 when the array is too short
 * (a chunk user space has not added). Branch-free halving: with an if/else per step the
 * verifier would walk 2^17 paths. */
static __always_inline long find_rule(struct unwind_ctx *u, __u32 low)
{
	__u64 lo = 0, hi = u->page_count, mid, m;
	__u32 chunk = u->page_first >> LUPE_UNWIND_CHUNK_BITS, base, idx, k;
	struct lupe_unwind_slots *e;
	__s64 diff;
	void *slots;

	/* A page's slots are all in one chunk. */
	slots = bpf_map_lookup_elem(&unwind_tables, &chunk);
	if (!slots)
		return -1;
	base = u->page_first & ((1u << LUPE_UNWIND_CHUNK_BITS) - 1);
	for (k = 0; k < SEARCH_STEPS && hi - lo > 1; k++) {
		mid = lo + (hi - lo) / 2;
		idx = base + (__u32)mid;
		e = bpf_map_lookup_elem(slots, &(__u32){ idx >> 1 });
		if (!e)
			return -1;
		diff = (__s64)low - (__s64)(e->slot[idx & 1] & 0xffff);
		/* The barriers keep clang from turning the masks back into branches. */
		asm volatile("" : "+r"(diff));
		m = (__u64)(diff >> 63);        /* all ones: the slot is above low */
		asm volatile("" : "+r"(m));
		lo = (lo & m) | (mid & ~m);
		hi = (mid & m) | (hi & ~m);
	}
	idx = base + (__u32)lo;
	e = bpf_map_lookup_elem(slots, &(__u32){ idx >> 1 });
	if (!e)
		return -1;
	return e->slot[idx & 1] >> 16;
}

static const struct lupe_unwind_rule leaf_rule = {
	.cfa_opcode = LUPE_CFA_SP, .cfa_param = 8, .fp_opcode = LUPE_FP_SAME,
};

/* One frame; the includer's per-CPU `scratch` holds the sample being built. */
static long unwind_step(__u32 i, void *arg)
{
	struct unwind_ctx *u;
	struct lupe_unwind_mapping_key mk;
	struct lupe_unwind_page_key pk;
	struct lupe_unwind_mapping *m;
	struct lupe_unwind_file *f;
	struct lupe_unwind_page *pg;
	struct lupe_unwind_rule *r;
	struct rule_cache_entry *ce;
	struct lupe_scratch *sc;
	__u32 zero = 0, idx, ri, ck;
	__u64 look, addr;
	long rule;

	u = bpf_map_lookup_elem(&unwind_state, &zero);
	if (!u)
		return 1;
	if (u->n >= u->limit) {
		u->truncated = 1;
		return 1;
	}
	idx = u->base + u->n;
	if (idx >= LUPE_MAX_FRAMES) {
		u->truncated = 1;
		return 1;
	}
	/* Tell the verifier, which lost the bound when clang reloaded idx: a no-op mask. */
	asm volatile("%[i] &= %[m]" : [i] "+r"(idx) : [m] "i"(LUPE_MAX_FRAMES - 1));
	sc = bpf_map_lookup_elem(&scratch, &zero);
	if (!sc)
		return 1;
	/* After a signal frame the exact PC is stored + 1: see lupe_sample in sampler.h. */
	sc->s.frames[idx] = u->pc + (u->n && u->exact);
	u->n++;

	if (!u->known)
		return fp_step(u);
	/* A return address may be just past the end of its function, or its mapping. */
	look = u->pc - !u->exact;
	ck = (__u32)((look * 0x9e3779b97f4a7c15ull) >> 54) & (RULE_CACHE_SIZE - 1);
	ce = bpf_map_lookup_elem(&unwind_rule_cache, &ck);
	if (ce && ce->look == look && ce->pid == u->pid && ce->synced_at == u->synced_at) {
		ri = ce->rule;
		u->cache_hits++;
		if (ce->file_id != u->touched) {
			u->touched = ce->file_id;
			touch_file(ce->file_id, u->now);
		}
		goto have_rule;
	}
	if (!u->have_map || look < u->map_start || look >= u->map_end) {
		mk.prefixlen = 32 + 64;
		mk.pid_be = bpf_htonl(u->pid);
		mk.addr_be = bpf_cpu_to_be64(look);
		m = bpf_map_lookup_elem(&unwind_mappings, &mk);
		if (!m)
			return unwind_fail(u, LUPE_UNWIND_ERR_NO_MAPPING);
		u->map_start = m->start;
		u->map_end = m->end;
		u->bias = m->bias;
		u->file_id = m->file_id;
		u->have_map = 1;
		u->have_page = 0;
		f = bpf_map_lookup_elem(&unwind_files, &u->file_id);
		u->file_ok = f && (f->flags & LUPE_UNWIND_FILE_LOADED);
		if (f && u->file_id != u->touched) {
			u->touched = u->file_id;
			touch_file(u->file_id, u->now);
		}
	}
	if (!u->file_ok) {
		u->no_table_frames++;
		return fp_step(u);
	}
	addr = look - u->bias;
	if (!u->have_page || (addr >> LUPE_UNWIND_PAGE_BITS) != u->page) {
		pk.file_id = u->file_id;
		pk.page = addr >> LUPE_UNWIND_PAGE_BITS;
		pg = bpf_map_lookup_elem(&unwind_pages, &pk);
		if (!pg || !pg->count)
			return unwind_fail(u, LUPE_UNWIND_ERR_NO_DELTA);
		u->page = pk.page;
		u->page_first = pg->first;
		u->page_count = pg->count;
		u->have_page = 1;
	}
	rule = find_rule(u, (__u32)(addr & 0xffff));
	if (rule < 0)
		return unwind_fail(u, LUPE_UNWIND_ERR_NO_DELTA);
	ri = (__u32)rule;
	if (ce) {
		ce->look = look;
		ce->synced_at = u->synced_at;
		ce->file_id = u->file_id;
		ce->pid = u->pid;
		ce->rule = ri;
	}
have_rule:
	r = bpf_map_lookup_elem(&unwind_rules, &ri);
	if (!r)
		return unwind_fail(u, LUPE_UNWIND_ERR_INVALID);
	if (r->cfa_opcode == LUPE_CFA_CMD) {
		/* A return into a signal trampoline is where it starts, not a call in it:
		 * store it as exact (+ 1), so it is named as the trampoline. */
		if (r->cfa_param == LUPE_CMD_SIGNAL && !u->exact)
			sc->s.frames[idx] = u->pc + 1;
		/* An exact PC in code without CFI (glibc's clone3 after its syscall: the FDE
		 * ends before it) is most likely a leaf that has not touched the stack. */
		if (r->cfa_param == LUPE_CMD_INVALID && u->exact)
			return apply_rule(u, &leaf_rule);
	}
	return apply_rule(u, r);
}

/* Whether BPF may unwind pid with deltas: user space wrote its marker after the pid's
 * last exec (an exec makes the mappings it knows stale). Returns the marker's time, or 0. */
static __always_inline __u64 unwind_pid_synced(__u32 pid, __u64 exec_at)
{
	struct lupe_unwind_pid *p = bpf_map_lookup_elem(&unwind_pids, &pid);

	return p && p->synced_at >= exec_at ? p->synced_at : 0;
}

#endif
