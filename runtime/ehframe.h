/* Stack deltas from DWARF call-frame information (.eh_frame, .debug_frame) of an x86-64
 * ELF file: for each address range, where the CFA is and how to recover the caller's rbp
 * (bpf/unwind.h says what the opcodes mean; the return address is always at CFA - 8).
 *
 * Sources, in order of trust: .eh_frame (through .eh_frame_hdr's sorted table when it is
 * valid, else a linear walk; through PT_GNU_EH_FRAME when the file has no section
 * headers), then .debug_frame for the functions .eh_frame does not cover. The result is
 * sorted by address with identical neighbours merged; the end of every FDE that is not
 * followed directly by another is marked LUPE_CMD_INVALID.
 *
 * Malformed input never crashes or hangs: a bad CIE or FDE is rejected and counted and
 * parsing goes on; every loop is bounded by the bytes it reads. Thread-safe (no state
 * but the caller's). */
#ifndef LUPE_EHFRAME_H
#define LUPE_EHFRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "procmgr.h"

/* Depth of DW_CFA_remember_state nesting an FDE may use; deeper is a bad FDE. */
#define LUPE_EHFRAME_REMEMBER_MAX 16

struct lupe_ehframe_opts {
	size_t sz;
	bool no_eh_frame_hdr;  /* walk .eh_frame linearly even when .eh_frame_hdr is valid */
	bool no_eh_frame;      /* ignore .eh_frame and .eh_frame_hdr */
	bool no_debug_frame;   /* ignore .debug_frame */
	size_t :0;
};

/* Which sources were used (stats.sources). */
#define LUPE_EHFRAME_SRC_EH_FRAME     0x1u
#define LUPE_EHFRAME_SRC_HDR_TABLE    0x2u  /* FDEs found through .eh_frame_hdr */
#define LUPE_EHFRAME_SRC_PT_GNU_EH    0x4u  /* .eh_frame found through PT_GNU_EH_FRAME */
#define LUPE_EHFRAME_SRC_DEBUG_FRAME  0x8u

struct lupe_ehframe_stats {
	uint64_t cies, fdes;          /* well-formed ones seen */
	uint64_t bad_cies, bad_fdes;  /* rejected; parsing went on */
	uint64_t unsupported_exprs;   /* CFA expressions matching no known pattern: INVALID */
	uint64_t unsupported_rules;   /* CFA on a register other than rsp/rbp, the return
				       * address not at CFA - 8, or an rbp rule that is not
				       * "saved at CFA + n" (rbp then UNDEFINED) */
	uint64_t signal_fdes;         /* 'S' augmentation: LUPE_CMD_SIGNAL */
	uint64_t stop_fdes;           /* FDEs with a LUPE_CMD_STOP range (RA undefined) */
	uint64_t plt_fdes;            /* FDEs with the PLT expression */
	uint64_t empty_fdes;          /* zero address range: skipped */
	uint64_t outside_fdes;        /* not inside an executable PT_LOAD: skipped */
	uint64_t overlapping_fdes;    /* starting inside an earlier FDE (.debug_frame copies
				       * of .eh_frame ones included): skipped */
	uint64_t hdr_fallbacks;       /* .eh_frame_hdr present but unusable: walked linearly */
	uint64_t deltas_raw;          /* rows produced before merging */
	uint64_t deltas;              /* in the result */
	uint32_t sources;             /* LUPE_EHFRAME_SRC_* */
};

/* Extracts the stack deltas of an open ELF file (fd borrowed; its offset is untouched).
 * On success out->deltas is malloc'd and owned by the caller (free()), out->count > 0.
 * Returns 0; -ENOEXEC (not an ELF file, or not a little-endian x86-64 ET_EXEC/ET_DYN);
 * -ENOENT (no call-frame information, or none of it covers executable code); -EINVAL
 * (CFI present but fatally malformed: not one usable FDE); -ENOMEM; -EIO.
 * On error out is zeroed. opts may be NULL; st may be NULL, else it is filled (also on
 * error, with what was counted). */
int lupe_ehframe_extract_fd(int fd, const struct lupe_ehframe_opts *opts,
			    struct lupe_interval_data *out, struct lupe_ehframe_stats *st);
/* The same from an ELF image in memory (the vDSO; fuzz inputs): buf is borrowed, only read,
 * and every offset into it is bounds-checked against len. */
int lupe_ehframe_extract_mem(const void *buf, size_t len, const struct lupe_ehframe_opts *opts,
			     struct lupe_interval_data *out, struct lupe_ehframe_stats *st);
/* The same from the bytes of one section: .eh_frame loaded at vaddr (pc-relative pointers
 * are relative to it), or .debug_frame when debug_frame is true. No executable-segment
 * check. For tests and fuzzing. */
int lupe_ehframe_extract_section(const void *sec, size_t len, uint64_t vaddr, bool debug_frame,
				 struct lupe_interval_data *out, struct lupe_ehframe_stats *st);

/* The delta covering addr (the last one at or below it), or NULL. Borrowed from d. */
const struct lupe_stack_delta *lupe_ehframe_find(const struct lupe_interval_data *d,
						 uint64_t addr);

/* Text forms, for tools and tests. Each writes a NUL-terminated string into buf and
 * returns buf:
 *   cfa: "rsp+8", "rbp+16", "*(rbp-8)", or the command: "invalid", "stop", "plt", "signal";
 *   fp:  "cfa-16", "same", "undefined" ("" for commands). */
char *lupe_ehframe_format_cfa(const struct lupe_stack_delta *d, char *buf, size_t len);
char *lupe_ehframe_format_fp(const struct lupe_stack_delta *d, char *buf, size_t len);
/* True when d is a command (cfa_opcode LUPE_CFA_CMD); *cmd_name is then its name. */
bool lupe_ehframe_is_cmd(const struct lupe_stack_delta *d, const char **cmd_name);

/* The process manager's stack-delta provider: deltas from info->fd, or from info->image for
 * the vDSO; -ENOENT when the file has no usable CFI. NULL + errno on failure. Freed through
 * its ops->free (the manager does that when it owns it). */
struct lupe_stackdelta_provider *lupe_ehframe_provider_new(void);
/* Totals over every file the provider has read (sources: OR of all). */
void lupe_ehframe_provider_stats(struct lupe_stackdelta_provider *p,
				 struct lupe_ehframe_stats *out);

#endif
