/* Host symbolization: ELF symbol tables (with separate debug files) and kallsyms.
 * See symbolize.h for the contracts. */
#define LUPE_LOG_PREFIX "symbolize: "
#include "symbolize.h"
#include "strutil.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <libiberty/demangle.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define OPTS_HAS(opts, field) \
	((opts) && (opts)->sz >= offsetof(__typeof__(*(opts)), field) + sizeof((opts)->field))
#define OPTS_GET(opts, field, def) (OPTS_HAS(opts, field) ? (opts)->field : (def))

#define DEFAULT_DEBUG_ROOT "/usr/lib/debug"
/* cp-demangle keeps arrays proportional to the name's length on the stack: 8 KiB of name
 * is about 600 KiB of stack, safe on any thread we run. Longer names stay mangled. */
#define DEMANGLE_MAX_LEN 8192
#define BUILD_ID_MAX 64
#define ARENA_BLOCK (64 * 1024)

/* ---- small helpers ----------------------------------------------------------------- */

char *lupe_demangle(const char *name)
{
	if (!name || name[0] != '_' || (name[1] != 'Z' && name[1] != 'R'))
		return NULL;
	if (strnlen(name, DEMANGLE_MAX_LEN + 1) > DEMANGLE_MAX_LEN)
		return NULL;
	/* DMGL_AUTO, not DMGL_RUST: the Rust style alone refuses C++ names; auto tries Rust
	 * first (legacy Rust names are valid C++ names too) and then the Itanium ABI. */
	return cplus_demangle(name, DMGL_PARAMS | DMGL_ANSI | DMGL_AUTO);
}

const char *lupe_symtab_source_str(enum lupe_symtab_source src)
{
	switch (src) {
	case LUPE_SYMSRC_NONE: return "none";
	case LUPE_SYMSRC_SYMTAB: return "symtab";
	case LUPE_SYMSRC_BUILD_ID: return "build-id";
	case LUPE_SYMSRC_DEBUGLINK: return "debuglink";
	case LUPE_SYMSRC_DYNSYM: return "dynsym";
	}
	return "?";
}

/* Which of two names at one address to show: fewer leading underscores, then shorter,
 * then byte order (so the choice does not depend on the order in the file). */
static int name_rank_cmp(const char *a, const char *b)
{
	size_t ua = strspn(a, "_"), ub = strspn(b, "_");
	size_t la, lb;

	if (ua != ub)
		return ua < ub ? -1 : 1;
	la = strlen(a);
	lb = strlen(b);
	if (la != lb)
		return la < lb ? -1 : 1;
	return strcmp(a, b);
}

/* Strings added after load (demangled names) live in a list of blocks, freed together. */
struct arena_block {
	struct arena_block *next;
	size_t used, cap;
	char data[];
};

static const char *arena_strdup(struct arena_block **head, const char *s, uint64_t *mem)
{
	size_t len = strlen(s) + 1;
	struct arena_block *b = *head;
	char *p;

	if (!b || b->cap - b->used < len) {
		size_t cap = len > ARENA_BLOCK ? len : ARENA_BLOCK;

		b = malloc(sizeof(*b) + cap);
		if (!b)
			return NULL;
		b->next = *head;
		b->used = 0;
		b->cap = cap;
		*head = b;
		*mem += sizeof(*b) + cap;
	}
	p = b->data + b->used;
	memcpy(p, s, len);
	b->used += len;
	return p;
}

static void arena_free(struct arena_block *b)
{
	while (b) {
		struct arena_block *next = b->next;

		free(b);
		b = next;
	}
}

/* CRC-32 (IEEE, reflected), the checksum .gnu_debuglink records. */
static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

/* CRC of a whole open file. Returns 0 or -errno. */
static int file_crc32(int fd, uint32_t *out)
{
	unsigned char *buf;
	uint32_t c = 0xffffffffu;
	off_t off = 0;
	int err = 0;

	pthread_once(&crc_once, crc_init);
	buf = malloc(1 << 16);
	if (!buf)
		return -ENOMEM;
	for (;;) {
		ssize_t n = pread(fd, buf, 1 << 16, off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			goto out;
		}
		if (n == 0)
			break;
		for (ssize_t i = 0; i < n; i++)
			c = crc_table[(c ^ buf[i]) & 0xff] ^ (c >> 8);
		off += n;
	}
	*out = c ^ 0xffffffffu;
out:
	free(buf);
	return err;
}

/* Opens a file to read without blocking on FIFOs and devices; only regular files pass. */
static int open_regular(const char *path, struct stat *st)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	int err;

	if (fd < 0)
		return -errno;
	if (fstat(fd, st) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	if (!S_ISREG(st->st_mode)) {
		close(fd);
		return S_ISDIR(st->st_mode) ? -EISDIR : -EINVAL;
	}
	return fd;
}

/* ---- ELF files ---------------------------------------------------------------------- */

static pthread_once_t elf_once = PTHREAD_ONCE_INIT;
static bool elf_ok;

static void elf_init(void)
{
	elf_ok = elf_version(EV_CURRENT) != EV_NONE;
}

/* One opened ELF file and what the symbolizer needs from its section headers. */
struct elf_file {
	const char *path;  /* for messages; may be NULL */
	int fd;
	bool own_fd;
	struct stat st;
	Elf *elf;
	GElf_Ehdr ehdr;
	Elf_Scn *symtab, *dynsym;
	uint8_t build_id[BUILD_ID_MAX];
	size_t build_id_len;
	char debuglink[256]; /* "" when none */
	uint32_t debuglink_crc;
};

static void elf_file_close(struct elf_file *f)
{
	if (f->elf)
		elf_end(f->elf);
	if (f->own_fd && f->fd >= 0)
		close(f->fd);
	f->elf = NULL;
	f->fd = -1;
}

static void read_build_id(struct elf_file *f, Elf_Scn *scn)
{
	Elf_Data *d = elf_getdata(scn, NULL);
	size_t off = 0, next, name_off, desc_off;
	GElf_Nhdr nh;

	if (!d)
		return;
	while (off < d->d_size && (next = gelf_getnote(d, off, &nh, &name_off, &desc_off)) > 0) {
		if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 &&
		    memcmp((char *)d->d_buf + name_off, "GNU", 4) == 0 &&
		    nh.n_descsz > 0 && nh.n_descsz <= BUILD_ID_MAX) {
			memcpy(f->build_id, (char *)d->d_buf + desc_off, nh.n_descsz);
			f->build_id_len = nh.n_descsz;
			return;
		}
		off = next;
	}
}

static void read_debuglink(struct elf_file *f, Elf_Scn *scn)
{
	Elf_Data *d = elf_getdata(scn, NULL);
	const unsigned char *p, *crc;
	size_t len, crc_off;

	if (!d || !d->d_buf)
		return;
	p = d->d_buf;
	len = strnlen((const char *)p, d->d_size);
	crc_off = (len + 1 + 3) & ~(size_t)3;
	/* A basename only: a '/' would let the file point us anywhere. */
	if (len == 0 || len >= sizeof(f->debuglink) || crc_off + 4 > d->d_size ||
	    memchr(p, '/', len))
		return;
	memcpy(f->debuglink, p, len);
	f->debuglink[len] = '\0';
	crc = p + crc_off;
	if (f->ehdr.e_ident[EI_DATA] == ELFDATA2MSB)
		f->debuglink_crc = (uint32_t)crc[0] << 24 | (uint32_t)crc[1] << 16 |
				   (uint32_t)crc[2] << 8 | crc[3];
	else
		f->debuglink_crc = (uint32_t)crc[3] << 24 | (uint32_t)crc[2] << 16 |
				   (uint32_t)crc[1] << 8 | crc[0];
}

/* Opens (fd < 0) or borrows fd, checks the headers, and finds the symbol tables, the build
 * ID and the debuglink. Returns 0 or -errno; f is closable either way. */
static int elf_file_open(struct elf_file *f, const char *path, int fd)
{
	size_t shstrndx, shnum;
	Elf_Scn *scn = NULL;

	memset(f, 0, sizeof(*f));
	f->path = path;
	f->fd = -1;
	pthread_once(&elf_once, elf_init);
	if (!elf_ok)
		return -ENOSYS;
	if (fd >= 0) {
		f->fd = fd;
		if (fstat(fd, &f->st) < 0)
			return -errno;
		if (!S_ISREG(f->st.st_mode))
			return S_ISDIR(f->st.st_mode) ? -EISDIR : -EINVAL;
	} else {
		if (!path)
			return -EINVAL;
		f->fd = open_regular(path, &f->st);
		if (f->fd < 0)
			return f->fd;
		f->own_fd = true;
	}
	/* ELF_C_READ, not READ_MMAP: libelf preads only the sections we ask for, and a file
	 * truncated under us gives a read error instead of SIGBUS. */
	f->elf = elf_begin(f->fd, ELF_C_READ, NULL);
	if (!f->elf)
		return -EINVAL;
	if (elf_kind(f->elf) != ELF_K_ELF)
		return -ENOEXEC;
	if (!gelf_getehdr(f->elf, &f->ehdr))
		return -EINVAL;
	if (f->ehdr.e_type != ET_EXEC && f->ehdr.e_type != ET_DYN)
		return -ENOEXEC;
	/* libelf quietly counts no sections when their headers lie past the end of the
	 * file; a file cut short is malformed, not a file without sections. (e_shnum 0 with
	 * an e_shoff: the count is in the first header, which must be there then.) */
	if (f->ehdr.e_shoff &&
	    (f->ehdr.e_shoff > (uint64_t)f->st.st_size ||
	     (uint64_t)f->st.st_size - f->ehdr.e_shoff <
		     (uint64_t)(f->ehdr.e_shnum ? f->ehdr.e_shnum : 1) * f->ehdr.e_shentsize))
		return -EINVAL;
	if (f->ehdr.e_shoff &&
	    f->ehdr.e_shentsize != gelf_fsize(f->elf, ELF_T_SHDR, 1, EV_CURRENT))
		return -EINVAL;
	if (elf_getshdrnum(f->elf, &shnum) < 0)
		return -EINVAL;
	if (f->ehdr.e_shoff && shnum == 0)
		return -EINVAL;
	if (shnum == 0)
		return 0;
	if (elf_getshdrstrndx(f->elf, &shstrndx) < 0)
		return -EINVAL;
	while ((scn = elf_nextscn(f->elf, scn))) {
		GElf_Shdr sh;
		const char *name;

		if (!gelf_getshdr(scn, &sh))
			return -EINVAL;
		if (sh.sh_type == SHT_SYMTAB && !f->symtab)
			f->symtab = scn;
		else if (sh.sh_type == SHT_DYNSYM && !f->dynsym)
			f->dynsym = scn;
		else if (sh.sh_type == SHT_NOTE && !f->build_id_len)
			read_build_id(f, scn);
		else if (sh.sh_type == SHT_PROGBITS && !f->debuglink[0]) {
			name = elf_strptr(f->elf, shstrndx, sh.sh_name);
			if (name && strcmp(name, ".gnu_debuglink") == 0)
				read_debuglink(f, scn);
		}
	}
	return 0;
}

/* ---- symbol tables ------------------------------------------------------------------ */

struct sym {
	uint64_t addr, end;          /* [addr, end) */
	const char *name;            /* as in the file, in st->names */
	_Atomic(const char *) shown; /* what lookups return; NULL until demangled */
};

struct lupe_symtab {
	struct sym *syms;
	size_t nsyms;
	char *names;                    /* one allocation for every raw name */
	struct arena_block *demangled;  /* demangled names, under lock */
	pthread_mutex_t lock;
	enum lupe_demangle_mode demangle;
	enum lupe_symtab_source source;
	char *debug_path;
	uint64_t aliases, bad_symbols, debug_rejected, mem_bytes;
	_Atomic uint64_t lookups, misses, demangled_count;
};

/* A symbol while loading: the name still points into libelf's string table. */
struct rawsym {
	uint64_t addr, size;
	const char *name;
	size_t name_len;
	uint32_t shndx;
	uint8_t bind_rank; /* 0 global, 1 weak, 2 local and others */
};

static int rawsym_cmp(const void *pa, const void *pb)
{
	const struct rawsym *a = pa, *b = pb;

	if (a->addr != b->addr)
		return a->addr < b->addr ? -1 : 1;
	/* Best first: sized, then by binding, then by name. */
	if ((a->size > 0) != (b->size > 0))
		return a->size > 0 ? -1 : 1;
	if (a->bind_rank != b->bind_rank)
		return a->bind_rank < b->bind_rank ? -1 : 1;
	return name_rank_cmp(a->name, b->name);
}

static bool wants_demangling(const char *name)
{
	return name[0] == '_' && (name[1] == 'Z' || name[1] == 'R');
}

/* Slow path of sym_name: demangle outside the lock, publish under it. */
static const char *sym_demangle(struct lupe_symtab *st, struct sym *s)
{
	char *d = lupe_demangle(s->name);
	const char *shown;

	pthread_mutex_lock(&st->lock);
	shown = atomic_load_explicit(&s->shown, memory_order_acquire);
	if (!shown) {
		shown = d ? arena_strdup(&st->demangled, d, &st->mem_bytes) : NULL;
		if (shown)
			atomic_fetch_add_explicit(&st->demangled_count, 1, memory_order_relaxed);
		else
			shown = s->name; /* not demangleable, or out of memory: the raw name */
		atomic_store_explicit(&s->shown, shown, memory_order_release);
	}
	pthread_mutex_unlock(&st->lock);
	free(d);
	return shown;
}

static const char *sym_name(struct lupe_symtab *st, struct sym *s)
{
	const char *shown = atomic_load_explicit(&s->shown, memory_order_acquire);

	return shown ? shown : sym_demangle(st, s);
}

/* The end of the section holding a symbol without a size, or UINT64_MAX if unknown. */
static uint64_t section_end(Elf *e, uint32_t shndx, uint64_t addr)
{
	Elf_Scn *scn;
	GElf_Shdr sh;

	if (shndx == SHN_UNDEF || shndx >= SHN_LORESERVE)
		return UINT64_MAX;
	scn = elf_getscn(e, shndx);
	if (!scn || !gelf_getshdr(scn, &sh) || !(sh.sh_flags & SHF_ALLOC))
		return UINT64_MAX;
	if (addr < sh.sh_addr || addr - sh.sh_addr >= sh.sh_size)
		return UINT64_MAX;
	return sh.sh_addr + sh.sh_size;
}

/* Reads the function symbols of one symbol table section into st (which must be empty).
 * Returns 0 (st->nsyms may be 0) or -errno (st untouched). */
static int load_table(struct lupe_symtab *st, struct elf_file *f, Elf_Scn *scn)
{
	struct rawsym *raw = NULL;
	struct sym *syms = NULL;
	char *names = NULL;
	Elf_Data *data, *strdata;
	Elf_Scn *strscn;
	GElf_Shdr sh, strsh;
	size_t entsize, n, nraw = 0, nsyms = 0, names_len = 0, bad = 0, aliases = 0;
	int err = 0;

	if (!gelf_getshdr(scn, &sh)) {
		err = -EINVAL;
		goto out;
	}
	strscn = elf_getscn(f->elf, sh.sh_link);
	if (!strscn || !gelf_getshdr(strscn, &strsh) || strsh.sh_type != SHT_STRTAB) {
		pr_debug("'%s': symbol table linked to section %u, not a string table",
			 f->path ? f->path : "(fd)", (unsigned)sh.sh_link);
		err = -EINVAL;
		goto out;
	}
	data = elf_getdata(scn, NULL);
	strdata = elf_getdata(strscn, NULL);
	entsize = gelf_fsize(f->elf, ELF_T_SYM, 1, EV_CURRENT);
	if (!data || !strdata || !entsize || (!strdata->d_buf && strdata->d_size)) {
		pr_debug("'%s': cannot read symbol table: %s", f->path ? f->path : "(fd)",
			 elf_errmsg(-1));
		err = -EINVAL;
		goto out;
	}
	n = data->d_size / entsize;
	if (n > INT_MAX) /* gelf_getsym takes an int */
		n = INT_MAX;
	raw = malloc((n ? n : 1) * sizeof(*raw));
	if (!raw) {
		err = -ENOMEM;
		goto out;
	}
	for (size_t i = 1; i < n; i++) {
		const char *strs = strdata->d_buf, *nul;
		struct rawsym *r;
		GElf_Sym s;
		int type, bind;

		if (!gelf_getsym(data, (int)i, &s))
			break;
		type = GELF_ST_TYPE(s.st_info);
		if ((type != STT_FUNC && type != STT_GNU_IFUNC) || s.st_shndx == SHN_UNDEF)
			continue;
		if (s.st_name >= strdata->d_size ||
		    !(nul = memchr(strs + s.st_name, '\0', strdata->d_size - s.st_name)) ||
		    nul == strs + s.st_name || s.st_value + s.st_size < s.st_value) {
			bad++;
			continue;
		}
		bind = GELF_ST_BIND(s.st_info);
		r = &raw[nraw++];
		r->addr = s.st_value;
		r->size = s.st_size;
		r->name = strs + s.st_name;
		r->name_len = (size_t)(nul - r->name);
		r->shndx = s.st_shndx;
		r->bind_rank = bind == STB_GLOBAL ? 0 : bind == STB_WEAK ? 1 : 2;
	}
	if (bad)
		pr_debug("'%s': dropped %zu symbols with bad names or sizes",
			 f->path ? f->path : "(fd)", bad);
	qsort(raw, nraw, sizeof(*raw), rawsym_cmp);
	/* Merge aliases: the first of each address is the best. */
	for (size_t i = 0; i < nraw; i++) {
		if (nsyms && raw[nsyms - 1].addr == raw[i].addr) {
			aliases++;
			continue;
		}
		raw[nsyms++] = raw[i];
		names_len += raw[i].name_len + 1;
	}
	syms = malloc((nsyms ? nsyms : 1) * sizeof(*syms));
	names = malloc(names_len ? names_len : 1);
	if (!syms || !names) {
		err = -ENOMEM;
		goto out;
	}
	names_len = 0;
	for (size_t i = 0; i < nsyms; i++) {
		struct rawsym *r = &raw[i];
		struct sym *s = &syms[i];
		uint64_t next = i + 1 < nsyms ? raw[i + 1].addr : UINT64_MAX;

		s->addr = r->addr;
		if (r->size) {
			s->end = r->addr + r->size;
		} else {
			uint64_t sec_end = section_end(f->elf, r->shndx, r->addr);

			s->end = next < sec_end ? next : sec_end;
		}
		s->name = names + names_len;
		memcpy(names + names_len, r->name, r->name_len + 1);
		names_len += r->name_len + 1;
		atomic_init(&s->shown, (st->demangle == LUPE_DEMANGLE_NONE ||
					!wants_demangling(s->name)) ? s->name : NULL);
	}
	st->syms = syms;
	st->nsyms = nsyms;
	st->names = names;
	st->aliases = aliases;
	st->bad_symbols = bad;
	st->mem_bytes = nsyms * sizeof(*syms) + names_len;
	syms = NULL;
	names = NULL;
out:
	free(raw);
	free(syms);
	free(names);
	return err;
}

static void symtab_reset(struct lupe_symtab *st)
{
	free(st->syms);
	free(st->names);
	st->syms = NULL;
	st->names = NULL;
	st->nsyms = 0;
	st->aliases = st->bad_symbols = st->mem_bytes = 0;
}

/* Tries one separate debug file. Returns 0 if st now holds its symbols, else -errno
 * (-ENOENT: no such file; -EBADMSG: wrong CRC or build ID, counted). */
static int try_debug_file(struct lupe_symtab *st, const struct elf_file *orig,
			  const char *path, bool check_crc)
{
	struct elf_file dbg;
	struct stat sb;
	uint32_t crc = 0;
	int fd, err;

	fd = open_regular(path, &sb);
	if (fd < 0)
		return fd;
	/* A debuglink naming the file itself (same name beside it) is no debug file. */
	if (sb.st_dev == orig->st.st_dev && sb.st_ino == orig->st.st_ino) {
		close(fd);
		return -ENOENT;
	}
	if (check_crc) {
		err = file_crc32(fd, &crc);
		if (err) {
			close(fd);
			return err;
		}
		if (crc != orig->debuglink_crc) {
			pr_debug("'%s': debuglink CRC %08x, expected %08x: ignored", path, crc,
				 orig->debuglink_crc);
			st->debug_rejected++;
			close(fd);
			return -EBADMSG;
		}
	}
	err = elf_file_open(&dbg, path, fd);
	dbg.own_fd = true; /* ours to close from here on */
	if (err)
		goto out;
	if (orig->build_id_len && dbg.build_id_len &&
	    (orig->build_id_len != dbg.build_id_len ||
	     memcmp(orig->build_id, dbg.build_id, dbg.build_id_len) != 0)) {
		pr_debug("'%s': build ID differs from the file's: ignored", path);
		st->debug_rejected++;
		err = -EBADMSG;
		goto out;
	}
	if (!dbg.symtab) {
		err = -ENOENT;
		goto out;
	}
	err = load_table(st, &dbg, dbg.symtab);
	if (!err && st->nsyms == 0) {
		symtab_reset(st);
		err = -ENOENT;
	}
	if (!err) {
		st->debug_path = strdup(path);
		if (!st->debug_path) {
			symtab_reset(st);
			err = -ENOMEM;
		}
	}
out:
	elf_file_close(&dbg);
	return err;
}

/* Looks for a debug file by build ID, then by debuglink. Returns 0 with st filled, or
 * -ENOENT (none usable), -ENOMEM. */
static int find_debug_file(struct lupe_symtab *st, const struct elf_file *f, const char *root)
{
	char buf[PATH_MAX], dir[PATH_MAX];
	const char *slash;
	int err, n;

	if (f->build_id_len >= 2) {
		char hex[2 * BUILD_ID_MAX + 1];

		for (size_t i = 0; i < f->build_id_len; i++)
			snprintf(hex + 2 * i, 3, "%02x", f->build_id[i]);
		n = snprintf(buf, sizeof(buf), "%s/.build-id/%.2s/%s.debug", root, hex, hex + 2);
		if (n > 0 && (size_t)n < sizeof(buf)) {
			err = try_debug_file(st, f, buf, false);
			if (err == 0 || err == -ENOMEM) {
				if (!err)
					st->source = LUPE_SYMSRC_BUILD_ID;
				return err;
			}
		}
	}
	if (!f->debuglink[0] || !f->path)
		return -ENOENT;
	slash = strrchr(f->path, '/');
	if (slash) {
		size_t len = (size_t)(slash - f->path);

		if (len >= sizeof(dir))
			return -ENOENT;
		memcpy(dir, f->path, len);
		dir[len] = '\0';
	} else {
		strcpy(dir, ".");
	}
	for (int i = 0; i < 3; i++) {
		if (i == 0)
			n = snprintf(buf, sizeof(buf), "%s/%s", dir, f->debuglink);
		else if (i == 1)
			n = snprintf(buf, sizeof(buf), "%s/.debug/%s", dir, f->debuglink);
		else if (dir[0] == '/')
			n = snprintf(buf, sizeof(buf), "%s%s/%s", root, dir, f->debuglink);
		else
			continue; /* a relative dir has no place under the debug root */
		if (n < 0 || (size_t)n >= sizeof(buf))
			continue;
		err = try_debug_file(st, f, buf, true);
		if (err == 0 || err == -ENOMEM) {
			if (!err)
				st->source = LUPE_SYMSRC_DEBUGLINK;
			return err;
		}
	}
	return -ENOENT;
}

struct lupe_symtab *lupe_symtab__load(const char *path, int fd,
				      const struct lupe_symtab_opts *opts)
{
	const char *root = OPTS_GET(opts, debug_root, NULL);
	struct lupe_symtab *st = NULL;
	struct elf_file f;
	int err;

	err = elf_file_open(&f, path, fd);
	if (err) {
		pr_debug("'%s': not loaded: %s", path ? path : "(fd)", lupe_errstr(err));
		goto err_out;
	}
	st = calloc(1, sizeof(*st));
	if (!st) {
		err = -ENOMEM;
		goto err_out;
	}
	pthread_mutex_init(&st->lock, NULL);
	st->demangle = OPTS_GET(opts, demangle, LUPE_DEMANGLE_LAZY);
	if (f.symtab) {
		err = load_table(st, &f, f.symtab);
		if (err)
			goto err_out;
		if (st->nsyms)
			st->source = LUPE_SYMSRC_SYMTAB;
		else
			symtab_reset(st); /* a .symtab without functions: look further */
	}
	if (!st->source && !OPTS_GET(opts, no_debug_files, 0)) {
		err = find_debug_file(st, &f, root ? root : DEFAULT_DEBUG_ROOT);
		if (err == -ENOMEM)
			goto err_out;
	}
	if (!st->source && f.dynsym) {
		err = load_table(st, &f, f.dynsym);
		if (err)
			goto err_out;
		if (st->nsyms)
			st->source = LUPE_SYMSRC_DYNSYM;
	}
	if (st->demangle == LUPE_DEMANGLE_EAGER) {
		for (size_t i = 0; i < st->nsyms; i++)
			sym_name(st, &st->syms[i]);
	}
	elf_file_close(&f);
	return st;

err_out:
	elf_file_close(&f);
	lupe_symtab__free(st);
	errno = -err;
	return NULL;
}

void lupe_symtab__free(struct lupe_symtab *st)
{
	if (!st)
		return;
	free(st->syms);
	free(st->names);
	arena_free(st->demangled);
	free(st->debug_path);
	pthread_mutex_destroy(&st->lock);
	free(st);
}

const char *lupe_symtab__lookup(struct lupe_symtab *st, uint64_t vaddr, uint64_t *offset)
{
	size_t lo = 0, hi = st->nsyms;
	struct sym *s;

	atomic_fetch_add_explicit(&st->lookups, 1, memory_order_relaxed);
	/* The last symbol starting at or before vaddr. */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (st->syms[mid].addr <= vaddr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0 || vaddr >= st->syms[lo - 1].end) {
		atomic_fetch_add_explicit(&st->misses, 1, memory_order_relaxed);
		return NULL;
	}
	s = &st->syms[lo - 1];
	if (offset)
		*offset = vaddr - s->addr;
	return sym_name(st, s);
}

size_t lupe_symtab__count(const struct lupe_symtab *st)
{
	return st->nsyms;
}

enum lupe_symtab_source lupe_symtab__source(const struct lupe_symtab *st)
{
	return st->source;
}

const char *lupe_symtab__debug_path(const struct lupe_symtab *st)
{
	return st->debug_path;
}

void lupe_symtab__stats(const struct lupe_symtab *st, struct lupe_symtab_stats *out)
{
	struct lupe_symtab *m = (struct lupe_symtab *)st; /* the lock is not part of the value */

	memset(out, 0, sizeof(*out));
	out->symbols = st->nsyms;
	out->aliases = st->aliases;
	out->bad_symbols = st->bad_symbols;
	out->debug_rejected = st->debug_rejected;
	out->lookups = atomic_load_explicit(&st->lookups, memory_order_relaxed);
	out->misses = atomic_load_explicit(&st->misses, memory_order_relaxed);
	out->demangled = atomic_load_explicit(&st->demangled_count, memory_order_relaxed);
	pthread_mutex_lock(&m->lock);
	out->mem_bytes = st->mem_bytes;
	pthread_mutex_unlock(&m->lock);
}

/* ---- kallsyms ----------------------------------------------------------------------- */

#define KSYM_MARKER UINT32_MAX

struct ksym {
	uint64_t addr;
	uint32_t name; /* offset in ks->strs; KSYM_MARKER: a non-text symbol (a boundary) */
	uint32_t mod;  /* offset + 1 of the module name in ks->strs; 0: the kernel image */
};

struct lupe_ksyms {
	struct ksym *syms;
	size_t nsyms;  /* entries, markers included */
	size_t ntext;  /* entries that are text symbols */
	char *strs; /* the file's own buffer, names compacted to its front */
	uint64_t aliases, skipped, malformed, mem_bytes;
	_Atomic uint64_t lookups, misses;
};

static int ksym_type_rank(char t)
{
	switch (t) {
	case 'T': return 0;
	case 'W': return 1;
	case 't': return 2;
	case 'w': return 3;
	default: return -1;
	}
}

struct ksym_tmp {
	struct ksym k;
	int rank; /* ksym_type_rank; 4 for markers */
};

/* ctx: the buffer the name offsets point into. */
static int ksym_tmp_cmp(const void *pa, const void *pb, void *ctx)
{
	const struct ksym_tmp *a = pa, *b = pb;
	const char *strs = ctx;

	if (a->k.addr != b->k.addr)
		return a->k.addr < b->k.addr ? -1 : 1;
	if (a->rank != b->rank)
		return a->rank < b->rank ? -1 : 1;
	if (a->rank == 4)
		return 0;
	return name_rank_cmp(strs + a->k.name, strs + b->k.name);
}

/* Reads a whole file (proc files report size 0) into a NUL-terminated buffer. */
static int read_all(const char *path, char **out, size_t *len_out)
{
	size_t cap = 1 << 20, len = 0;
	struct stat sb;
	char *buf = NULL, *nbuf;
	int fd, err = 0;

	fd = open_regular(path, &sb);
	if (fd < 0)
		return fd;
	buf = malloc(cap);
	if (!buf) {
		err = -ENOMEM;
		goto out;
	}
	for (;;) {
		ssize_t n;

		if (cap - len < 2) {
			if (cap >= UINT32_MAX) {
				err = -EFBIG;
				goto out;
			}
			nbuf = realloc(buf, cap * 2);
			if (!nbuf) {
				err = -ENOMEM;
				goto out;
			}
			buf = nbuf;
			cap *= 2;
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	*out = buf;
	*len_out = len;
	buf = NULL;
out:
	free(buf);
	close(fd);
	return err;
}

struct lupe_ksyms *lupe_ksyms__load(const char *path)
{
	struct lupe_ksyms *ks = NULL;
	struct ksym_tmp *tmp = NULL, *ntmp;
	size_t len = 0, r = 0, w = 0, ntmp_used = 0, tmp_cap = 0, nsyms = 0;
	size_t last_mod_len = 0;
	uint32_t last_mod = 0;
	bool any_nonzero = false;
	char *buf = NULL, *nbuf;
	int err;

	if (!path)
		path = "/proc/kallsyms";
	ks = calloc(1, sizeof(*ks));
	if (!ks) {
		err = -ENOMEM;
		goto err_out;
	}
	err = read_all(path, &buf, &len);
	if (err) {
		pr_debug("'%s': cannot read: %s", path, lupe_errstr(err));
		goto err_out;
	}
	/* Each line: "<hex addr> <type> <name>[\t[<module>]]". Names and modules are copied
	 * toward the front of buf: what is written never passes what was read. */
	while (r < len) {
		size_t eol = r, p, name_at, name_len, mod_at = 0, mod_len = 0;
		uint64_t addr = 0;
		int digits = 0, rank;
		char type;

		while (eol < len && buf[eol] != '\n')
			eol++;
		p = r;
		for (int v; p < eol && (v = lupe_hex_digit(buf[p])) >= 0; p++, digits++)
			addr = addr << 4 | (uint64_t)v;
		if (digits == 0 || digits > 16 || p >= eol || buf[p] != ' ')
			goto malformed;
		p++;
		if (p + 1 >= eol || buf[p + 1] != ' ' || !((buf[p] >= 'a' && buf[p] <= 'z') ||
							 (buf[p] >= 'A' && buf[p] <= 'Z') ||
							 buf[p] == '?'))
			goto malformed;
		type = buf[p];
		p += 2;
		name_at = p;
		while (p < eol && buf[p] != '\t' && buf[p] != ' ')
			p++;
		name_len = p - name_at;
		if (name_len == 0)
			goto malformed;
		while (p < eol && (buf[p] == '\t' || buf[p] == ' '))
			p++;
		if (p < eol) {
			size_t end = eol;

			while (end > p && (buf[end - 1] == ' ' || buf[end - 1] == '\t' ||
					   buf[end - 1] == '\r'))
				end--;
			if (buf[p] != '[' || end - p < 3 || buf[end - 1] != ']')
				goto malformed;
			mod_at = p + 1;
			mod_len = end - 1 - mod_at;
		}
		if (addr)
			any_nonzero = true;
		if (ntmp_used == tmp_cap) {
			size_t ncap = tmp_cap ? tmp_cap * 2 : 4096;

			ntmp = realloc(tmp, ncap * sizeof(*tmp));
			if (!ntmp) {
				err = -ENOMEM;
				goto err_out;
			}
			tmp = ntmp;
			tmp_cap = ncap;
		}
		rank = ksym_type_rank(type);
		tmp[ntmp_used].k.addr = addr;
		if (rank < 0) {
			/* Not text: kept only as a boundary for the text symbol before it. */
			ks->skipped++;
			tmp[ntmp_used].k.name = KSYM_MARKER;
			tmp[ntmp_used].k.mod = 0;
			tmp[ntmp_used].rank = 4;
			ntmp_used++;
			r = eol + 1;
			continue;
		}
		tmp[ntmp_used].rank = rank;
		tmp[ntmp_used].k.name = (uint32_t)w;
		memmove(buf + w, buf + name_at, name_len);
		w += name_len;
		buf[w++] = '\0';
		if (!mod_len) {
			tmp[ntmp_used].k.mod = 0;
		} else if (last_mod && last_mod_len == mod_len &&
			   memcmp(buf + last_mod - 1, buf + mod_at, mod_len) == 0) {
			/* Modules come in runs: share the previous copy. */
			tmp[ntmp_used].k.mod = last_mod;
		} else {
			last_mod = (uint32_t)w + 1;
			last_mod_len = mod_len;
			memmove(buf + w, buf + mod_at, mod_len);
			w += mod_len;
			buf[w++] = '\0';
			tmp[ntmp_used].k.mod = last_mod;
		}
		ntmp_used++;
		r = eol + 1;
		continue;
malformed:
		if (eol > r) /* blank lines are not worth counting */
			ks->malformed++;
		r = eol + 1;
	}
	if (ntmp_used == ks->skipped) {
		err = -ENODATA;
		goto err_out;
	}
	if (!any_nonzero) {
		pr_debug("'%s': every address is 0 (kptr_restrict)", path);
		err = -EPERM;
		goto err_out;
	}
	qsort_r(tmp, ntmp_used, sizeof(*tmp), ksym_tmp_cmp, buf);
	/* Merge symbols at one address (the best sorts first), and markers that follow a
	 * marker: they bound nothing new. */
	for (size_t i = 0; i < ntmp_used; i++) {
		bool marker = tmp[i].rank == 4;

		if (nsyms && tmp[nsyms - 1].k.addr == tmp[i].k.addr) {
			if (!marker)
				ks->aliases++;
			continue;
		}
		if (marker && nsyms && tmp[nsyms - 1].rank == 4)
			continue;
		tmp[nsyms++] = tmp[i];
	}
	ks->syms = malloc(nsyms * sizeof(*ks->syms));
	if (!ks->syms) {
		err = -ENOMEM;
		goto err_out;
	}
	for (size_t i = 0; i < nsyms; i++) {
		ks->syms[i] = tmp[i].k;
		ks->ntext += tmp[i].rank != 4;
	}
	ks->nsyms = nsyms;
	nbuf = realloc(buf, w ? w : 1);
	ks->strs = nbuf ? nbuf : buf;
	buf = NULL;
	ks->mem_bytes = nsyms * sizeof(*ks->syms) + w;
	free(tmp);
	return ks;

err_out:
	free(tmp);
	free(buf);
	lupe_ksyms__free(ks);
	errno = -err;
	return NULL;
}

void lupe_ksyms__free(struct lupe_ksyms *ks)
{
	if (!ks)
		return;
	free(ks->syms);
	free(ks->strs);
	free(ks);
}

const char *lupe_ksyms__lookup(struct lupe_ksyms *ks, uint64_t addr, uint64_t *offset,
			       const char **module)
{
	size_t lo = 0, hi = ks->nsyms;
	const struct ksym *k;

	atomic_fetch_add_explicit(&ks->lookups, 1, memory_order_relaxed);
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (ks->syms[mid].addr <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0 || ks->syms[lo - 1].name == KSYM_MARKER) {
		atomic_fetch_add_explicit(&ks->misses, 1, memory_order_relaxed);
		return NULL;
	}
	k = &ks->syms[lo - 1];
	if (offset)
		*offset = addr - k->addr;
	if (module)
		*module = k->mod ? ks->strs + k->mod - 1 : NULL;
	return ks->strs + k->name;
}

size_t lupe_ksyms__count(const struct lupe_ksyms *ks)
{
	return ks->ntext;
}

void lupe_ksyms__stats(const struct lupe_ksyms *ks, struct lupe_ksyms_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->symbols = lupe_ksyms__count(ks);
	out->aliases = ks->aliases;
	out->skipped = ks->skipped;
	out->malformed = ks->malformed;
	out->lookups = atomic_load_explicit(&ks->lookups, memory_order_relaxed);
	out->misses = atomic_load_explicit(&ks->misses, memory_order_relaxed);
	out->mem_bytes = ks->mem_bytes;
}
