/* The process manager: which processes exist, what executables they map where, which
 * files those are (file IDs), and when it is safe to forget them.
 *
 * Lifecycle of what it tracks:
 *   synchronize_process(pid)   /proc/PID/maps diffed against what is known; new files are
 *                              hashed, described once (cached by device+inode, revalidated
 *                              by mtime) and loaded once (refcounted across processes).
 *   pid_exit(pid, ktime)       the process is moved aside with its exit time; its mappings,
 *                              open files and executables stay, so traces captured before
 *                              the exit still convert and symbolize.
 *   symbolization_complete(kt) every process that exited at or before kt is released.
 *   cleanup_pids()             pid_exit for tracked PIDs that died without an event.
 *
 * Thread-safety: every function takes the manager's lock, so any function may be called
 * from any thread. Slow work (hashing a new file, extracting its stack deltas) runs under
 * that lock: a conversion waits for a concurrent first synchronization. */
#ifndef LUPE_PROCMGR_H
#define LUPE_PROCMGR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "elfinfo.h"
#include "fileid.h"

/* One executable mapping of a process. bias = address in the process - ELF vaddr. */
struct lupe_mapping {
	struct lupe_file_id file_id;
	uint64_t vaddr;        /* start in the process */
	uint64_t length;
	uint64_t bias;
	uint64_t file_offset;
	uint64_t device;       /* makedev(major, minor) as the kernel encodes it */
	uint64_t inode;
};

/* The on-disk identity of a mapped file: the ELF cache key. */
struct lupe_disk_id {
	uint64_t device, inode;
};

/* A stack delta: from address on (ELF vaddr) until the next delta, unwind by this rule.
 * cfa_opcode/fp_opcode are LUPE_CFA_* / LUPE_FP_* from bpf/unwind.h; the manager only
 * stores and forwards them. */
struct lupe_stack_delta {
	uint64_t address;
	uint8_t cfa_opcode, fp_opcode, flags, _pad;
	int32_t cfa_param, fp_param;
};

struct lupe_interval_data {
	struct lupe_stack_delta *deltas; /* sorted by address */
	size_t count;
};

/* Describes a file the first time it is loaded; borrowed for the call. */
struct lupe_exe_info {
	struct lupe_file_id file_id;
	uint64_t host_file_id;
	const char *path;           /* as mapped in the first process that showed it */
	const struct lupe_elfinfo *elf;
	int fd;                     /* open for reading, borrowed (dup it to keep it); -1: vDSO */
	const void *image;          /* the vDSO: its bytes, borrowed; NULL otherwise */
	size_t image_len;
	bool vdso;
};

/* What BPF must know. The real handler writes BPF maps; tests use the recording fake.
 * Every callback returns 0 or a negative errno (counted, logged, never fatal). */
struct lupe_ebpf_handler;
struct lupe_ebpf_handler_ops {
	int (*new_pid)(struct lupe_ebpf_handler *h, pid_t pid);
	int (*delete_pid)(struct lupe_ebpf_handler *h, pid_t pid);
	int (*add_mapping)(struct lupe_ebpf_handler *h, pid_t pid, const struct lupe_mapping *m);
	int (*delete_mapping)(struct lupe_ebpf_handler *h, pid_t pid, const struct lupe_mapping *m);
	int (*load_deltas)(struct lupe_ebpf_handler *h, uint64_t host_file_id,
			   const struct lupe_interval_data *data);
	int (*unload_deltas)(struct lupe_ebpf_handler *h, uint64_t host_file_id);
	void (*free)(struct lupe_ebpf_handler *h);
};
struct lupe_ebpf_handler {
	const struct lupe_ebpf_handler_ops *ops;
};

/* Told about executables as they come and go (the host symbolizer listens here). */
struct lupe_symbol_reporter;
struct lupe_symbol_reporter_ops {
	void (*executable_loaded)(struct lupe_symbol_reporter *r, const struct lupe_exe_info *info);
	void (*executable_unloaded)(struct lupe_symbol_reporter *r, uint64_t host_file_id);
	void (*free)(struct lupe_symbol_reporter *r);
};
struct lupe_symbol_reporter {
	const struct lupe_symbol_reporter_ops *ops;
};

/* Produces a file's stack deltas. Returns 0 (out filled; the manager frees out->deltas with
 * free()), -ENOENT (no unwind data: the file falls back to frame pointers), or another
 * negative errno (counted). */
struct lupe_stackdelta_provider;
struct lupe_stackdelta_provider_ops {
	int (*get_interval_data)(struct lupe_stackdelta_provider *p, const struct lupe_exe_info *info,
				 struct lupe_interval_data *out);
	void (*free)(struct lupe_stackdelta_provider *p);
};
struct lupe_stackdelta_provider {
	const struct lupe_stackdelta_provider_ops *ops;
};

struct lupe_procmgr_opts {
	size_t sz;
	/* All owned by the manager once __new succeeds (freed by __free), also on failure. */
	struct lupe_ebpf_handler *ebpf;           /* NULL: the recording fake */
	struct lupe_fileid_mapper *file_ids;      /* NULL: the default bounded LRU */
	struct lupe_symbol_reporter *reporter;    /* NULL: nobody is told */
	struct lupe_stackdelta_provider *deltas;  /* NULL: no stack deltas (frame pointers) */
	bool filter_error_frames;
	const char *proc_root;                    /* NULL: "/proc" (tests point elsewhere) */
	size_t elf_cache_size;                    /* 0: 16384 entries */
	/* How often lupe_procmgr__tick sweeps dead PIDs (cleanup_pids); 0: 30 s. */
	unsigned int monitor_interval_ms;
	size_t :0;
};
#include "opts.h"

struct lupe_procmgr_stats {
	uint64_t sync_attempts;
	uint64_t sync_esrch;        /* the process was gone */
	uint64_t sync_eperm;        /* /proc/PID/maps not readable */
	uint64_t sync_empty;        /* no mappings: kernel thread, zombie, mid-exec */
	uint64_t maps_malformed;    /* lines of /proc/PID/maps that did not parse */
	uint64_t file_open_errors;  /* a mapped file could not be opened (ENOENT, EACCES) */
	uint64_t elf_errors;        /* mapped executable but not a usable ELF file */
	uint64_t hash_errors;
	uint64_t delta_errors;      /* the stack-delta provider failed (not ENOENT) */
	uint64_t no_deltas;         /* files loaded without stack deltas */
	uint64_t ebpf_errors;       /* handler callbacks that failed */
	uint64_t elf_cache_hits, elf_cache_misses;
	uint64_t processes;         /* tracked and alive */
	uint64_t exited_pending;    /* exited, waiting for symbolization_complete */
	uint64_t executables;       /* loaded (refcount > 0) */
	uint64_t mappings;          /* live mappings over all processes */
	uint64_t anon_regions;      /* anonymous executable regions (JIT candidates) */
	uint64_t executables_loaded_total;
	uint64_t executables_unloaded_total;
	uint64_t memory_bytes;      /* manager bookkeeping, tables included */
};

struct lupe_procmgr;

/* Returns NULL and sets errno on failure. */
struct lupe_procmgr *lupe_procmgr__new(const struct lupe_procmgr_opts *opts);
/* Releases everything, unloading every executable through the handlers. NULL ok. */
void lupe_procmgr__free(struct lupe_procmgr *pm);

/* Reads /proc/PID/maps and applies the difference. Returns 0 (also when an untracked
 * process has no executable mappings: kernel threads), -ESRCH (gone, or a tracked process
 * left with no mappings, i.e. a zombie: treated as an exit now), -EPERM (counted; the PID
 * is left as it was), or -ENOMEM. Per-file failures are counted, never fatal. */
int lupe_procmgr__synchronize_process(struct lupe_procmgr *pm, pid_t pid);

/* The process exited at ktime (CLOCK_MONOTONIC ns; 0 = now). Returns true when the PID was
 * tracked (its release is then deferred to symbolization_complete), false otherwise. */
bool lupe_procmgr__pid_exit(struct lupe_procmgr *pm, pid_t pid, uint64_t ktime);
/* pid_exit for every tracked PID that is no longer alive. Returns how many. */
int lupe_procmgr__cleanup_pids(struct lupe_procmgr *pm);
/* Periodic work, called from the event loop with the current ktime: sweeps dead PIDs
 * every monitor interval. Returns how many were swept (0 when not due). */
int lupe_procmgr__tick(struct lupe_procmgr *pm, uint64_t now);
/* Every trace captured up to ktime has been converted: release processes that exited at
 * or before it. Returns how many were released. */
int lupe_procmgr__symbolization_complete(struct lupe_procmgr *pm, uint64_t ktime);

/* Stack deltas given by hand for a file; they take precedence over extraction, now (a
 * loaded file is reloaded) and for later loads. data is copied. Returns 0 or -ENOMEM. */
int lupe_procmgr__add_synth_interval_data(struct lupe_procmgr *pm, uint64_t host_file_id,
					  const struct lupe_interval_data *data);

/* The mapping of pid covering addr, as it was at ktime (0: the newest): for a PID that was
 * reused, the process that exited at or after ktime wins over the live one. Fills *out
 * and, if path is non-NULL, copies the mapped path (truncated to pathlen). Returns 0 or
 * -ENOENT. */
int lupe_procmgr__find_mapping(struct lupe_procmgr *pm, pid_t pid, uint64_t addr, uint64_t ktime,
			       struct lupe_mapping *out, char *path, size_t pathlen);

/* A snapshot of one mapping, for lupe_procmgr__mappings. */
struct lupe_mapping_view {
	struct lupe_mapping m;
	const char *path;     /* points into the same block as the views */
	bool deleted;         /* the file was deleted while mapped */
};
/* The mapping of pid that maps the file host_file_id and covers ELF address addr (that
 * is, vaddr <= addr + bias <= vaddr + length: the end is inclusive, a return address may
 * point just past it), at ktime as above. Returns 0 or -ENOENT. */
int lupe_procmgr__find_mapping_by_file(struct lupe_procmgr *pm, pid_t pid, uint64_t host_file_id,
				       uint64_t addr, uint64_t ktime, struct lupe_mapping *out);

/* Snapshot of the newest process with this PID (live, else the last exited), sorted by
 * vaddr. *out is one malloc'd block holding the views and their paths: free(*out).
 * Returns the count, or -ENOENT (not tracked), -ENOMEM. */
ssize_t lupe_procmgr__mappings(struct lupe_procmgr *pm, pid_t pid,
			       struct lupe_mapping_view **out);

/* PIDs tracked (alive, then exited-pending), malloc'd; caller frees. Returns the count. */
ssize_t lupe_procmgr__processes(struct lupe_procmgr *pm, pid_t **out, bool **exited);

/* The 128-bit ID of a host file ID, through the file-ID mapper. */
bool lupe_procmgr__file_id(struct lupe_procmgr *pm, uint64_t host_file_id,
			   struct lupe_file_id *out);
/* The mapper itself (borrowed; lock with the manager: use only from one thread). */
struct lupe_fileid_mapper *lupe_procmgr__file_id_mapper(struct lupe_procmgr *pm);
/* The handler passed in opts (or the fake), borrowed. */
struct lupe_ebpf_handler *lupe_procmgr__ebpf(struct lupe_procmgr *pm);
bool lupe_procmgr__filter_error_frames(const struct lupe_procmgr *pm);

/* Refcount of an executable (0 when not loaded), for tests and diagnostics. */
int lupe_procmgr__exe_refcount(struct lupe_procmgr *pm, uint64_t host_file_id);

void lupe_procmgr__stats(struct lupe_procmgr *pm, struct lupe_procmgr_stats *out);

/* APM correlation (apm.h). set_apm gives the manager a registry of agents (borrowed: it
 * must outlive the manager; NULL: none). The registry learns about agent libraries and
 * processes through the decorators lupe_apm_reporter_new / lupe_apm_ebpf_new, which the
 * manager's opts must carry for it to find anything. */
struct lupe_apm;
struct lupe_raw_trace;
void lupe_procmgr__set_apm(struct lupe_procmgr *pm, struct lupe_apm *apm);
struct lupe_apm *lupe_procmgr__apm(struct lupe_procmgr *pm);
/* The reference's MaybeNotifyAPMAgent: tells raw->pid's agent that trace_hash was sampled
 * count times during the transaction in raw->apm (one datagram, never blocking; nothing is
 * sent without a registry, an agent, a socket or a non-zero transaction ID, counted in the
 * registry's stats). Returns the agent's service name (owned by the registry, valid while
 * it lives), or NULL when the process has no agent. */
const char *lupe_procmgr__notify_apm(struct lupe_procmgr *pm, const struct lupe_raw_trace *raw,
				     struct lupe_file_id trace_hash, uint32_t count);

/* The recording fake handler: keeps every call in order. */
enum lupe_ebpf_call {
	LUPE_EBPF_NEW_PID = 1,
	LUPE_EBPF_DELETE_PID,
	LUPE_EBPF_ADD_MAPPING,
	LUPE_EBPF_DELETE_MAPPING,
	LUPE_EBPF_LOAD_DELTAS,
	LUPE_EBPF_UNLOAD_DELTAS,
};
struct lupe_ebpf_record {
	enum lupe_ebpf_call call;
	pid_t pid;
	uint64_t host_file_id;
	uint64_t vaddr, length, bias;   /* mappings */
	size_t ndeltas;                 /* load_deltas */
};
struct lupe_ebpf_handler *lupe_ebpf_recorder_new(void);
/* Borrowed view of the records so far (valid until the next call into the manager). */
const struct lupe_ebpf_record *lupe_ebpf_recorder_records(struct lupe_ebpf_handler *h, size_t *n);
void lupe_ebpf_recorder_clear(struct lupe_ebpf_handler *h);
/* NULL unless h is a recorder. */
bool lupe_ebpf_handler_is_recorder(const struct lupe_ebpf_handler *h);

/* A handler that accepts everything and writes nothing: for profiling with frame-pointer
 * stacks, where BPF needs no mappings. */
struct lupe_ebpf_handler *lupe_ebpf_null_new(void);

/* CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns(). */
uint64_t lupe_ktime_now(void);

#endif
