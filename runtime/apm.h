/* APM correlation: a profiled process runs an APM agent that publishes the trace and
 * transaction each thread is working for; lupe tells that agent which stack (by 128-bit
 * trace hash) was sampled during which transaction, and labels the samples with the
 * agent's service name. The protocol is Elastic's "universal profiling integration" v1.
 *
 *   detection   a mapped file named .../elastic-jvmti-linux-<arch>.so that exports
 *               elastic_apm_profiling_correlation_process_storage_v1 (8 bytes, a pointer)
 *               and has an R_X86_64_TLSDESC / R_AARCH64_TLSDESC relocation for
 *               elastic_apm_profiling_correlation_tls_v1 (lupe_apm_detect, once per file);
 *   attach      per process: the TLS offset from the descriptor's GOT slot and the service
 *               name, environment and socket path from the process storage, read with
 *               process_vm_readv; BPF is told the TLS offset (opts.attached); the agent's
 *               socket is opened under the security rules below;
 *   notify      per (pid, transaction, trace hash, count): one 46-byte datagram, sent
 *               without ever blocking (a full socket drops it, counted).
 *
 * Socket security. The path comes from the target's memory, so it is hostile until shown
 * otherwise. It must be absolute and have no ".." component; it is resolved inside the
 * target's root (/proc/PID/root, the target's mount namespace) with openat2
 * RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS (symlinks stay inside that root, /proc magic
 * links are refused), or, where openat2 is missing, component by component with
 * O_NOFOLLOW (every symlink refused). The result must be a socket that the target's
 * effective uid, gid or supplementary groups (from /proc/PID/status) may write; root
 * targets pass. The connection goes through the resolved file (/proc/self/fd/N of its
 * O_PATH descriptor), so it never reaches a different socket at the same path in another
 * mount namespace. A rejected path is counted and logged; the agent still labels samples.
 *
 * Thread-safety: a registry takes its own lock in every function; the procmgr hooks run
 * under the manager's lock and take the registry's inside it, never the reverse. */
#ifndef LUPE_APM_H
#define LUPE_APM_H

#include <linux/types.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "../bpf/apm.h"
#include "fileid.h"
#include "procmgr.h"

#define LUPE_APM_MSG_LEN 46
#define LUPE_APM_MSG_CORRELATION 1  /* message type */
#define LUPE_APM_MSG_MINOR 1
#define LUPE_APM_SERVICE_MAX 128
#define LUPE_APM_ENV_MAX 128
#define LUPE_APM_SOCKET_MAX 1024
/* u16 minor + three u32-length-prefixed strings at their limits. */
#define LUPE_APM_STORAGE_MAX (2 + 3 * 4 + LUPE_APM_SERVICE_MAX + LUPE_APM_ENV_MAX + LUPE_APM_SOCKET_MAX)

#include "opts.h"

/* ---- pure helpers ------------------------------------------------------------------- */

/* Encodes a correlation message, little-endian: u16 type = 1, u16 minor = 1,
 * trace_id[16], tx_id[8], stack_trace_id[16] (trace_hash big-endian, hi then lo),
 * u16 count. */
void lupe_apm_encode(uint8_t out[LUPE_APM_MSG_LEN], const struct lupe_apm_ids *ids,
		     struct lupe_file_id trace_hash, uint16_t count);

/* Whether a mapped path names an agent library: ".../elastic-jvmti-linux-X.so" where X is
 * letters, digits, '_' and '-' (possibly empty). */
bool lupe_apm_path_matches(const char *path);

/* What makes a file an agent library: ELF virtual addresses, add the load bias. */
struct lupe_apm_lib {
	uint16_t machine;           /* EM_X86_64 or EM_AARCH64 */
	uint64_t storage_vaddr;     /* the process-storage pointer */
	uint64_t tlsdesc_vaddr;     /* the TLS descriptor: {resolver, argument}; the argument
	                             * is the static TLS offset */
};

/* Detects an agent library. fd: the open file (borrowed, offset untouched), or -1 to open
 * path. path: the mapped path, whose name is checked first (cheap: nothing is read when it
 * does not match). Returns 0 (out filled), -ENOENT (not named like an agent library),
 * -ENOTSUP (named like one, but no 8-byte storage symbol in .dynsym, no TLSDESC relocation
 * for the TLS symbol, or not a 64-bit x86-64/arm64 file), -ENOEXEC (not ELF), -EINVAL
 * (malformed), or an open() errno. */
int lupe_apm_detect(int fd, const char *path, struct lupe_apm_lib *out);

/* The process storage, parsed. Strings are NUL-terminated and hold no control bytes. */
struct lupe_apm_storage {
	uint16_t minor;
	char service[LUPE_APM_SERVICE_MAX + 1];
	char env[LUPE_APM_ENV_MAX + 1];
	char socket[LUPE_APM_SOCKET_MAX + 1];
};

/* Parses the bytes the storage pointer points to (host byte order): u16 minor, then
 * service name, environment and socket path, each a u32 length and that many bytes.
 * Returns 0, -ENODATA (buf ends before the last string does: not published completely, or
 * near the end of readable memory), -EINVAL (a length over its limit, or a control byte in
 * a string). */
int lupe_apm_parse_storage(const void *buf, size_t len, struct lupe_apm_storage *out);

/* ---- the agent registry ------------------------------------------------------------- */

struct lupe_apm_opts {
	size_t sz;
	const char *proc_root;  /* NULL: "/proc"; read for PID/status, PID/root, PID/maps */
	/* Told when a process gets an agent (write apm_procs[pid] = {tls_offset}) and loses
	 * it (delete it). Called under the registry's lock: they must not call into it. A
	 * failing attached() is counted (bpf_errors); the agent stays usable for labels. */
	int (*attached)(void *ctx, pid_t pid, int64_t tls_offset);
	void (*detached)(void *ctx, pid_t pid);
	void *ctx;              /* borrowed */
	bool no_openat2;        /* resolve socket paths component by component (tests) */
	size_t :0;
};

struct lupe_apm_stats {
	uint64_t libs_detected;   /* files recognised as agent libraries */
	uint64_t libs_rejected;   /* named like one, not usable (-ENOTSUP and worse) */
	uint64_t agents_found;    /* attaches that succeeded (storage read, BPF told) */
	uint64_t agents;          /* attached now */
	uint64_t pending;         /* waiting for the agent to publish its storage */
	uint64_t attach_errors;   /* gave up: unreadable memory, implausible TLS offset */
	uint64_t storage_errors;  /* process storage malformed */
	uint64_t bpf_errors;      /* opts.attached failed */
	uint64_t rejected_paths;  /* socket paths refused (rules above) or not found */
	uint64_t socket_errors;   /* socket()/connect() failed, or the agent went away */
	uint64_t sent;            /* datagrams sent */
	uint64_t dropped;         /* not sent: the agent's queue was full (EAGAIN, ENOBUFS) */
	uint64_t errors;          /* not sent: any other error */
	uint64_t no_transaction;  /* notifications with a zero transaction ID: not sent */
	uint64_t no_socket;       /* notifications for an agent without a usable socket */
	uint64_t services;        /* distinct service names kept */
	/* The same outcomes in samples (the counts notify was given), so that samples sent +
	 * dropped + failed + without transaction + without socket = every sample notified. */
	uint64_t sent_samples, dropped_samples, error_samples;
	uint64_t no_transaction_samples, no_socket_samples;
};

/* One process's agent, as a snapshot (tests, diagnostics). */
struct lupe_apm_agent_info {
	pid_t pid;
	bool attached;            /* false: pending */
	int64_t tls_offset;
	uint64_t bias;
	struct lupe_apm_lib lib;
	struct lupe_apm_storage storage;
	bool socket_open;
	int socket_err;           /* why there is no socket (negative errno), or 0 */
};

struct lupe_apm;

/* Returns NULL and sets errno (ENOMEM, EINVAL) on failure. */
struct lupe_apm *lupe_apm__new(const struct lupe_apm_opts *opts);
/* Closes every socket; does not call opts.detached (BPF goes away with the registry).
 * NULL ok. Invalidates every service name returned. */
void lupe_apm__free(struct lupe_apm *apm);

/* Attaches pid's agent from lib mapped with this load bias (address in the process - ELF
 * vaddr). Returns 0 (attached; also when it already was), -EAGAIN (the agent has not
 * published its storage yet, or its TLS descriptor is not resolved: kept pending, see
 * retry), -EINVAL (malformed storage: counted, dropped), -ESRCH, -EPERM, -EFAULT
 * (unreadable memory), -ENOMEM. A socket that cannot be used is not an error here (see
 * agent_info.socket_err). A pid that had another agent library gets the new one. */
int lupe_apm__attach(struct lupe_apm *apm, pid_t pid, const struct lupe_apm_lib *lib,
		     uint64_t bias);
/* Attaches again every pending agent (pid 0) or pid's; a socket whose path did not exist
 * yet or refused the connection is tried again too. A pending agent is given up after 32
 * tries. Returns how many became attached. Cheap when nothing is pending: call it from a
 * timer. */
int lupe_apm__retry(struct lupe_apm *apm, pid_t pid);
/* Reads /proc/PID/maps itself and attaches the first agent library mapped (tests, and
 * callers without a process manager). Returns attach's result, or -ENOENT (no agent
 * library mapped), -ENOTSUP (one that is not usable), -ESRCH, -EPERM. */
int lupe_apm__scan(struct lupe_apm *apm, pid_t pid);
/* Forgets pid's agent: closes its socket and calls opts.detached if BPF was told. */
void lupe_apm__pid_exit(struct lupe_apm *apm, pid_t pid);

/* Tells pid's agent that trace_hash was sampled count times during the transaction in
 * ids. Sends one datagram per 65535 of count (none for 0), only when the transaction ID
 * is non-zero and the agent has a socket; with MSG_DONTWAIT, so it never blocks: a full
 * queue drops the message (counted). Returns the agent's service name (owned by the
 * registry, valid until lupe_apm__free: keep the pointer, compare it by address), or NULL
 * when pid has no attached agent or an empty service name. */
const char *lupe_apm__notify(struct lupe_apm *apm, pid_t pid, const struct lupe_apm_ids *ids,
			     struct lupe_file_id trace_hash, uint32_t count);

/* The service name of pid's agent, as notify returns it, without sending anything. */
const char *lupe_apm__service(struct lupe_apm *apm, pid_t pid);
/* Returns 0 and fills *out, or -ENOENT. */
int lupe_apm__agent_info(struct lupe_apm *apm, pid_t pid, struct lupe_apm_agent_info *out);
void lupe_apm__stats(struct lupe_apm *apm, struct lupe_apm_stats *out);

/* ---- process-manager hooks ---------------------------------------------------------- */

/* A file was loaded by the manager: detect it (only files named like agent libraries are
 * read) and remember it by host file ID. */
void lupe_apm__file_loaded(struct lupe_apm *apm, const struct lupe_exe_info *info);
void lupe_apm__file_unloaded(struct lupe_apm *apm, uint64_t host_file_id);
/* A new mapping of pid: attaches when it maps a remembered agent library (its bias is the
 * library's load bias). Returns attach's result, or -ENOENT (not an agent library). */
int lupe_apm__mapping_added(struct lupe_apm *apm, pid_t pid, const struct lupe_mapping *m);

/* Decorators that feed those hooks without changing the manager: each forwards every call
 * to inner (owned: freed with the wrapper; NULL for none) and tells apm (borrowed: it must
 * outlive the manager). The reporter reports loaded/unloaded files; the handler reports
 * add_mapping and delete_pid (an exit). Return NULL and set errno (ENOMEM) on failure;
 * inner is freed then too, so pass the result straight into lupe_procmgr_opts. */
struct lupe_symbol_reporter *lupe_apm_reporter_new(struct lupe_apm *apm,
						   struct lupe_symbol_reporter *inner);
struct lupe_ebpf_handler *lupe_apm_ebpf_new(struct lupe_apm *apm, struct lupe_ebpf_handler *inner);
/* The handler a decorator wraps (borrowed), or NULL if h is not one. */
struct lupe_ebpf_handler *lupe_apm_ebpf_inner(struct lupe_ebpf_handler *h);

#endif
