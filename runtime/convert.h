/* Trace conversion: a raw trace (host file IDs, addresses, as BPF reports them) becomes a
 * trace of 128-bit file IDs, adjusted addresses and mapping bounds, with a stable 128-bit
 * hash. The semantics follow the reference profiler's ConvertTrace (see DESIGN.md). */
#ifndef LUPE_CONVERT_H
#define LUPE_CONVERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "fileid.h"

struct lupe_procmgr;

/* Frame types: the low 7 bits name the unwinder; 0x80 marks an error frame of that
 * unwinder. Interpreter values are reserved for unwinders to come. */
enum lupe_frame_type {
	LUPE_FRAME_UNKNOWN = 0,
	LUPE_FRAME_PYTHON = 1,
	LUPE_FRAME_PHP = 2,
	LUPE_FRAME_NATIVE = 3,
	LUPE_FRAME_KERNEL = 4,
	LUPE_FRAME_HOTSPOT = 5,
	LUPE_FRAME_RUBY = 6,
	LUPE_FRAME_PERL = 7,
	LUPE_FRAME_V8 = 8,
	LUPE_FRAME_PHPJIT = 9,
	LUPE_FRAME_DOTNET = 10,
	LUPE_FRAME_ERROR = 0x80,  /* flag */
	LUPE_FRAME_ABORT = 0xff,  /* the unwinder gave up: addr_or_line is the reason */
};

static inline bool lupe_frame_is_error(uint8_t type)
{
	return type & LUPE_FRAME_ERROR;
}

/* A file ID no file has: frames whose file is unknown. */
#define LUPE_FILE_ID_UNSYMBOLIZED ((struct lupe_file_id){ UINT64_MAX, UINT64_MAX })

struct lupe_raw_frame {
	uint64_t file;             /* host file ID; 0: unknown */
	uint64_t addr_or_line;     /* native: ELF address; kernel: address; error: reason */
	uint8_t type;              /* enum lupe_frame_type */
	bool return_address;       /* a caller frame: the address is the one after the call */
};

struct lupe_raw_trace {
	pid_t pid, tid;
	uint64_t ktime;
	uint32_t nframes;
	const struct lupe_raw_frame *frames; /* leaf first */
	/* The APM trace and transaction the thread was in (bpf/apm.h), or NULL; borrowed.
	 * Only lupe_procmgr__notify_apm reads it. */
	const struct lupe_apm_ids *apm;
};

struct lupe_frame {
	struct lupe_file_id file_id;
	uint64_t addr_or_line;     /* return addresses already minus 1: inside the call */
	uint8_t type;
	uint64_t mapping_start, mapping_end, mapping_file_offset; /* native frames; else 0 */
};

struct lupe_trace {
	struct lupe_file_id hash;
	uint32_t nframes;
	struct lupe_frame frames[];  /* leaf first */
};

/* Converts raw. Per frame:
 * - error frames are dropped when the manager filters error frames, else kept with the
 *   unsymbolized file ID and the reason in addr_or_line;
 * - native and kernel frames: a return address becomes address - 1; the 128-bit file ID
 *   comes from the file-ID mapper (a miss gives LUPE_FILE_ID_UNSYMBOLIZED, the address is
 *   kept); native frames get the bounds of the mapping of (pid, file) covering them
 *   (0 when none is known);
 * - other types pass through with the unsymbolized file ID.
 * *out is malloc'd, owned by the caller (free()). Returns 0 or -ENOMEM. */
int lupe_procmgr__convert_trace(struct lupe_procmgr *pm, const struct lupe_raw_trace *raw,
				struct lupe_trace **out);

/* The trace hash: FNV-1a-128 over, for each frame leaf first, the file ID's 16 bytes
 * (big-endian hi, then lo) followed by addr_or_line in decimal ASCII. Frame types are not
 * hashed. The empty trace hashes to the FNV-128 offset basis. */
struct lupe_file_id lupe_trace_hash(const struct lupe_frame *frames, size_t n);

#endif
