/* What the process manager needs from an ELF file: its executable PT_LOAD segments (to
 * turn a mapping's file offset into an ELF virtual address, hence the bias), its build ID
 * and its .gnu_debuglink name. Parsed with libelf. */
#ifndef LUPE_ELFINFO_H
#define LUPE_ELFINFO_H

#include <stddef.h>
#include <stdint.h>

#define LUPE_ELF_MAX_XSEGS 8
#define LUPE_BUILD_ID_MAX 64

struct lupe_elf_segment {
	uint64_t vaddr, offset, filesz, memsz;
};

struct lupe_elfinfo {
	uint16_t type;           /* ET_EXEC or ET_DYN */
	uint16_t machine;
	struct lupe_elf_segment xsegs[LUPE_ELF_MAX_XSEGS]; /* PT_LOAD with PF_X, in order */
	size_t nxsegs;
	size_t xsegs_dropped;    /* executable PT_LOADs past the first LUPE_ELF_MAX_XSEGS: ignored */
	uint8_t build_id[LUPE_BUILD_ID_MAX];
	size_t build_id_len;     /* 0: none */
	char debuglink[256];     /* "" when none, malformed, or not a plain file name (has '/') */
	uint32_t debuglink_crc;
};

/* Parses an open ELF file (fd borrowed; offset untouched). Returns 0, -ENOEXEC (not an
 * ELF file, not ET_EXEC/ET_DYN, or no executable PT_LOAD), -EINVAL (malformed/truncated
 * headers, or an executable segment past the end of the file), -EIO. A missing or
 * malformed build-ID note or debuglink is not an error: the field is left empty.
 * On error *out is zeroed. Thread-safe (libelf is initialised once). */
int lupe_elfinfo_from_fd(int fd, struct lupe_elfinfo *out);
/* The same from bytes in memory (the vDSO image; fuzz inputs). buf is borrowed, only read,
 * and every offset in it is bounds-checked against len. */
int lupe_elfinfo_from_mem(const void *buf, size_t len, struct lupe_elfinfo *out);

/* Maps a file offset inside an executable segment to its ELF virtual address: an offset in
 * [seg.offset & ~(page-1), seg.offset + seg.filesz) maps to seg.vaddr - (seg.offset - off).
 * The first segment in program-header order that covers the offset wins (page is the
 * system page size); segments with no file bytes cover nothing. Returns 0 and sets
 * *vaddr, or -ENOENT when none covers it. */
int lupe_elfinfo_offset_to_vaddr(const struct lupe_elfinfo *e, uint64_t file_offset,
				 uint64_t *vaddr);

/* Lower-case hex of the build ID into buf (2*len+1 bytes; a shorter buf gets the whole
 * bytes that fit). Always NUL-terminated when buflen > 0. Returns buf ("" if none). */
char *lupe_elfinfo_build_id_hex(const struct lupe_elfinfo *e, char *buf, size_t buflen);

#endif
