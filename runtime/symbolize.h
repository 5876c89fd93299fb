/* Host symbolization: function names for native frames (from an ELF file's symbol tables,
 * or its separate debug file) and for kernel frames (from /proc/kallsyms).
 *
 * Both tables are built once, sorted, and then only read: any number of threads may call
 * the lookups at the same time. Load and free must not race with anything else. Names
 * returned by lookups are owned by the table and stay valid until its __free. */
#ifndef LUPE_SYMBOLIZE_H
#define LUPE_SYMBOLIZE_H

#include <stddef.h>
#include <stdint.h>

#include "opts.h"

/* ---- one ELF file ---------------------------------------------------------------- */

struct lupe_symtab;

enum lupe_demangle_mode {
	LUPE_DEMANGLE_LAZY = 0, /* on the first lookup that returns the symbol (default) */
	LUPE_DEMANGLE_EAGER,    /* every name at load: slower load, lookups never allocate */
	LUPE_DEMANGLE_NONE,     /* names as they are in the file (_ZN3foo3barEv) */
};

struct lupe_symtab_opts {
	size_t sz;
	/* Root of the separate debug files; NULL: "/usr/lib/debug". Borrowed during load. */
	const char *debug_root;
	enum lupe_demangle_mode demangle;
	/* Do not look for separate debug files at all. */
	int no_debug_files;
	size_t :0;
};

/* Where the symbols came from. */
enum lupe_symtab_source {
	LUPE_SYMSRC_NONE = 0,  /* no function symbols anywhere: every lookup misses */
	LUPE_SYMSRC_SYMTAB,    /* the file's own .symtab */
	LUPE_SYMSRC_BUILD_ID,  /* .symtab of <debug_root>/.build-id/NN/REST.debug */
	LUPE_SYMSRC_DEBUGLINK, /* .symtab of the file named by .gnu_debuglink (CRC checked) */
	LUPE_SYMSRC_DYNSYM,    /* the file's own .dynsym: stripped and no debug file found */
};

struct lupe_symtab_stats {
	uint64_t symbols;        /* function symbols in the table, after merging aliases */
	uint64_t aliases;        /* function symbols merged into another at the same address */
	uint64_t bad_symbols;    /* dropped: name out of range or unterminated, end overflows */
	uint64_t debug_rejected; /* debug file candidates with a wrong CRC or build ID */
	uint64_t lookups;
	uint64_t misses;         /* lookups that found no symbol */
	uint64_t demangled;      /* names demangled so far */
	uint64_t mem_bytes;      /* what the table holds (symbols + names) */
};

/* Loads the function symbols (STT_FUNC and STT_GNU_IFUNC, defined) of one ELF file:
 * from .symtab if the file has one; else from the .symtab of a separate debug file, found
 * by build ID (<debug_root>/.build-id/NN/REST.debug, build ID checked) and then by
 * .gnu_debuglink (beside the file, in .debug/ beside it, and in <debug_root>/<dir>/, CRC32
 * checked); else from .dynsym. A symbol without a size ends at the next symbol or at the
 * end of its section. Symbols at the same address are merged: a sized one wins, then
 * global over weak over local, then the fewest leading underscores, then the shortest.
 *
 * path: the file (also used to find debuglink files); may be NULL when fd >= 0.
 * fd: an open descriptor of the file, borrowed (its offset is untouched), or -1 to open
 *     path. opts: may be NULL.
 * Only ET_EXEC and ET_DYN files are accepted: their st_value are the ELF virtual
 * addresses a caller computes as (address in the process - bias).
 * A valid ELF file without any function symbol gives an empty table (source NONE).
 * Symbols with a name outside the string table (or unterminated) or an end past 2^64 are
 * dropped and counted (bad_symbols); the rest still load.
 * Returns a table to release with lupe_symtab__free, or NULL with errno: ENOENT, EACCES
 * (open), EISDIR, EINVAL (not a regular file, or malformed ELF: truncated, bad section
 * headers, a symbol table linked to no string table or with data past the end of the
 * file), ENOEXEC (not ELF, or not EXEC/DYN), ENOMEM. Never blocks on a FIFO. */
struct lupe_symtab *lupe_symtab__load(const char *path, int fd,
				      const struct lupe_symtab_opts *opts);
/* NULL is accepted. Invalidates every name the table returned. */
void lupe_symtab__free(struct lupe_symtab *st);

/* The function containing vaddr (an ELF virtual address): its name (demangled unless
 * LUPE_DEMANGLE_NONE; the raw name if demangling fails) and, if offset is non-NULL,
 * vaddr - its start. NULL when vaddr is before the first symbol, or past the end of the
 * symbol it falls after. Thread-safe; lazy demangling takes a lock the first time a
 * symbol is returned. The name is owned by st. */
const char *lupe_symtab__lookup(struct lupe_symtab *st, uint64_t vaddr, uint64_t *offset);

size_t lupe_symtab__count(const struct lupe_symtab *st);
enum lupe_symtab_source lupe_symtab__source(const struct lupe_symtab *st);
/* The separate debug file the symbols came from, or NULL. Owned by st. */
const char *lupe_symtab__debug_path(const struct lupe_symtab *st);
/* A snapshot of the counters (lookups, misses, demangled keep moving under concurrency). */
void lupe_symtab__stats(const struct lupe_symtab *st, struct lupe_symtab_stats *out);

/* Demangles one C++ (Itanium _Z) or Rust (legacy _ZN...17h<hash>E and v0 _R) name, with
 * parameter lists, as `c++filt` does; Rust hashes are dropped. Returns a malloc'd string the
 * caller frees, or NULL (not mangled, malformed, longer than 8 KiB, or out of memory).
 * Thread-safe. */
char *lupe_demangle(const char *name);

/* Name of a source for messages ("symtab", "build-id", ...). Static string. */
const char *lupe_symtab_source_str(enum lupe_symtab_source src);

/* ---- the kernel ------------------------------------------------------------------- */

struct lupe_ksyms;

struct lupe_ksyms_stats {
	uint64_t symbols;   /* text symbols (t T w W) in the table, after merging aliases */
	uint64_t aliases;   /* text symbols merged into another at the same address */
	uint64_t skipped;   /* well-formed lines of other types (data, absolute, ...) */
	uint64_t malformed; /* lines that did not parse */
	uint64_t lookups;
	uint64_t misses;
	uint64_t mem_bytes;
};

/* Loads the text symbols (types t, T, w, W) of a kallsyms file, with their [module].
 * path: NULL for "/proc/kallsyms" (tests pass a fixture). Addresses are parsed as 64-bit
 * integers, never through double. Returns a table to release with lupe_ksyms__free, or
 * NULL with errno: ENOENT, EACCES (open), EPERM (every address is 0: kptr_restrict hides
 * them from this user), ENODATA (no text symbol), EFBIG (file over 4 GiB), ENOMEM. */
struct lupe_ksyms *lupe_ksyms__load(const char *path);
/* NULL is accepted. Invalidates every name the table returned. */
void lupe_ksyms__free(struct lupe_ksyms *ks);

/* The text symbol at or before addr: its name, addr - its start in *offset (if non-NULL),
 * and its module name without brackets in *module (if non-NULL; NULL for the kernel
 * image). Kernel symbols have no sizes: a text symbol extends to the next symbol of any
 * type in the file (non-text ones are kept as boundaries), so an address in a gap after
 * the last symbol of a region is attributed to that symbol. Returns NULL (and leaves
 * *offset and *module untouched) when addr is below every text symbol or falls after a
 * non-text one. Thread-safe.
 * Strings are owned by ks. */
const char *lupe_ksyms__lookup(struct lupe_ksyms *ks, uint64_t addr, uint64_t *offset,
			       const char **module);

size_t lupe_ksyms__count(const struct lupe_ksyms *ks);
void lupe_ksyms__stats(const struct lupe_ksyms *ks, struct lupe_ksyms_stats *out);

#endif
