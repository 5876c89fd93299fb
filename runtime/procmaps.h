/* /proc/PID/maps: parsing into the mappings the process manager cares about. */
#ifndef LUPE_PROCMAPS_H
#define LUPE_PROCMAPS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum lupe_procmap_kind {
	LUPE_MAP_FILE = 0,   /* a regular file mapping (path may carry " (deleted)" removed) */
	LUPE_MAP_VDSO,       /* [vdso] */
	LUPE_MAP_ANON,       /* no path, or /dev/zero: anonymous (JIT candidates when X) */
	LUPE_MAP_MEMFD,      /* /memfd:NAME: anonymous memory with a name (JIT, not ELF) */
	LUPE_MAP_SPECIAL,    /* [heap], [stack], [vvar], [vsyscall], other [..] */
};

#define LUPE_MAP_R 0x1
#define LUPE_MAP_W 0x2
#define LUPE_MAP_X 0x4
#define LUPE_MAP_P 0x8 /* private (copy-on-write) */

struct lupe_procmap {
	uint64_t start, end;     /* [start, end) in the process */
	uint64_t file_offset;
	uint32_t dev_major, dev_minor;
	uint64_t inode;
	uint32_t prot;           /* LUPE_MAP_* */
	enum lupe_procmap_kind kind;
	int deleted;             /* the path ended in " (deleted)" (stripped from path) */
	char *path;              /* owned by the lupe_procmaps; "" when none */
};

struct lupe_procmaps {
	struct lupe_procmap *maps;
	size_t count;
	size_t malformed;        /* lines that did not parse (skipped, counted) */
	size_t truncated;        /* 1 if the text ended before the last line's path (ignored) */
	/* private: */
	size_t cap;
	char *strings;
	size_t strings_len, strings_cap;
};

/* Ownership: a struct lupe_procmaps owns its maps array and the one string arena every
 * path points into. It starts zeroed (= { 0 }); parse and read reuse its buffers, so one
 * struct can be refilled many times; lupe_procmaps_release() frees them. Paths stay valid
 * until the next parse/read/release on the same struct. */

/* Parses maps text (need not be NUL-terminated; NULL is fine when len is 0). Only mappings
 * with LUPE_MAP_X are kept: nothing else can hold a sampled instruction pointer. Paths may
 * contain spaces; device numbers may be wider than 8 bits (hex, any width). out is reset
 * first (count, malformed and truncated start at 0).
 *
 * A line is malformed (skipped, counted in malformed, exec or not) when a field is missing
 * or holds a wrong character, a number overflows its field (addresses/offset/inode 64 bits,
 * device numbers 32), start >= end (an empty range holds no IP), the perms are not exactly
 * [r-][w-][x-][ps], or the path holds a NUL byte; an empty line is malformed too.
 * The last line may lack its newline (/proc output never does, hand-written fixtures may).
 * It is kept if everything up to the whitespace after the inode is there, since only the
 * path can then be missing a tail, and that cannot be detected. If it stops earlier it is
 * ignored and truncated = 1; if it is wrong before it stops it counts as malformed.
 * A path ending in " (deleted)" loses that suffix (once) and sets deleted; the kind is
 * then decided on what remains (so "/dev/zero (deleted)", a shared anonymous mapping, is
 * LUPE_MAP_ANON, and "/memfd:x (deleted)" is LUPE_MAP_MEMFD).
 * Returns 0, -EINVAL (out NULL, or text NULL with len > 0) or -ENOMEM; on error out holds
 * count 0 and must still be released. */
int lupe_procmaps_parse(const char *text, size_t len, struct lupe_procmaps *out);
/* Reads /proc/PID/maps (proc_root: NULL for "/proc", else a test directory holding
 * PID/maps) with read() until end of file, then parses it as above; out is reset first.
 * Errors are folded so callers test two values:
 *   -ESRCH  no such process: open failed with ENOENT or ESRCH (also a proc_root without
 *           that PID), or a read failed with ESRCH because the process exited mid-read
 *           (what had been read is dropped: it describes a dead process);
 *   -EPERM  not allowed: EACCES or EPERM (ptrace access mode check on another user's
 *           process without CAP_SYS_PTRACE);
 *   -EINVAL out NULL or pid <= 0; -ENAMETOOLONG proc_root too long; -EFBIG text of
 *           1 GiB or more; -ENOMEM; any other errno from open/read, negated, unchanged.
 * Zero bytes read (a kernel thread, a zombie, or a process that exited between open and
 * read) returns 0 with count 0: the caller tells those apart by other means (exit events).
 * On error out holds count 0 and must still be released. */
int lupe_procmaps_read(const char *proc_root, pid_t pid, struct lupe_procmaps *out);
/* Frees what out holds (not out itself) and zeroes it; out may be reused after. NULL ok. */
void lupe_procmaps_release(struct lupe_procmaps *out);

#endif
